"""Emitting analytics events: after a state change commits, name what changed; never fail the caller.

Every write that changes what an aggregate counts calls ``emit`` (or ``aemit`` on the consumer's event loop)
once, after its commit, with the ids it changed (common/analytics/types.py ``Event``). An event carries ids
and a type only: never a number, a text or an amount.

Best effort, in this order:

1. ``XADD`` on the analytics stream (common/analytics/stream.py), one pipeline for the call's events, through
   the caller's Redis client (short timeouts; ``RedisGate``'s breaker fails at once while Redis is down).
2. Redis off (``ENABLE_QUEUES=false``), down or failing: one PostgreSQL statement marks the events' buckets in
   ``analytics_dirty``, which the processor drains as it drains the stream. This is the lead's design
   improved: dropping the event would leave the aggregate stale until a sweep, and a Redis that was only
   unreachable (not restarted) never triggers one; the statement costs nothing while Redis is up.
3. That failing too (PostgreSQL away as well): the event is dropped and logged; ``koinonia analytics
   rebuild`` repairs the bucket. The caller's own write committed before the event was made, so nothing of
   the truth is lost, and the caller never sees an error from here.

The one loss none of this sees: a process killed between its commit and its ``XADD`` (the consumer emits
in the background, so that its outcome writes never wait on Redis). The bucket is right again at its next
recompute: any later event of that church-day (a receipt, the next outcome), the sweep after a Redis loss,
or a rebuild.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis
import redis.asyncio

from common.analytics import aggregates, stream
from common.analytics.types import Event, EventType, Targets
from common.db.pool import Pool
from common.redis_client import RedisGate, RedisUnavailable

if TYPE_CHECKING:
    from common.messages.store import Claim
    from common.runtime import Runtime

logger = logging.getLogger("koinonia.analytics")

_REDIS_ERRORS: tuple[type[Exception], ...] = (RedisUnavailable, redis.RedisError, OSError)


def emit(rt: Runtime, events: Iterable[Event]) -> bool:
    """Put ``events`` on the analytics stream; ``False`` if they went to ``analytics_dirty`` (or nowhere) instead.

    Never raises: the caller's change is committed, and analytics must not undo or fail it.
    """
    return emit_to(rt.pool, rt.redis if rt.settings.enable_queues else None, events)


def emit_to(pool: Pool, gate: RedisGate | None, events: Iterable[Event]) -> bool:
    """``emit`` for a caller holding a pool and a gate rather than a runtime (``gate`` None: queues off)."""
    batch = [e for e in events if e.ids]
    if not batch:
        return True
    if gate is not None:
        try:
            gate.call(lambda client: stream.add(client, gate.prefix, batch))
            return True
        except _REDIS_ERRORS as exc:
            logger.warning("analytics events not on Redis; marked in PostgreSQL", extra={"fields": _why(exc, batch)})
        except Exception as exc:  # a bug here must not fail a send: log it loudly, fall back
            logger.exception("analytics emit failed", extra={"fields": _why(exc, batch)})
    mark_in_postgres(pool, batch)
    return False


async def aemit(client: redis.asyncio.Redis | None, prefix: str, pool: Pool, events: Iterable[Event]) -> bool:
    """``emit`` for an event loop (the consumer): its own async client (``None``: queues off), the fallback
    statement in a thread."""
    batch = [e for e in events if e.ids]
    if not batch:
        return True
    if client is not None:
        try:
            await stream.aadd(client, prefix, batch)
            return True
        except _REDIS_ERRORS as exc:
            logger.warning("analytics events not on Redis; marked in PostgreSQL", extra={"fields": _why(exc, batch)})
        except Exception as exc:
            logger.exception("analytics emit failed", extra={"fields": _why(exc, batch)})
    await asyncio.to_thread(mark_in_postgres, pool, batch)
    return False


def mark_in_postgres(pool: Pool, events: list[Event]) -> None:
    """The fallback: the events' buckets into ``analytics_dirty`` (one statement); never raises."""
    now = datetime.now(UTC)
    try:
        aggregates.mark_resolved(pool, Targets.of([(e, now) for e in events]))
    except Exception as exc:  # PostgreSQL away too: the change itself is committed; a rebuild repairs the bucket
        logger.error("analytics events dropped (Redis and PostgreSQL both failed)", extra={"fields": _why(exc, events)})


def _why(exc: Exception, events: list[Event]) -> dict[str, object]:
    return {"error": type(exc).__name__, "events": len(events), "ids": sum(len(e.ids) for e in events)}


def status_events(statuses: Mapping[str, str]) -> list[Event]:
    """Events for messages that moved to these statuses (``{message id: new status}``), one per status.
    ``queued`` is skipped: a claim given back unsent (``store.release``) changed nothing an aggregate counts."""
    by_status: dict[str, list[str]] = defaultdict(list)
    for message_id, status in statuses.items():
        if status != "queued":
            by_status[EventType.held if status == "scheduled" else status].append(message_id)
    return [Event.messages(status, ids) for status, ids in by_status.items()]


def claim_events(claim: Claim) -> list[Event]:
    """What a claim settled by itself (suppressed, expired) or held for quiet hours; the rows it handed out
    for sending change nothing counted until their outcome, which has its own event."""
    return status_events({m.id: m.status for m in (*claim.settled, *claim.held)})
