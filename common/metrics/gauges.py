"""The queue gauges: what waits in PostgreSQL, read with the statements ``/health/detailed`` uses.

``QueueDepth`` (queued, scheduled, retrying: not ``sending``), ``QueueAgeSeconds`` (how long the most overdue
waiting message has been due: 0 while everything due is moving; a scheduled send for next week is not late)
and ``DeadLetterBacklog``. Prometheus reads them at each scrape; in the cloud the retry-scheduler records them
once per invocation (``record_backlog``), so its alarms get a point every minute, and a scheduler that stops
leaves them without data, which the QueueAgeSeconds alarm treats as breaching.

Both reads run in one transaction under a short ``statement_timeout``: a slow or unreachable database costs a
scrape at most that (and the pool's connect timeout), never a hung ``/metrics``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pg8000.native

from common.config import Settings
from common.db.pool import DatabaseUnavailable, Pool
from common.health import DEAD_LETTERS_SQL, PENDING_SQL
from common.messages.states import MessageStatus
from common.metrics.catalog import Metric
from common.metrics.registry import REGISTRY, Registry

logger = logging.getLogger("koinonia.metrics")

statement_timeout_ms = 1000
_DB_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable, pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError,
)  # fmt: skip


@dataclass(frozen=True)
class Backlog:
    waiting: int
    oldest_due_s: float
    dead_letters: int


def read_backlog(pool: Pool, *, timeout_ms: int = statement_timeout_ms) -> Backlog:
    """The gauges now; raises what the pool and pg8000 raise when PostgreSQL is away or too slow."""
    with pool.transaction() as conn:
        conn.run("SELECT set_config('statement_timeout', :ms, true)", ms=str(timeout_ms))  # this transaction only
        pending = conn.run(PENDING_SQL)
        dead = conn.run(DEAD_LETTERS_SQL)
    waiting = [row for row in pending if row[0] != MessageStatus.sending]
    return Backlog(
        waiting=sum(int(row[1]) for row in waiting),
        oldest_due_s=max((float(row[3]) for row in waiting if row[3] is not None), default=0.0),
        dead_letters=int(dead[0][0]),
    )


def try_read_backlog(pool: Pool) -> Backlog | None:
    """``read_backlog``, or ``None`` (logged) when PostgreSQL did not answer in time."""
    try:
        return read_backlog(pool)
    except _DB_ERRORS as exc:
        logger.warning("queue gauges not read: database unavailable", extra={"fields": {"error": type(exc).__name__}})
        return None


def record_backlog(pool: Pool, settings: Settings, registry: Registry = REGISTRY) -> None:
    """The retry-scheduler's once-per-invocation gauges, for the next EMF flush (only with METRICS_FORMAT=emf:
    Prometheus reads them itself at scrape time)."""
    if settings.metrics_format != "emf":
        return
    backlog = try_read_backlog(pool)
    if backlog is None:
        return
    registry.set_gauge(Metric.queue_depth, backlog.waiting)
    registry.set_gauge(Metric.queue_age, round(backlog.oldest_due_s, 3))
    registry.set_gauge(Metric.dead_letter_backlog, backlog.dead_letters)
