"""queue-consume: take messages off Redis, claim them in PostgreSQL, send them (texts through Telnyx, mail
through SES: common/delivery.py ``send_claimed``), record what happened.

One ``Consumer.run(budget)`` drains until the budget (messages or seconds) is spent, or, with
``stop_when_idle``, until there is nothing left to do. The shape of the loop:

    dequeue up to the free in-flight slots   (1 Redis round trip: lanes, fairness, sender buckets)
    claim those ids                          (1 SQL statement: the fence against double sends)
    send each claimed row concurrently       (bounded by ``concurrency``)
    as answers arrive, every few ms:
        record outcomes                      (1 SQL statement per batch, fenced by the claim token)
        ack / retry_later                    (1 Redis round trip per batch)

Outcomes are written as soon as a small batch is ready (``flush_interval_s``), never held for the whole
invocation: a crash between the carrier's answer and our write is the only window in which a message
can be sent twice, and this keeps it to milliseconds.

PostgreSQL work runs in a thread (pg8000 is synchronous) so the event loop keeps sending meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pg8000.native
import redis.asyncio
from pydantic import ConfigDict, Field

from common import metrics
from common.analytics import Event
from common.analytics.events import aemit, claim_events, status_events
from common.carrier import CarrierResult, TelnyxClient
from common.db.pool import DatabaseUnavailable, Pool
from common.dead_letters.counters import counter_key
from common.delivery import MailCourier, Mailer, decide, send_claimed
from common.messages import store
from common.messages.store import ClaimedMessage, Outcome
from common.outcome_log import log_outcome
from common.queue import AsyncMessageQueue, Lease
from common.request_models import StrictModel
from common.retry_policy import RetryPolicy, default_policy
from common.runtime import Runtime, queue_config

logger = logging.getLogger("koinonia.consume")

# PostgreSQL away (restart, failover, pool exhausted): wait and retry instead of dying.
_DB_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable, pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError,
)
recheck_margin_ms = 500  # an id leased or locked elsewhere is looked at again this long after that ends
redis_lease_grace_ms = 1000
outcome_write_patience_s = 30.0  # after the budget: how long to keep retrying outcome writes
idle_horizon_s = 1.0  # stop_when_idle: work due later than this is left for the next invocation
max_idle_wait_s = 0.25  # longest nap between dequeues while waiting (an enqueue wakes us sooner)

@dataclass(frozen=True)
class ConsumeBudget:
    max_messages: int = 100_000
    max_seconds: float = 50.0
    stop_when_idle: bool = False  # an invocation that should return as soon as the queue is empty


class ConsumeRequest(StrictModel):
    """``POST /`` on queue-consume: one budgeted drain (every field optional)."""

    max_messages: int = Field(default=100_000, ge=1, le=10_000_000, description="stop after this many dequeued")
    max_seconds: float = Field(default=50.0, gt=0, le=900, description="stop after this long (Lambda allows 900 s)")
    stop_when_idle: bool = Field(default=True, description="return as soon as nothing is due within a second")

    def budget(self) -> ConsumeBudget:
        return ConsumeBudget(self.max_messages, self.max_seconds, self.stop_when_idle)


class ConsumeEvent(ConsumeRequest):
    """``POST /events``: the cloud's envelope (an SQS batch of wake-ups, or a scheduler event). The fields we
    read are as strict as ``POST /``; the envelope's other fields are AWS's to add to, so they are ignored."""

    model_config = ConfigDict(extra="ignore")

    Records: list[dict[str, Any]] | None = Field(default=None, description="SQS records (wake-ups; no work of their own)")


@dataclass
class ConsumeReport:
    dequeued: int = 0
    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    suppressed: int = 0
    expired: int = 0
    held: int = 0  # bulk texts put back until their recipient's send window opens
    lost_claim: int = 0  # outcome not written: another claimant took the lease over
    maybe_duplicate: int = 0  # the carrier may have accepted an attempt we then retried
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    outcome: Outcome
    lease: Lease
    token: str
    attempt: int = 0  # for the outcome's log line: which attempt, how long the carrier took, whose request
    latency_ms: int = 0
    correlation_id: str | None = None


@dataclass
class ConsumerConfig:
    concurrency: int = 200
    batch: int = 100
    lease_s: float = 30.0
    flush_interval_s: float = 0.005
    flush_max: int = 200
    policy: RetryPolicy = field(default_factory=lambda: default_policy)


class Consumer:
    def __init__(
        self, pool: Pool, queue: AsyncMessageQueue, carrier: TelnyxClient, config: ConsumerConfig,
        mail: MailCourier | None = None,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.queue = queue
        self.carrier = carrier
        self.mail = mail  # SES, for channel 'mail' (common/delivery.py); texts go to ``carrier``
        self.config = config
        self.report = ConsumeReport()
        self._pending: list[_Pending] = []
        self._pending_ready = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._inflight = 0
        self._flushing = False
        self._stopping = False
        self._give_up_at = float("inf")
        self._claims: dict[str, tuple[float, dict[str, Lease]]] = {}  # token -> (claimed at, unsent leases)

    @property
    def _redis_lease_ms(self) -> int:
        # Longer than the PostgreSQL lease (which starts a round trip later), so when a consumer dies
        # its ids come back from Redis only after PostgreSQL would let another consumer claim them.
        return int(self.config.lease_s * 1000) + redis_lease_grace_ms

    async def run(self, budget: ConsumeBudget) -> ConsumeReport:
        started = time.monotonic()
        deadline = started + budget.max_seconds
        flusher = asyncio.create_task(self._flush_loop())
        tasks: set[asyncio.Task[None]] = set()
        last_housekeeping = 0.0
        try:
            while time.monotonic() < deadline and self.report.dequeued < budget.max_messages:
                now_m = time.monotonic()
                if now_m - last_housekeeping >= min(1.0, self.config.lease_s / 3):
                    last_housekeeping = now_m
                    await self._housekeeping()
                room = min(self.config.concurrency - self._inflight, self.config.batch,
                           budget.max_messages - self.report.dequeued)  # fmt: skip
                if room <= 0:
                    self._slot_free.clear()
                    await _wait(self._slot_free, deadline - time.monotonic())
                    continue
                try:
                    got = await self.queue.dequeue(room, self._redis_lease_ms)
                except redis.RedisError as exc:
                    # Redis restarting or gone: in-flight sends finish and record to PostgreSQL; the
                    # scheduler's reconcile rebuilds the queue from PostgreSQL. Keep trying, gently.
                    logger.warning("dequeue failed; retrying", extra={"fields": {"error": type(exc).__name__}})
                    await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue
                if not got.leases:
                    # next_ready_ms also counts other consumers' leases and delayed retries; nothing
                    # within a second means this invocation has nothing of its own left to do.
                    soon_s = None if got.next_ready_ms is None else (got.next_ready_ms - got.now_ms) / 1000
                    mine = self._inflight or self._pending or self._flushing
                    if budget.stop_when_idle and not mine and (soon_s is None or soon_s > idle_horizon_s):
                        break
                    wait_s = min(soon_s if soon_s is not None else max_idle_wait_s, max_idle_wait_s)
                    try:
                        await self.queue.wait_for_work(max(0.01, min(wait_s, deadline - time.monotonic())))
                    except redis.RedisError as exc:  # a blip while idle: the next dequeue tells
                        logger.warning("wait for work failed", extra={"fields": {"error": type(exc).__name__}})
                    continue
                self.report.dequeued += len(got.leases)
                try:
                    claimed = await self._claim(got.leases)
                except _DB_ERRORS as exc:
                    # PostgreSQL is away (restart, failover): nothing was sent; look again in a second.
                    logger.warning("claim failed; will retry", extra={"fields": {"error": type(exc).__name__}})
                    soon = int(time.time() * 1000) + 1000
                    await self._redis_quietly(self.queue.retry_later([(lease, soon) for lease in got.leases]), "retry_later")
                    await asyncio.sleep(0.5)
                    continue
                for message, lease, token in claimed:
                    self._inflight += 1
                    task = asyncio.create_task(self._deliver(message, lease, token))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            # Never cancel a flush half-way (outcomes written but not acked): let the flusher finish.
            self._give_up_at = time.monotonic() + outcome_write_patience_s
            self._stopping = True
            self._pending_ready.set()
            await flusher
            await self._flush()
        self.report.seconds = round(time.monotonic() - started, 3)
        return self.report

    async def _claim(self, leases: Sequence[Lease]) -> list[tuple[ClaimedMessage, Lease, str]]:
        by_id = {lease.message_id: lease for lease in leases}
        claim = await asyncio.to_thread(store.claim, self.pool, list(by_id), lease_s=self.config.lease_s)
        await self._emit(claim_events(claim))
        self.report.claimed += len(claim.sendable)
        for settled in claim.settled:
            if settled.status == "suppressed":
                self.report.suppressed += 1
            else:
                self.report.expired += 1
        self.report.held += len(claim.held)  # quiet hours: unclaimed_state below schedules them for the opening
        # Ids the claim did not return: forget the settled ones; the others are leased by another
        # consumer (maybe a dead one, whose PostgreSQL lease outlives its Redis lease by the claim's
        # round trip), locked, or not due: look at them again when that ends, never drop them.
        sendable_ids = {m.id for m in claim.sendable}
        unclaimed = [mid for mid in by_id if mid not in sendable_ids]
        if unclaimed:
            state = await asyncio.to_thread(store.unclaimed_state, self.pool, unclaimed)
            done = [by_id[mid] for mid in unclaimed if mid in state.settled]
            now_ms = int(time.time() * 1000)
            later = [
                (by_id[mid], max(now_ms, int(at.timestamp() * 1000)) + recheck_margin_ms if at else now_ms + recheck_margin_ms)
                for mid, at in state.retry_at.items()
            ]
            await self._redis_quietly(self.queue.ack(done) if done else None, "ack")
            await self._redis_quietly(self.queue.retry_later(later) if later else None, "retry_later")
        if claim.sendable:
            self._claims[claim.token] = (time.monotonic(), {m.id: by_id[m.id] for m in claim.sendable})
        return [(m, by_id[m.id], claim.token) for m in claim.sendable]

    async def _deliver(self, message: ClaimedMessage, lease: Lease, token: str) -> None:
        try:
            started = time.monotonic()
            result: CarrierResult = await send_claimed(message, self.carrier, self.mail)
            latency_ms = int((time.monotonic() - started) * 1000)
            if result.maybe_accepted:
                self.report.maybe_duplicate += 1
            outcome = decide(message, result, datetime.now(UTC), self.config.policy)
            self._pending.append(_Pending(outcome, lease, token, message.attempts, latency_ms, message.correlation_id))
            if len(self._pending) >= self.config.flush_max:
                self._pending_ready.set()
        finally:
            self._inflight -= 1
            self._slot_free.set()

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await _wait(self._pending_ready, self.config.flush_interval_s)
            self._pending_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        self._flushing = True
        try:
            await self._write(self._take_pending())
        finally:
            self._flushing = False

    def _take_pending(self) -> list[_Pending]:
        batch, self._pending = self._pending, []
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        by_token: dict[str, list[_Pending]] = defaultdict(list)
        for item in batch:
            by_token[item.token].append(item)
        changes: dict[str, str] = {}  # message id -> the status written: the batch's analytics events
        for token, items in by_token.items():
            written = await self._record(token, [i.outcome for i in items])
            if written is None:  # PostgreSQL stayed down for the whole budget: the leases will expire
                logger.error("outcomes not recorded; their messages will be retried after the lease",
                             extra={"fields": {"count": len(items)}})  # fmt: skip
                continue
            changes.update((i.outcome.message_id, i.outcome.status) for i in items if i.outcome.message_id in written)
            claimed = self._claims.get(token)
            acks: list[Lease] = []
            retries: list[tuple[Lease, int]] = []
            for item in items:
                if claimed is not None:
                    claimed[1].pop(item.outcome.message_id, None)
                log_outcome(logger, item.outcome, written=item.outcome.message_id in written, attempt=item.attempt,
                            latency_ms=item.latency_ms, correlation_id=item.correlation_id, mode="queued")  # fmt: skip
                if item.outcome.message_id not in written:
                    self.report.lost_claim += 1
                    acks.append(item.lease)  # the new owner has its own queue entry
                    continue
                status = item.outcome.status
                if status == "retrying" and item.outcome.next_attempt_at is not None:
                    self.report.retrying += 1
                    retries.append((item.lease, int(item.outcome.next_attempt_at.timestamp() * 1000)))
                else:
                    setattr(self.report, status, getattr(self.report, status) + 1)
                    acks.append(item.lease)
            if claimed is not None and not claimed[1]:
                del self._claims[token]
            dead_codes = [i.outcome.error_code or "unknown" for i in items
                          if i.outcome.status == "failed" and i.outcome.message_id in written]  # fmt: skip
            if dead_codes:
                await self._count_dead(dead_codes)
            # PostgreSQL already holds these outcomes: if Redis fails now, the leases expire and the next
            # claim finds the rows settled (acked then) or due (retried then). Nothing is lost.
            await self._redis_quietly(self.queue.ack(acks) if acks else None, "ack")
            await self._redis_quietly(self.queue.retry_later(retries) if retries else None, "retry_later")
        await self._emit(status_events(changes))

    async def _record(self, token: str, outcomes: list[Outcome]) -> set[str] | None:
        """Write outcomes, waiting out a PostgreSQL restart: these answers are the carrier's, and losing
        them would mean sending again after the lease. ``None`` only if the database stays away."""
        delay_s = 0.2
        while True:
            try:
                return await asyncio.to_thread(store.record_outcomes, self.pool, token, outcomes)
            except _DB_ERRORS as exc:
                if self._stopping and time.monotonic() > self._give_up_at:
                    return None
                logger.warning("recording outcomes failed; retrying", extra={"fields": {"error": type(exc).__name__}})
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    async def _emit(self, events: list[Event]) -> None:
        """Analytics events (common/analytics), after the commit that made them; never raises. Awaited, on the
        client's own connection, after the batch's acks: concurrent tasks would open more connections (each with
        the short connect timeout) and make the queue's own calls time out under load."""
        if events:
            await aemit(self.queue.client, self.queue.keys.prefix, self.pool, events)

    async def _redis_quietly(self, call: Awaitable[object] | None, what: str) -> None:
        if call is None:
            return
        try:
            await call
        except redis.RedisError as exc:
            logger.warning("%s failed; the lease will expire and PostgreSQL decides", what,
                           extra={"fields": {"error": type(exc).__name__}})  # fmt: skip

    async def _count_dead(self, codes: list[str]) -> None:
        key = counter_key(self.queue.keys.prefix)
        try:
            pipe = self.queue.client.pipeline(transaction=False)
            for code in codes:
                pipe.hincrby(key, code, 1)
            await pipe.execute()
        except redis.RedisError as exc:  # counters are for dashboards; the rows are in PostgreSQL
            logger.warning("dead-letter counters not updated", extra={"fields": {"error": type(exc).__name__}})

    async def _housekeeping(self) -> None:
        """Renew our own long claims (every dequeue already promotes due retries and reclaims the
        leases of dead consumers, inside its script)."""
        now_m = time.monotonic()
        for token, (claimed_at, leases) in list(self._claims.items()):
            if leases and now_m - claimed_at >= self.config.lease_s / 3:
                try:
                    await asyncio.to_thread(store.renew_leases, self.pool, token, list(leases), lease_s=self.config.lease_s)
                except _DB_ERRORS as exc:  # PostgreSQL away: try again at the next housekeeping
                    logger.warning("lease renewal failed", extra={"fields": {"error": type(exc).__name__}})
                    continue
                await self._redis_quietly(self.queue.renew(list(leases.values()), self._redis_lease_ms), "renew")
                self._claims[token] = (now_m, leases)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout_s))


async def run_consumer(rt: Runtime, budget: ConsumeBudget, *, mailer: Mailer | None = None) -> ConsumeReport:
    """One consumer with its own event-loop-bound clients (Redis, carrier, SES), for one budget.

    ``mailer``: send mail through this ``SesMailer`` (the caller's, left open) instead of one made from the
    settings at the first mail; the seam tests inject SES faults through."""
    settings = rt.settings
    client = redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_timeout=max(settings.redis_timeout_ms / 1000, 2.0),  # BLPOP waits longer than a command
        socket_connect_timeout=settings.redis_timeout_ms / 1000,
        decode_responses=True,
    )
    config = ConsumerConfig(
        concurrency=settings.consumer_concurrency, batch=settings.consumer_batch, lease_s=settings.lease_s
    )
    try:
        mail = MailCourier.using(mailer) if mailer is not None else rt.mail(max_concurrency=min(config.concurrency, 32))
        async with rt.carrier(max_connections=config.concurrency) as carrier, mail:
            queue = AsyncMessageQueue(client, settings.redis_key_prefix, queue_config(settings))
            report = await Consumer(rt.pool, queue, carrier, config, mail).run(budget)
            logger.info("consumer run", extra={"fields": report.as_dict()})  # request_id: this invocation's
            return report
    finally:
        await client.aclose()
        metrics.flush()  # METRICS_FORMAT=emf: the run's counts and carrier latencies as EMF (common/metrics)
