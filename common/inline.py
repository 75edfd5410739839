"""Sending without Redis: ``ENABLE_QUEUES=false``, or Redis not answering.

``send`` claims the rows it just wrote (the same claim as the consumer's, so the two paths can never
both send one message), sends them concurrently within its time budget, at no more than the sender's
rate, and records each outcome (logged as queue-consume logs its own: common/outcome_log.py). Claimed
rows it had no time to start are released back to ``queued`` for the retry-scheduler; retries wait in
PostgreSQL (``next_attempt_at``) for the scheduler too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from common.carrier import TelnyxClient
from common.db.pool import Pool
from common.delivery import MailCourier, decide, send_claimed
from common.messages import store
from common.messages.store import ClaimedMessage, Outcome
from common.outcome_log import log_outcome
from common.retry_policy import RetryPolicy, default_policy

logger = logging.getLogger("koinonia.inline")


class _Pace:
    """At most ``per_second`` starts per second (the sender's throughput), without a Redis bucket."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = time.monotonic()

    def reserve(self, deadline: float) -> float | None:
        """The monotonic time this start may happen, or ``None`` if that is past ``deadline``."""
        start_at = max(time.monotonic(), self._next)
        if start_at >= deadline:
            return None
        self._next = start_at + self._interval
        return start_at


async def deliver_inline(
    pool: Pool,
    carrier: TelnyxClient,
    ids: Sequence[str],
    *,
    budget_s: float,
    per_second: float,
    concurrency: int = 50,
    lease_s: float = 60.0,
    policy: RetryPolicy = default_policy,
    mail: MailCourier | None = None,
) -> dict[str, str]:
    """Send what can be sent within ``budget_s``; return the status of every id this call settled.

    Texts go to ``carrier``, mail to ``mail`` (SES; common/delivery.py ``send_claimed``)."""
    deadline = time.monotonic() + budget_s
    claim = await asyncio.to_thread(store.claim, pool, list(ids), lease_s=lease_s)
    statuses = {m.id: m.status for m in claim.settled + claim.held}
    outcomes: list[Outcome] = []
    sent: dict[str, tuple[ClaimedMessage, int]] = {}  # message id -> (the row, carrier latency ms): the log lines
    unstarted: list[str] = []
    pace = _Pace(per_second)
    slots = asyncio.Semaphore(concurrency)

    async def one(message: ClaimedMessage) -> None:
        start_at = pace.reserve(deadline)
        if start_at is None:
            unstarted.append(message.id)
            return
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        async with slots:
            started = time.monotonic()
            result = await send_claimed(message, carrier, mail)
            sent[message.id] = (message, int((time.monotonic() - started) * 1000))
            outcomes.append(decide(message, result, datetime.now(UTC), policy))

    await asyncio.gather(*(one(m) for m in claim.sendable))
    written = await asyncio.to_thread(store.record_outcomes, pool, claim.token, outcomes)
    await asyncio.to_thread(store.release, pool, claim.token, unstarted)
    for outcome in outcomes:
        message, latency_ms = sent[outcome.message_id]
        log_outcome(logger, outcome, written=outcome.message_id in written, attempt=message.attempts,
                    latency_ms=latency_ms, correlation_id=message.correlation_id, mode="inline")  # fmt: skip
        if outcome.message_id in written:
            statuses[outcome.message_id] = outcome.status
    for message_id in unstarted:
        statuses[message_id] = "queued"
    return statuses
