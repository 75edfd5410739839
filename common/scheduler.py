"""retry-scheduler: keep every accepted message moving, whatever Redis forgot.

Cloud schedules tick once a minute, so one invocation loops for its budget and makes a pass every
``pass_interval_s`` (sub-second precision). Each pass:

1. promotes due retries and scheduled sends onto the ready queue (Lua, atomic);
2. reclaims the leases of consumers that died (Lua, atomic);
3. every ``reconcile_interval_s``: walks PostgreSQL's due work (``scheduled``/``queued``/``retrying``
   due, and ``sending`` past its lease) with a keyset cursor and re-enqueues whatever Redis does not
   hold, so after a Redis restart that lost everything, every pending message comes back;
4. when Redis is disabled or down: sends due messages inline from PostgreSQL, claiming them first;
5. first of all, applies delivery receipts that arrived before their message was ready for them
   (common/messages/receipts.py), so a receipt is never left behind; every ``prune_interval_s`` it
   deletes webhook event ids and receipts older than a week;
6. every ``analytics_interval_s``: runs the analytics processor (common/analytics/processor.py) for a short
   budget: stream entries and marked buckets in, recomputed daily aggregates out. When its read finds the
   stream gone (Redis lost its data) it marks the recent days of active churches for recompute, as
   reconcile re-enqueues from PostgreSQL what the queue lost. With Redis down it still recomputes the
   buckets marked in PostgreSQL.

Several instances at once are safe without a lock: promote and reclaim are atomic scripts, enqueue is
idempotent (an id is held once), and inline sends go through the claim fence.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pg8000.native
import redis
from pydantic import ConfigDict, Field

from common import metrics
from common.analytics import Event, EventType, Processor
from common.analytics.events import emit, status_events
from common.db.pool import DatabaseUnavailable
from common.inline import deliver_inline
from common.messages import receipts
from common.queue import QueueItem, SenderKey, SenderLimit
from common.redis_client import RedisUnavailable
from common.request_models import StrictModel
from common.runtime import Runtime

logger = logging.getLogger("koinonia.scheduler")

pass_interval_s = 0.25
reconcile_interval_s = 5.0
prune_interval_s = 600.0  # webhook bookkeeping older than a week is deleted, a batch at a time
analytics_interval_s = 1.0  # the analytics processor's turn (common/analytics/processor.py)
reconcile_page = 2000
# A row accepted this recently may still be on its way to Redis from `send`: leave it to `send`.
reconcile_grace_s = 2.0

DUE_PAGE_SQL = """
SELECT id::text, church_id::text, lane, channel, from_address, next_attempt_at
FROM messages
WHERE status IN ('scheduled', 'queued', 'retrying')
  AND next_attempt_at <= :now
  AND (next_attempt_at, id) > (:after_at, CAST(:after_id AS uuid))
ORDER BY next_attempt_at, id
LIMIT :limit
"""

STALE_LEASES_SQL = """
SELECT id::text, church_id::text, lane, channel, from_address, lease_until
FROM messages
WHERE status = 'sending' AND lease_until < :now
ORDER BY lease_until
LIMIT :limit
"""

SENDER_RATES_SQL = """
SELECT church_id::text, phone, sms_per_second, mms_per_second
FROM sender_numbers WHERE phone = ANY(CAST(:phones AS text[]))
"""

_DB_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable, pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NIL = "00000000-0000-0000-0000-000000000000"


def _rate_of(rates: tuple[float, float], channel: str) -> float:
    """A number's rate on ``channel`` from its (SMS, MMS) pair: MMS has its own, anything else the SMS one."""
    return rates[1] if channel == "mms" else rates[0]


@dataclass
class SchedulerReport:
    passes: int = 0
    promoted: int = 0
    reclaimed: int = 0
    reconciled: int = 0
    inline_passes: int = 0
    inline_sent: int = 0
    inline_other: int = 0
    receipts_applied: int = 0
    webhook_rows_pruned: int = 0
    analytics_entries: int = 0
    analytics_buckets: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Scheduler:
    rt: Runtime
    report: SchedulerReport = field(default_factory=SchedulerReport)
    _cursor: tuple[datetime, str] = (_EPOCH, _NIL)
    _last_reconcile: float = float("-inf")
    _last_prune: float = float("-inf")
    _last_analytics: float = float("-inf")
    _analytics: Processor | None = None

    def run(self, budget_s: float, stop: threading.Event | None = None) -> SchedulerReport:
        started = time.monotonic()
        stop = stop or threading.Event()
        while not stop.is_set() and time.monotonic() - started < budget_s:
            self.one_pass()
            stop.wait(min(pass_interval_s, max(0.0, budget_s - (time.monotonic() - started))))
        self.report.seconds = round(time.monotonic() - started, 3)
        return self.report

    def one_pass(self, now: datetime | None = None) -> None:
        """One pass; a PostgreSQL outage skips it (logged) instead of ending the run."""
        try:
            self._one_pass(now)
        except _DB_ERRORS as exc:
            logger.warning("scheduler pass skipped: database unavailable", extra={"fields": {"error": type(exc).__name__}})

    def _one_pass(self, now: datetime | None = None) -> None:
        self.report.passes += 1
        rt = self.rt
        # Delivery receipts that arrived before their message was ready for them (or without our id).
        moved = receipts.apply_pending_ids(rt.pool)
        self.report.receipts_applied += len(moved)
        emit(rt, [Event.messages(EventType.receipt, moved)])  # analytics: best effort, never raises
        if time.monotonic() - self._last_prune >= prune_interval_s:
            self._last_prune = time.monotonic()
            self.report.webhook_rows_pruned += receipts.prune(rt.pool)
        if time.monotonic() - self._last_analytics >= analytics_interval_s:
            self._last_analytics = time.monotonic()
            self.process_analytics()
        if rt.settings.enable_queues:
            try:
                self.report.promoted += rt.redis.call(lambda _c: rt.queue.promote_due(limit=5000))
                self.report.reclaimed += rt.redis.call(lambda _c: rt.queue.reclaim_expired(limit=5000))
                if time.monotonic() - self._last_reconcile >= reconcile_interval_s:
                    self._last_reconcile = time.monotonic()
                    self.reconcile(now)
                return
            except (RedisUnavailable, redis.RedisError) as exc:
                logger.warning("Redis unavailable; sending due messages inline",
                               extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
        self.send_inline(now)

    def process_analytics(self) -> None:
        """The analytics processor's turn (Redis problems are handled inside; PostgreSQL's skip the pass)."""
        if self._analytics is None:
            self._analytics = Processor(self.rt)
        done = self._analytics.drain()
        self.report.analytics_entries += done.entries
        self.report.analytics_buckets += done.buckets

    # -- reconcile -------------------------------------------------------------------------------

    def reconcile(self, now: datetime | None = None) -> int:
        """Re-enqueue due work Redis does not hold; one page per call, resuming where the last ended."""
        at = (now or datetime.now(UTC)) - timedelta(seconds=reconcile_grace_s)
        rows = self.rt.pool.run(
            DUE_PAGE_SQL, now=at, after_at=self._cursor[0], after_id=self._cursor[1], limit=reconcile_page
        )
        self._cursor = (rows[-1][5], rows[-1][0]) if len(rows) == reconcile_page else (_EPOCH, _NIL)
        rows += self.rt.pool.run(STALE_LEASES_SQL, now=at, limit=reconcile_page)
        if not rows:
            return 0
        ids = [row[0] for row in rows]
        held = self.rt.redis.call(lambda _c: self.rt.queue.holds(ids))
        missing = [row for row, is_held in zip(rows, held, strict=True) if not is_held]
        if missing:
            limits = self._sender_limits(missing)
            items = [
                QueueItem(message_id=r[0], church_id=r[1], lane=r[2], sender=r[4] or "", channel=r[3]) for r in missing
            ]
            added = self.rt.redis.call(lambda _c: self.rt.queue.enqueue(items, limits))
            self.report.reconciled += added
            if added:
                logger.info("re-enqueued messages Redis did not hold", extra={"fields": {"count": added}})
        return len(missing)

    def _sender_limits(self, rows: list[list[Any]]) -> dict[SenderKey, SenderLimit]:
        """Each (channel, number)'s configured rate, as ``send`` sets it: a number's MMS and SMS apart."""
        rates = self._sender_rates(sorted({r[4] for r in rows if r[4]}))
        return {
            (r[3], r[4]): SenderLimit.for_rate(_rate_of(rates[r[4]], r[3])) for r in rows if r[4] and r[4] in rates
        }

    def _sender_rates(self, phones: list[str]) -> dict[str, tuple[float, float]]:
        """phone -> (SMS per second, MMS per second) from ``sender_numbers``; a mail's From address (never a
        number: it has an @) -> the SES account's rate, ``SES_MAX_SEND_RATE``, as ``send`` sets it."""
        ses = self.rt.settings.ses_max_send_rate
        rates = {phone: (ses, ses) for phone in phones if "@" in phone}
        rates.update(
            {phone: (float(sms), float(mms)) for _c, phone, sms, mms in self.rt.pool.run(SENDER_RATES_SQL, phones=phones)}
        )
        return rates

    # -- Redis down ------------------------------------------------------------------------------

    def send_inline(self, now: datetime | None = None) -> None:
        """Redis is off or down: claim and send what is due straight from PostgreSQL."""
        self.report.inline_passes += 1
        at = now or datetime.now(UTC)
        rows = self.rt.pool.run(DUE_PAGE_SQL, now=at, after_at=_EPOCH, after_id=_NIL, limit=500)
        rows += self.rt.pool.run(STALE_LEASES_SQL, now=at, limit=500)
        by_sender: dict[tuple[str, str], list[str]] = defaultdict(list)  # (channel, number) -> ids
        for row in rows:
            by_sender[(row[3], row[4] or "")].append(row[0])
        if not by_sender:
            return
        rates = self._sender_rates(sorted({phone for _channel, phone in by_sender}))

        async def run() -> list[dict[str, str]]:
            async with self.rt.carrier(max_connections=50) as carrier, self.rt.mail() as mail:
                return [
                    await deliver_inline(
                        self.rt.pool,
                        carrier,
                        ids,
                        budget_s=self.rt.settings.inline_budget_s,
                        per_second=_rate_of(rates[sender], channel) if sender in rates else 1.0,
                        lease_s=self.rt.settings.lease_s,
                        mail=mail,
                    )
                    for (channel, sender), ids in by_sender.items()
                ]

        for statuses in asyncio.run(run()):
            emit(self.rt, status_events(statuses))  # common/analytics: best effort, never raises
            for status in statuses.values():
                if status == "sent":
                    self.report.inline_sent += 1
                else:
                    self.report.inline_other += 1


class SchedulerRequest(StrictModel):
    """``POST /`` on retry-scheduler: one run."""

    budget_s: float | None = Field(default=None, gt=0, le=900, description="seconds to loop (default SCHEDULER_BUDGET_S)")


class SchedulerEvent(SchedulerRequest):
    """``POST /events``: the scheduler's event. ``budget_s`` is read as strictly as on ``POST /``; the envelope's
    other fields (EventBridge's ``id``, ``time``, ``detail``..., the dev scheduler's ``source``) are ignored."""

    model_config = ConfigDict(extra="ignore")


def run_scheduler(rt: Runtime, budget_s: float) -> SchedulerReport:
    report = Scheduler(rt).run(budget_s)
    # With METRICS_FORMAT=emf, once per invocation: QueueDepth, QueueAgeSeconds, DeadLetterBacklog (common/metrics)
    metrics.record_backlog(rt.pool, rt.settings)
    return report
