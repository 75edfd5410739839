"""Retries, deadlines and restarts of the transport and the truth, with the faults made real.

What is proved here, against real PostgreSQL, real Redis and the Telnyx sandbox:

- a carrier failing 30% of requests (5xx, fixed seed): 300 messages all end ``sent``, every stored
  retry gap follows the backoff schedule (1 s x 2^(n-1), up to 20% taken off), and no retry reached the
  carrier before its stored ``next_attempt_at``;
- PostgreSQL restarted in the middle of a 2,000-message drain by a consumer process: nothing lost,
  duplicates at the carrier bounded by the consumer's concurrency (counted and printed);
- PostgreSQL away for a few seconds (longer than a third of the lease, when the consumer renews its
  leases): the consumer waits it out as it does a restart;
- Redis restarted empty in the middle of a drain: the scheduler's reconcile brings every message back,
  nothing lost, duplicates bounded by the consumer's concurrency (counted and printed);
- a message past its deadline expires instead of being sent, and a retry that would fall after the
  deadline expires; ``GET /messages/{id}`` shows the church why.

No sleeps stand in for synchronisation: every wait is a condition polled under a deadline (the one
``time.sleep`` is the length of an outage, the fault itself).

Where the attempt started: ``message_attempts.started_at`` cannot say. The row is inserted by the
outcome write (``RECORD_OUTCOMES_SQL``), so ``started_at`` (DEFAULT now()) is the same instant as
``finished_at``. The moment each attempt reached the carrier is taken from the carrier itself: the
in-process sandbox's fault decision, made once per valid request on arrival, is wrapped to note
(to, arrival time, fault). That is the carrier's own clock on this machine, the same system clock
PostgreSQL and the consumer use.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from common import constants
from common.config import parse_database_url
from common.consume import ConsumeBudget, run_consumer
from common.db.migrate import migrate
from common.db.pool import Pool
from common.privacy import crypto
from common.retry_policy import default_policy
from common.runtime import get_runtime
from common.scheduler import Scheduler, reconcile_grace_s
from infra.embedded import PostgresProcess, RedisProcess
from infra.telnyx_sandbox import Sandbox
from tests.factories import make_church, numbers
from tests.helpers import function_client, with_database
from tests.test_pipeline_faults import (
    FAST_SENDER,
    ConsumerProcess,
    drain_until,
    post,
    set_env,
    status_counts,
    wait_for,
)

CONCURRENCY = 200  # CONSUMER_CONCURRENCY's default; the consumer processes here run with it


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start consumer processes (env: this test's at call time); every one is killed at teardown."""
    started: list[ConsumerProcess] = []

    def start(name: str, *, max_seconds: float = 60.0) -> ConsumerProcess:
        env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        process = ConsumerProcess(name, tmp_path, env, max_seconds)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


class CarrierArrivals:
    """Every valid send request the sandbox saw: (to, arrival time, fault or None), in arrival order."""

    def __init__(self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self.by_to: dict[str, list[tuple[datetime, str | None]]] = defaultdict(list)
        engine = sandbox.app.faults
        decide = engine.decide

        def noted(config: Any, to: str) -> Any:
            arrived = datetime.now(UTC)
            fault, seen = decide(config, to)
            with self._lock:
                self.by_to[to].append((arrived, None if fault is None else fault.value))
            return fault, seen

        monkeypatch.setattr(engine, "decide", noted)


def ledger_duplicates(sandbox: Sandbox) -> tuple[int, list[str]]:
    entries = sandbox.ledger.entries()
    return sum(1 for e in entries if e.duplicate), sorted({e.to for e in entries if e.duplicate})


def consumer_finished(consumer: ConsumerProcess, timeout_s: float) -> dict[str, Any]:
    code = consumer.wait(timeout_s)
    assert code == 0, f"consumer {consumer.name} exited {code}:\n{consumer.output()[-4000:]}"
    return consumer.report()


def warnings(consumer: ConsumerProcess) -> dict[str, int]:
    """The consumer's warning lines by message: how it felt the fault."""
    found: Counter[str] = Counter()
    for line in consumer.output().splitlines():
        if '"level": "WARNING"' in line or '"level": "ERROR"' in line:
            found[json.loads(line)["msg"]] += 1
    return dict(found)


def unrecorded_attempts(pool: Pool) -> set[str]:
    """Numbers of messages with a claimed attempt whose outcome was never written: ``messages.attempts``
    counts claims, ``message_attempts`` holds a row per recorded outcome."""
    rows = pool.run(
        "SELECT m.to_enc FROM messages m"
        " WHERE m.attempts > (SELECT count(*) FROM message_attempts a WHERE a.message_id = m.id)"
    )
    return {crypto.unseal(to_enc, "address") for (to_enc,) in rows}


def later() -> datetime:
    """A 'now' past the reconcile grace for rows accepted just now."""
    return datetime.now(UTC) + timedelta(seconds=reconcile_grace_s + 3)


# -- 1. 30% 5xx: every message sent, every gap on schedule ------------------------------------------


def test_with_30_percent_5xx_all_300_are_sent_and_every_retry_waits_its_backoff(send_env, pool, sandbox, monkeypatch):
    sandbox.configure(rate_5xx=0.3, seed=20261206)
    arrivals = CarrierArrivals(sandbox, monkeypatch)
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    to = numbers(300)
    status, body = post(function_client("send"), tenant, to=to, max_attempts=10, text="Advent service at 10am")
    assert status == 202 and body["mode"] == "queued" and body["counts"]["accepted"] == 300, body

    drain_until(lambda: status_counts(pool) == {"sent": 300}, timeout_s=100, what="all 300 are sent")

    ledger = sandbox.ledger
    assert (ledger.accepted, ledger.unique, ledger.duplicates) == (300, 300, 0)
    assert set(ledger.by_to()) == set(to)
    rows = pool.run(
        "SELECT m.to_enc, a.attempt, a.outcome, a.http_status, a.started_at, a.finished_at, a.next_attempt_at,"
        "       m.attempts"
        " FROM message_attempts a JOIN messages m ON m.id = a.message_id ORDER BY m.id, a.attempt"
    )
    history: dict[str, list[list[Any]]] = defaultdict(list)
    for row in rows:
        history[crypto.unseal(row[0], "address")].append(row)
    assert set(history) == set(to)

    # next_attempt_at = t + wait, where t is when the consumer read the carrier's answer: after the request
    # reached the carrier (arrival) and before PostgreSQL's now() of the outcome write (finished_at). So the
    # stored gap (next_attempt_at - finished_at) is the wait less the write's lag, which grows with the
    # machine's load; so only lag-free checks bracket it: next_attempt_at - arrival >= the shortest wait, and
    # the stored gap <= the longest. clock_s: one system clock, Redis scores in whole milliseconds.
    clock_s = 0.005
    gaps: dict[int, list[float]] = defaultdict(list)
    waits: list[float] = []  # carrier arrival of attempt n+1 minus next_attempt_at of attempt n
    lags: list[float] = []  # carrier arrival of attempt n to its outcome's finished_at
    same_instant = 0
    for phone, attempts in history.items():
        carrier = arrivals.by_to[phone]
        # One carrier request per attempt (5xx faults are never accepted), in attempt order.
        assert [a[1] for a in attempts] == list(range(1, len(attempts) + 1)), attempts
        assert len(carrier) == len(attempts) == attempts[-1][7], (phone, carrier, attempts)
        assert [a[2] for a in attempts] == ["retry"] * (len(attempts) - 1) + ["sent"], attempts
        assert [("retry" if f == "5xx" else "sent") for _, f in carrier] == [a[2] for a in attempts], (carrier, attempts)
        assert all(a[3] == 500 for a in attempts[:-1]) and attempts[-1][6] is None, attempts
        for (n, _o, _h, started, finished, next_at), (arrived, _f), (arrived_next, _g) in zip(
            [a[1:7] for a in attempts[:-1]], carrier[:-1], carrier[1:], strict=True
        ):
            full = default_policy.base_s * 2 ** (n - 1)
            shortest = full * (1 - default_policy.jitter)
            gap = (next_at - finished).total_seconds()
            gaps[n].append(gap)
            lags.append((finished - arrived).total_seconds())
            assert gap <= full + clock_s, (phone, n, gap, attempts)
            assert (next_at - arrived).total_seconds() >= shortest - clock_s, (phone, n, arrived, attempts)
            wait = (arrived_next - next_at).total_seconds()
            waits.append(wait)
            assert wait >= -clock_s, f"attempt {n + 1} to {phone} reached the carrier {-wait:.3f}s before its time"
            same_instant += started == finished

    retried = sum(1 for a in history.values() if len(a) > 1)
    spread = ", ".join(f"n={n}: {len(g)} gaps in [{min(g):.3f}, {max(g):.3f}]s" for n, g in sorted(gaps.items()))
    print(f"\n30% 5xx: 300 sent, {retried} retried, {ledger.attempts} carrier requests, attempts per message "
          f"{dict(sorted(Counter(len(a) for a in history.values()).items()))}; stored gaps {spread}; "
          f"retry reached the carrier {min(waits) * 1000:.1f} to {max(waits) * 1000:.0f} ms after next_attempt_at; "
          f"carrier arrival to finished_at {min(lags) * 1000:.0f} to {max(lags) * 1000:.0f} ms; "
          f"message_attempts.started_at == finished_at in {same_instant} of {len(waits)} retried attempts")  # fmt: skip
    assert retried >= 60  # ~30% of 300: the faults really happened
    assert max(gaps) >= 3  # and some messages went through at least three backoff steps


# -- 2. PostgreSQL restarted mid-drain -----------------------------------------------------------


@pytest.fixture
def own_postgres(send_env, service_dir, monkeypatch) -> Iterator[tuple[PostgresProcess, Pool]]:
    """A PostgreSQL server of this test's own (that it may restart), migrated, pointed at by DATABASE_URL."""
    server = PostgresProcess(service_dir / "pg").start()
    admin = Pool(parse_database_url(server.url))
    name = f"kr_{uuid.uuid4().hex[:12]}"
    admin.run(f'CREATE DATABASE "{name}"')
    admin.close()
    url = with_database(server.url, name)
    pool = Pool(parse_database_url(url))
    migrate(pool, progress=lambda _line: None)
    set_env(monkeypatch, **{constants.DATABASE_URL_ENV: url})
    try:
        yield server, pool
    finally:
        pool.close()
        server.stop()


def finish_drain(pool: Pool, total: int, *, timeout_s: float) -> Scheduler:
    """Scheduler passes (promote, reclaim, reconcile) and consumer rounds until all ``total`` are sent."""
    scheduler = Scheduler(get_runtime())

    def done() -> bool:
        scheduler.one_pass()
        return status_counts(pool) == {"sent": total}

    drain_until(done, timeout_s=timeout_s, what=f"all {total} are sent")
    return scheduler


def test_postgres_restarted_mid_drain_loses_nothing_and_duplicates_only_unrecorded_outcomes(
    own_postgres, sandbox, spawn, monkeypatch
):
    server, pool = own_postgres
    lease_s = 5  # a claim whose answer the restart swallowed is taken over after this, not after 30 s
    set_env(monkeypatch, LEASE_S=str(lease_s))
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    total = 2_000
    to = numbers(total)
    status, body = post(function_client("send"), tenant, to=to, max_attempts=10, text="Prayer chain: pray for the Lees")
    assert status == 202 and body["mode"] == "queued" and body["counts"]["accepted"] == total, body
    sandbox.configure(latency_ms=20)

    consumer = spawn("pg-restart", max_seconds=60)
    wait_for(lambda: sandbox.ledger.accepted >= 300 or not consumer.running, timeout_s=60,
             what="a few hundred messages accepted by the carrier")  # fmt: skip
    assert consumer.running, f"the consumer ended before the restart:\n{consumer.output()[-3000:]}"
    before = sandbox.ledger.accepted
    restart_started = time.monotonic()
    server.restart()
    restart_s = time.monotonic() - restart_started
    at_restart_end = sandbox.ledger.accepted
    assert at_restart_end < total, "the drain finished before PostgreSQL went away; the restart proves nothing"

    report = consumer_finished(consumer, 90)
    felt = warnings(consumer)
    assert felt, f"the consumer never noticed the restart:\n{consumer.output()[-3000:]}"
    sent_by_consumer = status_counts(pool).get("sent", 0)
    finish_drain(pool, total, timeout_s=60)

    ledger = sandbox.ledger
    duplicates, duplicated = ledger_duplicates(sandbox)
    unrecorded = unrecorded_attempts(pool)
    figures = (f"PostgreSQL restart ({restart_s:.2f}s) after {before} accepted ({at_restart_end} when it was back): "
               f"{duplicates} duplicate(s) at the carrier (concurrency {CONCURRENCY}), {len(unrecorded)} message(s) with an "
               f"attempt whose outcome was never written; the consumer logged {felt}; "
               f"its report {report}; {sent_by_consumer} sent by it, the rest by the finishing rounds")  # fmt: skip
    print("\n" + figures)
    assert status_counts(pool) == {"sent": total}
    assert ledger.unique == total and set(ledger.by_to()) == set(to), figures
    assert duplicates <= CONCURRENCY, figures
    # A duplicate is a message sent again after an attempt whose outcome was never written.
    assert set(duplicated) <= unrecorded, figures


def test_postgres_away_longer_than_a_third_of_the_lease_the_consumer_waits_it_out(own_postgres, sandbox, spawn, monkeypatch):
    """Not a restart but a short outage (failover, network): longer than the consumer's lease-renewal
    period (lease_s / 3), shorter than the lease. The consumer should wait it out, as it does a restart."""
    server, pool = own_postgres
    lease_s = 3.0
    outage_s = 2.0  # > lease_s / 3 (renewal is due while PostgreSQL is away), < lease_s (no lease runs out)
    set_env(monkeypatch, LEASE_S=f"{lease_s:g}")
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    total = 2_000
    to = numbers(total)
    status, body = post(function_client("send"), tenant, to=to, max_attempts=10, text="Youth retreat forms due")
    assert status == 202 and body["mode"] == "queued", body
    sandbox.configure(latency_ms=20)

    consumer = spawn("pg-outage", max_seconds=60)
    wait_for(lambda: sandbox.ledger.accepted >= 300 or not consumer.running, timeout_s=60,
             what="a few hundred messages accepted by the carrier")  # fmt: skip
    assert consumer.running, f"the consumer ended before the outage:\n{consumer.output()[-3000:]}"
    before = sandbox.ledger.accepted
    server.stop()
    time.sleep(outage_s)  # the fault itself: PostgreSQL stays away this long (not a wait for anything)
    server.start()

    exit_code = consumer.wait(90)
    felt = warnings(consumer)
    tail = consumer.output()[-2500:]
    finish_drain(pool, total, timeout_s=60)
    duplicates, duplicated = ledger_duplicates(sandbox)
    unrecorded = unrecorded_attempts(pool)
    figures = (f"PostgreSQL away {outage_s:g}s (lease {lease_s:g}s) after {before} accepted: {duplicates} duplicate(s) "
               f"at the carrier, {len(unrecorded)} message(s) with an attempt whose outcome was never written; consumer "
               f"exit code {exit_code}, logged {felt}")  # fmt: skip
    print("\n" + figures)
    assert status_counts(pool) == {"sent": total}
    assert sandbox.ledger.unique == total and set(sandbox.ledger.by_to()) == set(to), figures
    assert duplicates <= CONCURRENCY and set(duplicated) <= unrecorded, figures
    assert exit_code == 0, f"the consumer gave up while PostgreSQL was away:\n{tail}"


# -- 3. Redis restarted empty mid-drain ------------------------------------------------------------


@pytest.fixture
def own_redis(send_env, service_dir, monkeypatch) -> Iterator[RedisProcess]:
    """A Redis of this test's own (that it may kill), pointed at by REDIS_URL."""
    server = RedisProcess(service_dir / "redis", persist=False).start()
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: server.url})
    yield server
    server.kill()


def redis_run_id(server: RedisProcess) -> str:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def test_redis_restarted_empty_mid_drain_loses_nothing_and_duplicates_only_inflight_sends(
    send_env, own_redis, pool, sandbox, spawn, monkeypatch
):
    lease_s = 5
    set_env(monkeypatch, LEASE_S=str(lease_s))
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    total = 2_000
    to = numbers(total)
    status, body = post(function_client("send"), tenant, to=to, max_attempts=10, text="Choir at 6, not 7")
    assert status == 202 and body["mode"] == "queued" and body["counts"]["accepted"] == total, body
    sandbox.configure(latency_ms=20)

    consumer = spawn("redis-restart", max_seconds=30)
    wait_for(lambda: sandbox.ledger.accepted >= 300 or not consumer.running, timeout_s=60,
             what="a few hundred messages accepted by the carrier")  # fmt: skip
    assert consumer.running, f"the consumer ended before the restart:\n{consumer.output()[-3000:]}"
    before = sandbox.ledger.accepted
    run_id = redis_run_id(own_redis)
    own_redis.kill()  # a crash: everything Redis held (ready ids, leases, delayed retries) is gone
    own_redis.start()
    after = sandbox.ledger.accepted
    assert redis_run_id(own_redis) != run_id  # a new server, started empty (no persistence)
    assert after < total, "the drain finished before Redis went away; the restart proves nothing"

    exit_code = consumer.wait(90)
    felt = warnings(consumer)
    crash = "" if exit_code == 0 else consumer.output()[-2500:]
    report = consumer.report() if exit_code == 0 else f"none (exit code {exit_code})"
    pending = sum(n for s, n in status_counts(pool).items() if s != "sent")
    assert pending > 0, "nothing was left for the reconcile: Redis lost nothing that mattered"
    scheduler = Scheduler(get_runtime())
    reconciled = scheduler.reconcile(now=later())
    finish_drain(pool, total, timeout_s=60)

    ledger = sandbox.ledger
    duplicates, duplicated = ledger_duplicates(sandbox)
    unrecorded = unrecorded_attempts(pool)
    figures = (f"Redis restarted empty after {before} accepted ({after} when it was back): {pending} not yet sent "
               f"when the consumer ended, reconcile re-enqueued {reconciled}; {duplicates} duplicate(s) at the carrier "
               f"(concurrency {CONCURRENCY}), {len(unrecorded)} message(s) with an attempt whose outcome was never "
               f"written; the consumer logged {felt}; its report {report}")  # fmt: skip
    print("\n" + figures)
    assert reconciled > 0, figures
    assert status_counts(pool) == {"sent": total}
    assert ledger.unique == total and set(ledger.by_to()) == set(to), figures
    assert duplicates <= CONCURRENCY, figures
    assert set(duplicated) <= unrecorded, figures
    # Checked last, so the figures above are measured whatever happens: the consumer must ride out a
    # Redis restart (its leases and the ready queue are rebuilt from PostgreSQL), not crash with its
    # sends in flight (a crash leaves their outcomes unwritten: each is a duplicate after the lease).
    assert exit_code == 0, f"the consumer crashed when Redis restarted:\n{crash}"


# -- 4. deadlines ---------------------------------------------------------------------------------


def test_past_its_deadline_a_message_expires_instead_of_being_sent_and_the_church_sees_why(send_env, pool, sandbox):
    late, doomed, fine = numbers(3, area="415")
    sandbox.configure(rules={doomed: "fail_first:99"})
    tenant = make_church(pool, sms_per_second=FAST_SENDER)
    send = function_client("send")
    status, body = post(send, tenant, to=[late, doomed, fine], deadline_s=60, max_attempts=10, text="Vigil at 9")
    assert status == 202 and body["mode"] == "queued", body
    ids = {r["to"]: r["message_id"] for r in body["recipients"]}

    def row(to: str) -> list[Any]:
        return list(pool.run("SELECT status, last_error_code, attempts, next_attempt_at, deadline_at, finalized_at"
                             " FROM messages WHERE id = CAST(:id AS uuid)", id=ids[to])[0])  # fmt: skip

    def history(to: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in pool.run(
            "SELECT attempt, outcome, error_code, next_attempt_at FROM message_attempts"
            " WHERE message_id = CAST(:id AS uuid) ORDER BY attempt", id=ids[to])]  # fmt: skip

    # (a) Already past its deadline when a consumer gets to it: expired by the claim, never sent.
    pool.run("UPDATE messages SET deadline_at = now() - interval '1 second' WHERE id = CAST(:id AS uuid)", id=ids[late])
    # (b) The first attempt fails (503) and schedules a retry ~1 s later, before the 60 s deadline.
    # One round that takes the three ids off the queue once (and so makes exactly one attempt each).
    report = asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_messages=3, max_seconds=20)))
    assert (report.dequeued, report.expired, report.sent, report.retrying) == (3, 1, 1, 1), report
    assert (row(late)[0], row(doomed)[0], row(fine)[0]) == ("expired", "retrying", "sent")
    _, _, attempts, retry_at, _, _ = row(doomed)
    assert attempts == 1 and history(doomed)[0][:3] == (1, "retry", "10007"), history(doomed)
    # Now the deadline moves to 1.5 s after that retry: attempt 2 runs (due before the deadline) and
    # fails again, and its own retry (at least 1.6 s after it) would fall after the deadline.
    pool.run("UPDATE messages SET deadline_at = CAST(:at AS timestamptz) WHERE id = CAST(:id AS uuid)",
             at=retry_at + timedelta(seconds=1.5), id=ids[doomed])  # fmt: skip
    drain_until(lambda: row(doomed)[0] not in ("retrying", "sending", "queued"), timeout_s=20, what="attempt 2")

    status_a, code_a, attempts_a, _, _, finalized_a = row(late)
    assert (status_a, code_a, attempts_a) == ("expired", "deadline_passed", 0)
    assert finalized_a is not None and history(late) == []
    status_b, code_b, attempts_b, next_b, deadline_b, finalized_b = row(doomed)
    assert (status_b, code_b, attempts_b, next_b) == ("expired", "10007", 2, None), row(doomed)
    assert finalized_b is not None
    assert [h[:3] for h in history(doomed)] == [(1, "retry", "10007"), (2, "retry", "10007")], history(doomed)
    assert history(doomed)[1][3] is None  # no further attempt was scheduled

    # The carrier never saw the late one, and saw the doomed one twice (both refused): nothing accepted.
    ledger = sandbox.ledger
    assert ledger.by_to() == {fine: 1}
    assert ledger.by_code() == {"10007": 2} and ledger.attempts == 3
    # Nothing comes back later: a scheduler pass finds nothing due, a consumer round nothing to send.
    scheduler = Scheduler(get_runtime())
    assert scheduler.reconcile(now=later()) == 0
    drain_until(lambda: True, timeout_s=5, what="nothing")
    assert ledger.attempts == 3

    # The church sees why, through the read API.
    seen = {to: send.get(f"/messages/{ids[to]}", headers=tenant.auth) for to in (late, doomed, fine)}
    assert all(r.status_code == 200 for r in seen.values())
    views = {to: r.get_json() for to, r in seen.items()}
    assert (views[late]["status"], views[late]["error_code"], views[late]["attempts"]) == ("expired", "deadline_passed", 0)
    assert (views[doomed]["status"], views[doomed]["error_code"], views[doomed]["attempts"]) == ("expired", "10007", 2)
    assert views[late]["sent_at"] is None and views[doomed]["sent_at"] is None
    assert views[late]["finalized_at"] and views[doomed]["finalized_at"]
    assert views[fine]["status"] == "sent"
    print(f"\ndeadline: past deadline -> {views[late]['status']}/{views[late]['error_code']}, "
          f"retry after deadline -> {views[doomed]['status']}/{views[doomed]['error_code']} "
          f"(deadline {deadline_b.isoformat()}, {attempts_b} attempts)")  # fmt: skip
