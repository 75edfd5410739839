"""``koinonia check failover``: prove on this deployment that sending survives Redis going away, and comes back.

Three phases, against the configured PostgreSQL, Redis and carrier, through the very ``submit`` that
``POST /messages`` runs (rate limits, quota, the claim, the carrier client; no API key: the operator
names the church):

1. **Redis unavailable.** A runtime identical to the configured one except that its Redis client points
   at a loopback port this process holds bound and never listens on, so connecting is refused at once
   and nothing else can take the port meanwhile. The real Redis is never stopped or touched: other
   requests keep using it. One text is submitted; the answer must say ``mode: inline`` and its row must
   reach ``sent`` (the carrier accepted it) before ``submit`` returns.
2. **Redis back.** With the configured runtime: Redis must answer first (else nothing is sent and the
   fix is ``koinonia check redis``); a second text is submitted and must be ``queued`` in Redis (not
   inline); then a consumer runs for a short budget, stopping when idle, and the row must reach ``sent``.
   A worker of the deployment may take the message first: that is the system working, so the check
   waits for the row, not for its own consumer.
3. **Nothing lost.** Both rows exist, each with exactly one carrier attempt and its own carrier id.

The texts are real: they go through the carrier to the ``--to`` number, which the operator must name (their
own phone), and count against the church's plan like any send (one segment each). They are sent with
``max_attempts`` 1 and a 10-minute deadline: a failed check leaves a dead letter, never a retry that
texts the operator hours later. A refused request (no subscription, quota, rate limit, opted out) stops
the check after phase 1: phase 2 would be refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

from common.api_errors import ApiError
from common.checks.failover_diagnosis import CarrierAttempt, carrier_fix, refusal_fix
from common.consume import ConsumeBudget, run_consumer
from common.db.pool import Pool
from common.logs import mask_address
from common.messages.states import RECEIPT_RANK, MessageStatus
from common.queue import MessageQueue
from common.redis_client import RedisGate, RedisUnavailable
from common.runtime import Runtime
from common.send.models import parse_send_request
from common.send.submit import submit

Say = Callable[[str], None]

check_deadline_s = 600  # a check text not sent within 10 minutes expires instead of arriving late
poll_interval_s = 0.1
consume_max_messages = 1_000  # the consumer also delivers whatever else is due: bounded

_CARRIER_ACCEPTED = frozenset(s for s, rank in RECEIPT_RANK.items() if rank >= RECEIPT_RANK[MessageStatus.sent])
_WAITING = frozenset({MessageStatus.queued, MessageStatus.scheduled, MessageStatus.sending, MessageStatus.retrying})

MESSAGE_ROW_SQL = """
SELECT m.status, m.attempts, m.provider_message_id, m.last_error_code, m.last_error_detail,
       (SELECT a.http_status FROM message_attempts a WHERE a.message_id = m.id ORDER BY a.attempt DESC LIMIT 1),
       (SELECT count(*) FROM message_attempts a WHERE a.message_id = m.id)
FROM messages m WHERE m.id = CAST(:id AS uuid)
"""


@dataclass(frozen=True)
class Row:
    status: str
    attempts: int
    provider_message_id: str | None
    error_code: str | None
    error_detail: str | None
    http_status: int | None
    attempt_rows: int

    @property
    def carrier_accepted(self) -> bool:
        return self.status in _CARRIER_ACCEPTED


@dataclass
class Phase:
    name: str
    ok: bool = False
    seconds: float = 0.0
    message_id: str | None = None
    fixes: list[str] = field(default_factory=list)
    refused: bool = False  # the send path refused the request itself (later phases would be refused too)
    skipped: bool = False


@dataclass(frozen=True)
class FailoverCheck:
    rt: Runtime
    church_id: str
    to: str  # E.164
    say: Say
    consume_seconds: float = 30.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def to_masked(self) -> str:
        return mask_address(self.to)

    def run(self) -> int:
        settings = self.rt.settings
        if not settings.enable_queues:
            self.say("check failover: ENABLE_QUEUES=false: this deployment never uses Redis (every send is inline), so "
                     "there is no failover to check; nothing was sent")  # fmt: skip
            return 1
        church = _church(self.rt.pool, self.church_id)
        if church is None or church[1]:
            what = "was deleted" if church else "does not exist"
            self.say(f"check failover: FAILED: church {self.church_id} {what}: run `koinonia seed` (it prints the demo "
                     "church's id) or pass the id of an existing church; nothing was sent")  # fmt: skip
            return 1
        carrier = urlsplit(settings.telnyx_base_url).netloc or settings.telnyx_base_url
        self.say(f"check failover: church {church[0]!r} ({self.church_id}); run {self.run_id}")
        self.say(f"check failover: this sends 2 REAL texts through the carrier at {carrier} to {self.to_masked} (the --to "
                 "number), billed to the church's plan as any send (1 segment each)")  # fmt: skip
        first = self._without_redis()
        if first.refused:
            second = Phase("phase 2 (Redis back)", skipped=True)
            self.say("phase 2 (Redis back): skipped: the send path refused phase 1's request and would refuse this one")
        else:
            second = self._with_redis()
        third = self._nothing_lost([first, second])
        return self._summary([first, second, third])

    # -- phase 1 ---------------------------------------------------------------------------------

    def _without_redis(self) -> Phase:
        phase = Phase("phase 1 (Redis unavailable)")
        started = time.monotonic()
        with _closed_port() as port:
            gate = RedisGate(f"redis://127.0.0.1:{port}/0", prefix=self.rt.settings.redis_key_prefix,
                             timeout_s=self.rt.settings.redis_timeout_ms / 1000)  # fmt: skip
            offline = dataclasses.replace(
                self.rt, redis=gate, queue=MessageQueue(gate.client, gate.prefix, self.rt.queue_config())
            )
            self.say(f"{phase.name}: this run's Redis client points at 127.0.0.1:{port}, where nothing listens (the "
                     "configured Redis is not touched); submitting text 1/2 (the 'enqueue failed, sending inline' "
                     "warning it logs is expected) ...")  # fmt: skip
            try:
                answer = self._submit(offline, 1, "sent inline while Redis was unavailable")
            finally:
                gate.close()
        if isinstance(answer, ApiError):
            return self._refused(phase, answer, started)
        phase.message_id = _message_id(answer)
        mode = answer.get("mode")
        self.say(f"{phase.name}: answered mode {mode!r}, message {phase.message_id}")
        if mode != "inline":
            phase.fixes.append(f"the send answered mode {mode!r} although its Redis was unreachable: it should have sent "
                               "inline; this is a bug, please report it with this output")  # fmt: skip
        row = _row(self.rt.pool, phase.message_id)
        self._judge(phase, row, how="inline")
        phase.seconds = time.monotonic() - started
        phase.ok = not phase.fixes
        return phase

    # -- phase 2 ---------------------------------------------------------------------------------

    def _with_redis(self) -> Phase:
        phase = Phase("phase 2 (Redis back)")
        started = time.monotonic()
        try:
            self.rt.redis.call(lambda client: client.ping())
        except (RedisUnavailable, redis.RedisError) as exc:
            phase.fixes.append(f"the configured Redis does not answer ({type(exc).__name__}): run `koinonia check redis` "
                               "for the cause; nothing was sent in this phase")  # fmt: skip
            self.say(f"{phase.name}: FAILED: the configured Redis does not answer; nothing sent")
            phase.seconds = time.monotonic() - started
            return phase
        self.say(f"{phase.name}: the configured Redis answers; submitting text 2/2 ...")
        answer = self._submit(self.rt, 2, "queued in Redis and consumed")
        if isinstance(answer, ApiError):
            return self._refused(phase, answer, started)
        phase.message_id = _message_id(answer)
        mode = answer.get("mode")
        self.say(f"{phase.name}: answered mode {mode!r}, message {phase.message_id}")
        if mode != "queued":
            phase.fixes.append(f"the send answered mode {mode!r}, not 'queued': Redis failed while enqueueing, so it fell "
                               "back inline; run `koinonia check redis`")  # fmt: skip
        else:
            self._consume(phase.message_id)
        row = _row(self.rt.pool, phase.message_id)
        self._judge(phase, row, how="by a consumer" if mode == "queued" else "inline")
        phase.seconds = time.monotonic() - started
        phase.ok = not phase.fixes
        return phase

    def _consume(self, message_id: str) -> None:
        """Run a consumer until idle, then wait (within the budget) for the row to settle: a worker of the
        deployment may hold the message instead of ours."""
        deadline = time.monotonic() + self.consume_seconds
        budget = ConsumeBudget(max_messages=consume_max_messages, max_seconds=self.consume_seconds, stop_when_idle=True)
        self.say(f"phase 2 (Redis back): running a consumer (at most {self.consume_seconds:g} s, stops when idle) ...")
        report = asyncio.run(run_consumer(self.rt, budget))
        self.say(f"phase 2 (Redis back): consumer: dequeued {report.dequeued}, sent {report.sent} in {report.seconds:.2f} s")
        while time.monotonic() < deadline:
            row = _row(self.rt.pool, message_id)
            if row is None or row.status not in _WAITING:
                return
            time.sleep(poll_interval_s)  # another worker holds it: it writes the outcome when the carrier answers

    # -- phase 3 ---------------------------------------------------------------------------------

    def _nothing_lost(self, phases: list[Phase]) -> Phase:
        phase = Phase("phase 3 (nothing lost)")
        started = time.monotonic()
        ids = [p.message_id for p in phases if p.message_id]
        if not ids:
            phase.skipped = True
            self.say(f"{phase.name}: skipped: no message was accepted")
            return phase
        found = {mid: _row(self.rt.pool, mid) for mid in ids}
        rows = {mid: row for mid, row in found.items() if row is not None}
        for mid in found.keys() - rows.keys():
            phase.fixes.append(f"message {mid} was accepted but is not in PostgreSQL: LOST; report it with this output")
        for mid, row in rows.items():
            # Sent once: one attempt (a row still waiting has none yet, and is not lost: PostgreSQL holds it).
            if row.attempt_rows > 1 or row.attempts > 1:
                phase.fixes.append(f"message {mid} has {row.attempt_rows} carrier attempts recorded (expected exactly 1): "
                                   "report it with this output")  # fmt: skip
        carrier_ids = [row.provider_message_id for row in rows.values() if row.provider_message_id]
        if len(set(carrier_ids)) != len(carrier_ids):
            phase.fixes.append("two messages share one carrier id: report it with this output")
        phase.seconds = time.monotonic() - started
        phase.ok = not phase.fixes
        listing = "; ".join(f"{mid}: {row.status}, {row.attempt_rows} carrier attempt(s)" for mid, row in rows.items())
        self.say(f"{phase.name}: {'ok' if phase.ok else 'FAILED'}: {len(rows)} of {len(ids)} accepted message(s) in "
                 f"PostgreSQL ({listing})")  # fmt: skip
        return phase

    # -- shared ----------------------------------------------------------------------------------

    def _submit(self, rt: Runtime, number: int, how: str) -> dict[str, Any] | ApiError:
        payload = {
            "channel": "sms", "to": self.to, "max_attempts": 1, "deadline_s": check_deadline_s,
            "text": f"Koinonia failover check {number}/2 ({how}). No reply needed.",
        }  # fmt: skip
        try:
            reply = submit(rt, self.church_id, parse_send_request(payload), payload,
                           f"koinonia-check-failover-{self.run_id}-{number}")  # fmt: skip
        except ApiError as exc:
            return exc
        return reply.body

    def _refused(self, phase: Phase, exc: ApiError, started: float) -> Phase:
        phase.refused = True
        fix = refusal_fix(exc, self.church_id)
        phase.fixes.append(fix)
        phase.seconds = time.monotonic() - started
        self.say(f"{phase.name}: FAILED: refused, nothing sent: {fix}")
        return phase

    def _judge(self, phase: Phase, row: Row | None, *, how: str) -> None:
        if row is None:
            fix = f"message {phase.message_id} was accepted but is not in PostgreSQL: LOST; report it with this output"
            phase.fixes.append(fix)
            self.say(f"{phase.name}: FAILED: {fix}")
            return
        if row.carrier_accepted:
            self.say(f"{phase.name}: row reached {row.status!r} {how} (the carrier accepted it, carrier id "
                     f"{row.provider_message_id}); {row.attempt_rows} carrier attempt(s)")  # fmt: skip
            return
        if row.status in _WAITING:
            fix = (f"message {phase.message_id} is still {row.status!r}: not sent within the check's time (a backlog "
                   "ahead of it, or a worker holding it); it goes out when a consumer reaches it; run `koinonia consume` "
                   "or look again with `GET /messages/{id}`")  # fmt: skip
        else:
            attempt = CarrierAttempt(row.status, row.error_code, row.error_detail, row.http_status)
            fix = carrier_fix(attempt, to_masked=self.to_masked, base_url=self.rt.settings.telnyx_base_url)
            if row.status == MessageStatus.failed:
                fix += " (the check sends with max_attempts 1: this message is a dead letter now, not retried)"
        phase.fixes.append(fix)
        self.say(f"{phase.name}: FAILED: row is {row.status!r}: {fix}")

    def _summary(self, phases: list[Phase]) -> int:
        for phase in phases:
            state = "skipped" if phase.skipped else ("ok" if phase.ok else "FAILED")
            self.say(f"  {phase.name:<28} {state:<7} {phase.seconds:6.2f} s")
        if all(p.ok for p in phases):
            self.say("check failover: ok: sending fell back inline without Redis, went through Redis again once it was "
                     "back, and every message reached the carrier exactly once")  # fmt: skip
            return 0
        self.say("check failover: FAILED. What to do:")
        for phase in phases:
            for fix in phase.fixes:
                self.say(f"  - {phase.name}: {fix}")
        return 1


def _church(pool: Pool, church_id: str) -> tuple[str, bool] | None:
    rows = pool.run("SELECT name, deleted_at IS NOT NULL FROM churches WHERE id = CAST(:c AS uuid)", c=church_id)
    return (str(rows[0][0]), bool(rows[0][1])) if rows else None


def _row(pool: Pool, message_id: str) -> Row | None:
    rows = pool.run(MESSAGE_ROW_SQL, id=message_id)
    if not rows:
        return None
    status, attempts, provider_id, code, detail, http_status, attempt_rows = rows[0]
    return Row(str(status), int(attempts), provider_id, code, detail, http_status, int(attempt_rows))


def _message_id(answer: dict[str, Any]) -> str:
    return str(answer["recipients"][0]["message_id"])


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port held bound but never listening: a connection to it is refused at once, and no other
    process can start listening on it while the check runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
