"""The send pipeline's contract under real faults: real PostgreSQL, real Redis, the Telnyx sandbox.

What is proved here, each with the fault made real (processes killed, servers stopped):

- two consumer processes share a 10,000-message drain and the carrier sees each message once;
- a consumer SIGKILLed mid-drain loses nothing: its leases run out, another consumer takes the rows
  over within seconds, and the carrier sees a duplicate only for requests that were in flight when it
  died (the measured duplicate window);
- Redis stopped for real: ``send`` still answers 202 at once and delivers inline; with Redis back,
  nothing is sent twice; ``ENABLE_QUEUES=false`` never touches Redis; health says ``degraded``;
- fairness: one church's 20,000-message backlog does not hold up another church's message;
- a sender's throughput cap holds at the carrier;
- carrier faults (5xx then success, 40300 STOP, 400 invalid) end in the right status and history.

No sleeps stand in for synchronisation: every wait is a condition polled under a deadline.
"""

from __future__ import annotations

import ast
import asyncio
import bisect
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from common import constants
from common.consume import ConsumeBudget, ConsumeReport, run_consumer
from common.db.pool import Pool
from common.ids import uuid7
from common.privacy import crypto
from common.queue import QueueItem, SenderLimit
from common.retry_policy import default_policy
from common.runtime import get_runtime
from infra.embedded import RedisProcess
from infra.telnyx_sandbox import Sandbox
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, rebuild_singletons, set_env, wait_for

FINAL = frozenset({"sent", "failed", "suppressed", "expired"})
FAST_SENDER = 50_000.0  # "sender rate high": the number's own cap never binds


# -- helpers ------------------------------------------------------------------------------------






def status_counts(pool: Pool, church_id: str | None = None) -> dict[str, int]:
    if church_id is None:
        rows = pool.run("SELECT status, count(*) FROM messages GROUP BY status")
    else:
        rows = pool.run("SELECT status, count(*) FROM messages WHERE church_id = CAST(:c AS uuid) GROUP BY status",
                        c=church_id)  # fmt: skip
    return {status: int(count) for status, count in rows}


def post(client: Any, tenant: Tenant, **body: Any) -> tuple[int, dict[str, Any]]:
    payload = {"channel": "sms", "text": "See you Sunday", **body}
    response = client.post("/messages", json=payload, headers=tenant.auth)
    return response.status_code, response.get_json()


def received_ms(entry: Any) -> int:
    """A ledger entry's ``received_at`` (UTC, millisecond resolution) as epoch milliseconds."""
    return round(datetime.fromisoformat(entry.received_at).timestamp() * 1000)


def drain_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> list[ConsumeReport]:
    """In-process consumer rounds until ``condition`` holds (or AssertionError at the deadline).

    A ``stop_when_idle`` round returns when nothing is due within a second, so work due later (a 2 s
    backoff) needs another round; a round that found nothing waits for work instead of spinning.
    """
    deadline = time.monotonic() + timeout_s
    reports: list[ConsumeReport] = []
    idle = False
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout_s:g}s draining until {what}; rounds: {reports}")
        budget = (ConsumeBudget(max_seconds=min(0.5, remaining), stop_when_idle=False) if idle
                  else ConsumeBudget(max_seconds=remaining, stop_when_idle=True))  # fmt: skip
        report = asyncio.run(run_consumer(get_runtime(), budget))
        reports.append(report)
        idle = report.dequeued == 0
    return reports


def add_members(pool: Pool, tenant: Tenant, phones: list[str]) -> None:
    """Bulk-add contacts to the tenant's group (make_church adds them one row at a time)."""
    contact_ids = [str(uuid7()) for _ in phones]
    ring = crypto.keyring()
    with pool.transaction() as conn:
        conn.run(
            "INSERT INTO contacts (id, church_id, phone_enc, phone_hash)"
            " SELECT t.id, CAST(:c AS uuid), t.enc, t.hash"
            " FROM unnest(CAST(:ids AS uuid[]), CAST(:enc AS bytea[]), CAST(:hash AS bytea[])) AS t(id, enc, hash)",
            c=tenant.church_id, ids=contact_ids, enc=[ring.seal(p, "address") for p in phones],
            hash=[ring.lookup_hash(tenant.church_id, p) for p in phones],
        )  # fmt: skip
        conn.run(
            "INSERT INTO group_members (group_id, contact_id) SELECT CAST(:g AS uuid), unnest(CAST(:ids AS uuid[]))",
            g=tenant.group_id, ids=contact_ids,
        )  # fmt: skip
    tenant.members.extend(phones)


class ConsumerProcess:
    """``python -m common.cli consume`` in its own process, settings from the (test's) environment."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str], max_seconds: float) -> None:
        self.name = name
        self.log = log_dir / f"consumer-{name}.log"
        with open(self.log, "wb") as sink:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "common.cli", "consume", "--max-seconds", str(max_seconds)],
                env=env, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL: no cleanup, nothing flushed (a crash)."""
        if self.running:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def report(self) -> dict[str, Any]:
        """The ``consume: {...}`` line the command prints when its round ends."""
        for line in self.output().splitlines():
            if line.startswith("consume: "):
                return dict(ast.literal_eval(line.removeprefix("consume: ")))
        raise AssertionError(f"consumer {self.name} printed no report:\n{self.output()[-3000:]}")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start consumer processes (env: this test's, plus overrides); every one is killed at teardown."""
    started: list[ConsumerProcess] = []

    def start(name: str, *, max_seconds: float = 60.0, **overrides: str) -> ConsumerProcess:
        env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **overrides}
        process = ConsumerProcess(name, tmp_path, env, max_seconds)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def client(send_env):
    return function_client("send")


# -- 1. two consumer processes, 10,000 messages ---------------------------------------------------


def test_two_consumer_processes_drain_10000_messages_exactly_once(client, pool, sandbox, spawn):
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    to = numbers(10_000)
    status, body = post(client, tenant, to=to, text="Prayer meeting 7pm")
    assert status == 202, body
    assert body["mode"] == "queued" and body["counts"]["accepted"] == 10_000
    # A little carrier latency stretches the drain over a few seconds, so both processes are up for it.
    sandbox.configure(latency_ms=30)

    consumers = [spawn("one"), spawn("two")]
    for consumer in consumers:
        assert consumer.wait(120) == 0, consumer.output()[-3000:]
    reports = [consumer.report() for consumer in consumers]
    print(f"\ntwo consumers: {reports}")

    assert status_counts(pool) == {"sent": 10_000}
    ledger = sandbox.ledger
    assert (ledger.accepted, ledger.unique, ledger.duplicates) == (10_000, 10_000, 0)
    assert set(ledger.by_to()) == set(to)
    assert sum(r["sent"] for r in reports) == 10_000, reports
    assert all(r["sent"] > 0 for r in reports), f"one process did all the work: {reports}"
    assert sum(r["lost_claim"] for r in reports) == 0, reports
    attempts, tokens, max_attempt = pool.run("SELECT count(*), count(DISTINCT claim_token), max(attempt) FROM message_attempts")[
        0
    ]
    assert (attempts, max_attempt) == (10_000, 1)
    assert tokens >= 2


# -- 2. a consumer SIGKILLed mid-drain --------------------------------------------------------------


def test_a_consumer_killed_mid_drain_loses_nothing_and_duplicates_only_its_inflight_window(
    send_env, pool, sandbox, spawn, monkeypatch
):
    lease_s = 3
    concurrency = 200
    set_env(monkeypatch, LEASE_S=str(lease_s), CONSUMER_CONCURRENCY=str(concurrency))
    client = function_client("send")
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    total = 3_000
    to = numbers(total)
    status, body = post(client, tenant, to=to, text="Choir practice moved to 6")
    assert status == 202 and body["mode"] == "queued", body
    # ~200 requests in flight at any moment; the jitter keeps them from moving in lock-step rounds.
    sandbox.configure(latency_ms=150, jitter_ms=100)

    victim = spawn("victim")
    wait_for(lambda: sandbox.ledger.accepted >= 500 or not victim.running, timeout_s=60,
             what="the victim to get a few hundred messages accepted")  # fmt: skip
    assert victim.running, f"the consumer ended before it could be killed:\n{victim.output()[-3000:]}"
    victim.kill()
    killed_at = time.monotonic()

    # The dead process can send nothing more: what the carrier and PostgreSQL hold now is fixed.
    accepted_at_kill = sandbox.ledger.accepted
    assert sandbox.ledger.duplicates == 0
    stranded = {mid: crypto.unseal(to_enc, "address") for mid, to_enc in pool.run(
        "SELECT id::text, to_enc FROM messages WHERE status = 'sending'")}  # fmt: skip
    sent_at_kill = status_counts(pool).get("sent", 0)
    window = len(stranded)  # claimed by the victim, outcome never written: its in-flight requests
    accepted_unrecorded = accepted_at_kill - sent_at_kill  # the carrier has them, PostgreSQL does not know
    # What the dead process had in flight is what it claimed and never recorded: requests on the wire
    # plus answers not yet written (flushed every few ms). Each is at most one duplicate; the carrier
    # never has more than ``concurrency`` requests of one consumer at a time, and the answers waiting
    # for their write add at most about as many (a whole round of requests answered at once).
    assert 0 < window <= 2 * concurrency, window
    assert 0 <= accepted_unrecorded <= window

    finishers: list[ConsumerProcess] = []
    recovered_at: float | None = None
    deadline = killed_at + lease_s + 20  # the rest of the drain takes a few seconds; the leases run out in 3
    while True:
        done = status_counts(pool) == {"sent": total}
        if recovered_at is None:
            left = pool.run("SELECT count(*) FROM messages WHERE id = ANY(CAST(:ids AS uuid[])) AND status <> 'sent'",
                            ids=list(stranded))[0][0]  # fmt: skip
            if left == 0:
                recovered_at = time.monotonic()
        busy = bool(finishers) and finishers[-1].running
        if finishers and not busy:
            assert finishers[-1].proc.returncode == 0, f"{finishers[-1].name} crashed:\n{finishers[-1].output()[-3000:]}"
        if done and not busy:
            break
        if time.monotonic() > deadline:
            raise AssertionError(_stuck_after_kill(pool, finishers, time.monotonic() - killed_at))
        if not busy:  # a stop_when_idle round may end before the dead leases run out: start another
            finishers.append(spawn(f"finisher{len(finishers)}"))
        time.sleep(0.05)
    assert recovered_at is not None
    recovery_s = recovered_at - killed_at

    ledger = sandbox.ledger
    duplicated = {e.to for e in ledger.entries() if e.duplicate}
    figures = (f"duplicate window: {ledger.duplicates} duplicate(s) at the carrier; the killed consumer held "
               f"{window} message(s) claimed and unrecorded (concurrency {concurrency}), {accepted_unrecorded} of them "
               f"already accepted by the carrier ({sent_at_kill} recorded sent before the kill); "
               f"its stranded messages were all sent {recovery_s:.2f}s after the kill (lease {lease_s}s)")  # fmt: skip
    print("\n" + figures)
    assert status_counts(pool) == {"sent": total}
    assert ledger.unique == total and set(ledger.by_to()) == set(to)
    assert ledger.duplicates <= window, figures
    assert ledger.duplicates == accepted_unrecorded, figures
    assert duplicated <= set(stranded.values()), figures
    # Picked up again within seconds: after the lease ran out, not at some far later sweep.
    assert recovery_s < lease_s + 10, figures
    attempts = dict(pool.run("SELECT attempts, count(*) FROM messages WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY attempts",
                             ids=list(stranded)))  # fmt: skip
    assert attempts == {2: window}, attempts
    reports = [f.report() for f in finishers]
    assert sum(r["sent"] for r in reports) == total - sent_at_kill, reports


def _stuck_after_kill(pool: Pool, finishers: list[ConsumerProcess], since_kill_s: float) -> str:
    """Why the drain after a kill did not finish: which rows are stuck, and does Redis still hold them."""
    stuck = pool.run("SELECT id::text, lease_until < now() FROM messages WHERE status = 'sending'")
    expired = sum(1 for _, past in stuck if past)
    held = sum(get_runtime().queue.holds([mid for mid, _ in stuck])) if stuck else 0
    reports = [f.report() for f in finishers if not f.running]
    dequeued, claimed = sum(r["dequeued"] for r in reports), sum(r["claimed"] for r in reports)
    return (f"{since_kill_s:.1f}s after the kill {len(stuck)} message(s) are still 'sending' ({expired} with their "
            f"lease expired) and Redis holds {held} of them (finished consumers dequeued {dequeued} ids and claimed "
            f"{claimed}); statuses: {status_counts(pool)}")  # fmt: skip


# -- 3. Redis stopped for real ------------------------------------------------------------------------


def _health() -> dict[str, Any]:
    rebuild_singletons()  # the health function reads the environment at import, like a cold start
    response = function_client("health").get("/health")
    return dict(response.get_json())


def test_with_redis_killed_send_answers_at_once_inline_and_nothing_is_sent_twice_after(
    send_env, pool, sandbox, service_dir, monkeypatch
):
    private = RedisProcess(service_dir / "redis", persist=False).start()
    try:
        set_env(monkeypatch, **{constants.REDIS_URL_ENV: private.url})
        tenant = make_church(pool, sms_per_second=FAST_SENDER)
        assert _health()["status"] == "healthy"

        private.kill()
        health = _health()
        assert health["status"] == "degraded", health
        assert health["checks"]["redis"]["status"] != "ok" and health["checks"]["environment"]["sendMode"] == "inline"

        client = function_client("send")
        one = numbers(1, area="415")
        twenty = numbers(20, area="646")
        answers = {}
        for label, to in (("one", one[0]), ("twenty", twenty)):
            started = time.monotonic()
            status, body = post(client, tenant, to=to, text=f"Potluck Friday ({label})")
            elapsed = time.monotonic() - started
            assert status == 202, body
            assert elapsed < 2.0, f"send took {elapsed:.2f}s with Redis down"
            assert body["mode"] == "inline", body
            answers[label] = body
        assert [r["status"] for r in answers["one"]["recipients"]] == ["sent"]
        assert [r["status"] for r in answers["twenty"]["recipients"]] == ["sent"] * 20
        ledger = sandbox.ledger
        assert (ledger.accepted, ledger.unique, ledger.duplicates) == (21, 21, 0)
        assert set(ledger.by_to()) == set(one + twenty)
        assert status_counts(pool) == {"sent": 21}

        private.start()  # same port, empty (no persistence): the transport lost everything
        wait_for(lambda: _health()["status"] == "healthy", timeout_s=15, what="health to recover",
                 poll_s=0.2)  # fmt: skip
        # The worst case for "once": Redis hands consumers ids PostgreSQL already settled (a stale
        # copy, a reconcile that raced the inline send). The claim must refuse every one.
        rt = get_runtime()
        sent = [(mid, tenant.sender) for (mid,) in pool.run("SELECT id::text FROM messages")]
        rt.queue.enqueue(
            [QueueItem(message_id=mid, church_id=tenant.church_id, lane="bulk", sender=sender, channel="sms")
             for mid, sender in sent],
            {("sms", tenant.sender): SenderLimit(FAST_SENDER, int(FAST_SENDER // 10))},
        )  # fmt: skip
        reports = drain_until(lambda: rt.queue.depths().ready_bulk == 0 and rt.queue.depths().inflight == 0,
                              timeout_s=30, what="Redis is empty")  # fmt: skip
        assert sum(r.dequeued for r in reports) == 21
        assert sum(r.claimed for r in reports) == 0 and sum(r.sent for r in reports) == 0
        assert (ledger.accepted, ledger.duplicates) == (21, 0)
        assert status_counts(pool) == {"sent": 21}
        # And a send now goes through the queue again.
        status, body = post(client, tenant, to=numbers(1, area="718")[0], text="Back to normal")
        assert status == 202 and body["mode"] == "queued", body
        drain_until(lambda: status_counts(pool) == {"sent": 22}, timeout_s=30, what="the queued send is sent")
        assert (ledger.accepted, ledger.unique, ledger.duplicates) == (22, 22, 0)
    finally:
        private.kill()


def test_with_queues_disabled_send_is_inline_and_never_touches_redis(send_env, pool, sandbox, service_dir, monkeypatch):
    private = RedisProcess(service_dir / "redis", persist=False).start()
    observer = redis.Redis.from_url(private.url, decode_responses=True)
    try:
        set_env(monkeypatch, **{constants.REDIS_URL_ENV: private.url, constants.ENABLE_QUEUES_ENV: "false"})
        tenant = make_church(pool, sms_per_second=FAST_SENDER)
        before = observer.info("stats")["total_connections_received"]  # our own connection is already counted
        client = function_client("send")
        status, body = post(client, tenant, to=numbers(3, area="415"), text="Youth group tonight")
        assert status == 202 and body["mode"] == "inline", body
        assert [r["status"] for r in body["recipients"]] == ["sent"] * 3
        status, body = post(client, tenant, to=numbers(1, area="646")[0], text="Call me back")
        assert status == 202 and body["mode"] == "inline", body
        health = _health()
        assert health["status"] == "healthy" and health["checks"]["redis"]["status"] == "disabled", health
        assert observer.info("stats")["total_connections_received"] == before, "something connected to Redis"
        assert observer.dbsize() == 0
        assert sandbox.ledger.accepted == 4 and sandbox.ledger.duplicates == 0
        assert status_counts(pool) == {"sent": 4}
    finally:
        observer.close()
        private.kill()


# -- 4. fairness ------------------------------------------------------------------------------------


def _time_to_carrier(pool: Pool, sandbox: Sandbox, message_id: str, to: str, accepted_at: float) -> tuple[float, int]:
    """Seconds from ``accepted_at`` (epoch, the 202) to the carrier's ``received_at``; and the ledger
    position of that entry (how many requests the carrier had accepted before it)."""
    wait_for(lambda: pool.run("SELECT status FROM messages WHERE id = CAST(:id AS uuid)", id=message_id)[0][0] in FINAL,
             timeout_s=30, what=f"message to {to} to be settled", poll_s=0.01)  # fmt: skip
    entries = sandbox.ledger.entries()
    [(position, entry)] = [(i, e) for i, e in enumerate(entries) if e.to == to]
    return received_ms(entry) / 1000 - accepted_at, position


def test_a_20000_message_backlog_does_not_hold_up_another_churchs_message(client, pool, sandbox, spawn):
    backlog = 20_000
    big = make_church(pool, "Big Church", sender="+13125550100", sms_per_second=FAST_SENDER)
    add_members(pool, big, numbers(backlog, area="212"))
    small = make_church(pool, "Small Church", sender="+13125550101", sms_per_second=FAST_SENDER)
    # A third church whose one recipient comes from a group: that is the bulk lane, the same lane as
    # the backlog, so only the round-robin across churches (not conv-before-bulk) can serve it early.
    grouped = make_church(pool, "Grouped Church", sender="+13125550102", sms_per_second=FAST_SENDER,
                          members=numbers(1, area="646"))  # fmt: skip
    sandbox.configure(latency_ms=50)

    status, body = post(client, big, groups=[big.group_id], text="Christmas Eve services at 5, 7 and 11")
    assert status == 202 and body["mode"] == "queued" and body["counts"]["accepted"] == backlog, body
    consumer = spawn("fair", max_seconds=90)
    wait_for(lambda: sandbox.ledger.accepted > 1_000 or not consumer.running, timeout_s=60,
             what="the backlog's drain to be underway")  # fmt: skip
    assert consumer.running, consumer.output()[-3000:]

    figures = []
    for tenant, payload, lane in (
        (small, {"to": numbers(1, area="415")[0]}, "conv"),
        (grouped, {"groups": [grouped.group_id]}, "bulk"),
    ):
        before = time.time()
        status, body = post(client, tenant, text="Can you drive Mrs. Lee on Sunday?", **payload)
        accepted_at = time.time()
        assert status == 202 and body["mode"] == "queued", body
        [recipient] = body["recipients"]
        latency_s, position = _time_to_carrier(pool, sandbox, recipient["message_id"], recipient["to"], accepted_at)
        big_left = backlog - sum(1 for e in sandbox.ledger.entries()[:position] if e.from_ == big.sender)
        figures.append(f"{lane} lane: 202 -> carrier {latency_s * 1000:.0f} ms (request took "
                       f"{(accepted_at - before) * 1000:.0f} ms), {big_left} of the backlog still waiting")  # fmt: skip
        print(f"\nfairness, {figures[-1]}")
        assert consumer.running, "the backlog drained before the measurement; it proves nothing"
        assert big_left > 5_000, figures[-1]  # FIFO would have made it wait for all of these
        assert latency_s < 2.0, figures[-1]
    assert sandbox.ledger.duplicates == 0
    consumer.kill()


# -- 5. sender throughput -----------------------------------------------------------------------------


def test_a_10_mps_number_never_exceeds_its_rate_at_the_carrier(client, pool, sandbox):
    rate = 10
    burst = max(1, rate // 10)
    tenant = make_church(pool, sms_per_second=rate)
    status, body = post(client, tenant, to=numbers(40), text="Food pantry volunteers needed Saturday")
    assert status == 202 and body["mode"] == "queued", body
    drain_until(lambda: status_counts(pool) == {"sent": 40}, timeout_s=30, what="all 40 are sent")

    times = sorted(received_ms(e) for e in sandbox.ledger.entries())
    assert len(times) == 40 and sandbox.ledger.duplicates == 0
    # Most requests in any window [t, t + 1 s) that starts at a request.
    busiest = max(bisect.bisect_left(times, t + 1000) - i for i, t in enumerate(times))
    span_s = (times[-1] - times[0]) / 1000
    print(f"\nsender at {rate}/s: busiest 1-second window held {busiest}, 40 messages took {span_s:.2f}s")
    assert busiest <= rate + burst, f"{busiest} requests within one second (limit {rate} + burst {burst})"
    assert span_s >= 3.0, span_s


# -- 6. carrier faults through the consumer ---------------------------------------------------------


def test_carrier_faults_end_in_the_right_status_with_their_history(client, pool, sandbox):
    flaky, blocked, invalid, fine = numbers(4, area="415")
    sandbox.configure(rules={flaky: "fail_first:2", blocked: "blocked", invalid: "invalid"})
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    status, body = post(client, tenant, to=[flaky, blocked, invalid, fine], text="Bible study is on Zoom")
    assert status == 202 and body["mode"] == "queued", body
    ids = {r["to"]: r["message_id"] for r in body["recipients"]}

    def settled() -> bool:
        return set(status_counts(pool)) <= FINAL

    drain_until(settled, timeout_s=30, what="every message is settled")

    def row(to: str) -> tuple[str, int, str | None]:
        status, attempts, code = pool.run(
            "SELECT status, attempts, last_error_code FROM messages WHERE id = CAST(:id AS uuid)", id=ids[to]
        )[0]
        return status, attempts, code

    def history(to: str) -> list[tuple[int, str, str | None, int | None, datetime]]:
        return [tuple(r) for r in pool.run(
            "SELECT attempt, outcome, error_code, http_status, finished_at FROM message_attempts"
            " WHERE message_id = CAST(:id AS uuid) ORDER BY attempt", id=ids[to])]  # fmt: skip

    # 503 twice, then accepted: sent on attempt 3, and each retry waited out its backoff.
    assert row(flaky)[:2] == ("sent", 3)
    flaky_history = history(flaky)
    assert [(a, o) for a, o, *_ in flaky_history] == [(1, "retry"), (2, "retry"), (3, "sent")], flaky_history
    assert [h for _, _, _, h, _ in flaky_history][:2] == [503, 503], flaky_history
    gaps = [(b[4] - a[4]).total_seconds() for a, b in itertools.pairwise(flaky_history)]
    shortest = [default_policy.base_s * 2**n * (1 - default_policy.jitter) for n in range(2)]  # 0.8 s, 1.6 s
    print(f"\nfail_first:2 -> attempts finished {', '.join(f'{g:.2f}s' for g in gaps)} apart (backoff at least "
          f"{', '.join(f'{w:.1f}s' for w in shortest)})")  # fmt: skip
    assert all(gap >= low - 0.05 for gap, low in zip(gaps, shortest, strict=True)), (gaps, shortest)

    # 40300 STOP: suppressed at once, never retried, and the opt-out recorded for every later send.
    assert row(blocked) == ("suppressed", 1, "40300")
    assert [(a, o, c) for a, o, c, *_ in history(blocked)] == [(1, "opted_out", "40300")]
    blocked_hash = crypto.lookup_hash(tenant.church_id, blocked)
    [[source, sealed]] = pool.run(
        "SELECT source, address_enc FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND address_hash = :h AND channel = 'sms'",
        c=tenant.church_id, h=blocked_hash)  # fmt: skip
    assert source == "carrier_40300" and crypto.unseal(sealed, "address") == blocked
    assert pool.run("SELECT action, source FROM opt_out_events WHERE address_hash = :h",
                    h=blocked_hash) == [["opt_out", "carrier_40300"]]  # fmt: skip

    # 400 / 40310: permanent, one attempt, failed.
    assert row(invalid) == ("failed", 1, "40310")
    assert [(a, o, c, h) for a, o, c, h, _ in history(invalid)] == [(1, "failed", "40310", 400)]

    assert row(fine)[:2] == ("sent", 1)
    ledger = sandbox.ledger
    assert ledger.by_to() == {flaky: 1, fine: 1}
    assert ledger.by_code() == {"10007": 2, "40300": 1, "40310": 1}
    attempts_so_far = ledger.attempts
    assert attempts_so_far == 6  # 3 to flaky, 1 each to the others

    # Later sends to the opted-out number never reach the carrier.
    status, refused = post(client, tenant, to=blocked, text="Are you coming?")
    assert status == 422 and refused["error"]["code"] == "recipients_opted_out", refused
    other = numbers(1, area="718")[0]
    status, body = post(client, tenant, to=[blocked, other], text="Are you coming?")
    assert status == 202, body
    assert {r["to"]: r["status"] for r in body["recipients"]} == {blocked: "suppressed", other: "queued"}
    drain_until(lambda: status_counts(pool).get("queued", 0) == 0 and settled(), timeout_s=30, what="the later send")
    assert ledger.attempts == attempts_so_far + 1
    assert ledger.by_to() == {flaky: 1, fine: 1, other: 1}
    assert ledger.by_code()["40300"] == 1
