"""The analytics processor: stream entries (and marked buckets) in, recomputed ``daily_aggregates`` out.

``process_batch`` is one round: read up to ``entries_per_batch`` entries (those a dead processor left pending
first), reduce them to the set of (church, local day) buckets they touch, add up to ``dirty_per_batch``
buckets marked in ``analytics_dirty``, recompute them all in one transaction (aggregates.py), commit, then
ack. So an entry is acked only after its recompute is durable; a processor killed anywhere in between leaves
its entries pending, and another processor reclaims them after ``stream.reclaim_idle_ms``: a second
recompute of the same buckets, which changes nothing.

When the read says the stream lost entries (Redis lost its data, or entries were trimmed unread), it first
marks every bucket they could have named (``aggregates.mark_recent``, whose docstring gives the cost).

The retry-scheduler runs it (common/scheduler.py): ``drain`` every ``scheduler_interval_s`` of its pass loop,
for at most ``drain_budget_s``. With Redis off or down only the marked buckets are processed. Several
processors at once are safe: the consumer group hands each entry to one, ``analytics_dirty`` rows are taken
with SKIP LOCKED, and recomputes of one bucket are serialized by an advisory lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from common.analytics import aggregates, stream
from common.analytics.stream import LOST_NOTHING, AnalyticsStream, Batch, Entry
from common.analytics.types import Bucket, Targets
from common.redis_client import RedisUnavailable

if TYPE_CHECKING:
    from common.runtime import Runtime

logger = logging.getLogger("koinonia.analytics")

entries_per_batch = 500  # stream entries per round (each names up to stream.max_ids_per_entry ids)
dirty_per_batch = 200  # marked buckets per round (a sweep after a loss drains at this pace)
scheduler_interval_s = 1.0  # the scheduler drains at most once a second: a busy bucket is recomputed <= 1/s
drain_budget_s = 0.5  # ... and for at most this long per turn, so its own passes keep their 250 ms rhythm


def default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class BatchReport:
    entries: int = 0  # stream entries read (reclaimed ones included)
    ids: int = 0  # ids those entries named
    buckets: int = 0  # (church, day) buckets recomputed
    rows: int = 0  # daily_aggregates rows written
    removed: int = 0  # rows deleted because their facts are gone
    from_dirty: int = 0  # buckets taken from analytics_dirty
    swept: int = 0  # buckets marked after a detected loss
    lost: int = LOST_NOTHING  # what read.lua said
    stream_ok: bool = True  # False: Redis off or failing, only marked buckets were processed

    def add(self, other: BatchReport) -> None:
        for name in ("entries", "ids", "buckets", "rows", "removed", "from_dirty", "swept"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lost = max(self.lost, other.lost)
        self.stream_ok = self.stream_ok and other.stream_ok

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Processor:
    """One processor (a consumer of the group). ``rt``'s Redis client and pool; ``stream`` built lazily."""

    rt: Runtime
    consumer: str = field(default_factory=default_consumer)
    max_entries: int = entries_per_batch
    max_dirty: int = dirty_per_batch
    reclaim_idle_ms: int = stream.reclaim_idle_ms
    _stream: AnalyticsStream | None = None

    @property
    def stream(self) -> AnalyticsStream:
        if self._stream is None:
            self._stream = AnalyticsStream(self.rt.redis.client, self.rt.redis.prefix)
        return self._stream

    def process_batch(self) -> BatchReport:
        """One round; see the module docstring. PostgreSQL errors propagate (entries stay pending)."""
        report = BatchReport()
        batch = self._read(report)
        if batch.lost != LOST_NOTHING:
            report.lost = batch.lost
            report.swept = aggregates.mark_recent(self.rt.pool)
            logger.warning(
                "analytics stream lost entries; recent days marked for recompute",
                extra={"fields": {"cause": "stream missing" if batch.lost == stream.LOST_STREAM else "trimmed unread",
                                  "buckets": report.swept}},
            )  # fmt: skip
        events = [(e.event, e.at) for e in batch.entries if e.event is not None]
        report.entries = len(batch.entries)
        report.ids = sum(len(event.ids) for event, _ in events)
        with self.rt.pool.transaction() as conn:
            buckets: set[Bucket] = aggregates.resolve(conn, Targets.of(events))
            taken = aggregates.take_dirty(conn, self.max_dirty)
            report.from_dirty = len(taken)
            done = aggregates.recompute(conn, buckets | taken)
            if batch.entries:
                aggregates.note_processed(conn, max(e.at for e in batch.entries))
        report.buckets, report.rows, report.removed = done.buckets, done.rows, done.removed
        self._ack(batch.entries)
        return report

    def drain(self, budget_s: float = drain_budget_s) -> BatchReport:
        """Rounds until one finds less than a full batch of work, or ``budget_s`` has passed."""
        total = BatchReport()
        started = time.monotonic()
        while True:
            report = self.process_batch()
            total.add(report)
            full = report.entries >= self.max_entries or report.from_dirty >= self.max_dirty
            if not full or time.monotonic() - started >= budget_s:
                return total

    def _read(self, report: BatchReport) -> Batch:
        if not self.rt.settings.enable_queues:
            report.stream_ok = False
            return Batch(LOST_NOTHING, [])
        try:
            return self.rt.redis.call(
                lambda _c: self.stream.read(self.consumer, self.max_entries, idle_ms=self.reclaim_idle_ms)
            )
        except (RedisUnavailable, redis.RedisError) as exc:
            logger.warning("analytics stream unreadable; marked buckets only", extra={"fields": {"error": type(exc).__name__}})
            report.stream_ok = False
            return Batch(LOST_NOTHING, [])

    def _ack(self, entries: list[Entry]) -> None:
        if not entries:
            return
        try:
            self.rt.redis.call(lambda _c: self.stream.ack([e.entry_id for e in entries]))
        except (RedisUnavailable, redis.RedisError) as exc:
            # Committed already: the entries come back after reclaim_idle_ms and recompute the same buckets.
            logger.warning("analytics ack failed; entries will be reprocessed", extra={"fields": {"error": type(exc).__name__}})


def process_batch(rt: Runtime, *, consumer: str | None = None) -> BatchReport:
    """One round by a processor named ``consumer`` (default: this host and process)."""
    return Processor(rt, consumer=consumer or default_consumer()).process_batch()
