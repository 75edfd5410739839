"""retry-scheduler against real PostgreSQL, Redis (ours to kill) and the sandbox."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from common import constants
from common.consume import ConsumeBudget, run_consumer
from common.runtime import get_runtime
from common.scheduler import Scheduler
from infra.embedded import RedisProcess
from tests.factories import make_church, numbers
from tests.helpers import function_client, rebuild_singletons


def drain(max_seconds: float = 30.0):
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=max_seconds, stop_when_idle=True)))


@pytest.fixture
def own_redis(send_env, service_dir, monkeypatch):
    """A Redis of this test's own, pointed at by REDIS_URL, that the test may kill."""
    server = RedisProcess(service_dir / "redis", persist=False).start()
    monkeypatch.setenv(constants.REDIS_URL_ENV, server.url)
    rebuild_singletons()
    yield server
    server.stop()
    rebuild_singletons()


def _statuses(pool) -> dict[str, int]:
    return {s: n for s, n in pool.run("SELECT status, count(*) FROM messages GROUP BY status")}


def test_redis_restarted_empty_loses_nothing_and_sends_nothing_twice(own_redis, pool, sandbox):
    tenant = make_church(pool)
    send = function_client("send")
    response = send.post("/messages", json={"channel": "sms", "to": numbers(300), "text": "x"}, headers=tenant.auth)
    assert response.status_code == 202 and response.get_json()["mode"] == "queued"
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_messages=100, max_seconds=30, stop_when_idle=True)))
    assert sandbox.ledger.accepted == 100
    own_redis.kill()  # everything Redis held is gone: 200 queued ids
    own_redis.start()
    assert get_runtime().queue.depths().ready_bulk == 0
    scheduler = Scheduler(get_runtime())
    assert scheduler.reconcile(now=_later()) == 200
    drain()
    assert _statuses(pool) == {"sent": 300}
    assert sandbox.ledger.accepted == 300 and sandbox.ledger.duplicates == 0


def test_two_schedulers_at_once_never_double_enqueue_or_double_send(own_redis, pool, sandbox):
    tenant = make_church(pool)
    send = function_client("send")
    send.post("/messages", json={"channel": "sms", "to": numbers(500), "text": "x"}, headers=tenant.auth)
    own_redis.kill()
    own_redis.start()
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def one() -> None:
        scheduler = Scheduler(get_runtime())
        barrier.wait()
        counts.append(scheduler.reconcile(now=_later()))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    depths = get_runtime().queue.depths()
    assert depths.ready_bulk == 500  # each id held once, whichever scheduler put it there
    drain()
    assert sandbox.ledger.accepted == 500 and sandbox.ledger.duplicates == 0


def test_with_redis_down_the_scheduler_sends_due_messages_inline(own_redis, pool, sandbox, monkeypatch):
    tenant = make_church(pool)
    own_redis.kill()
    send = function_client("send")
    monkeypatch.setenv("INLINE_BUDGET_S", "0.001")  # send's own inline pass gets no time: the scheduler must do it
    rebuild_singletons()
    body = send.post("/messages", json={"channel": "sms", "to": numbers(20), "text": "x"}, headers=tenant.auth).get_json()
    assert body["mode"] == "inline"
    left = _statuses(pool).get("queued", 0)
    assert left > 0
    monkeypatch.setenv("INLINE_BUDGET_S", "10")
    rebuild_singletons()
    scheduler = Scheduler(get_runtime())
    scheduler.one_pass()
    assert scheduler.report.inline_passes == 1
    assert _statuses(pool) == {"sent": 20}
    assert sandbox.ledger.accepted == 20 and sandbox.ledger.duplicates == 0


def test_two_schedulers_inline_at_once_send_each_message_once(own_redis, pool, sandbox, monkeypatch):
    tenant = make_church(pool)
    monkeypatch.setenv(constants.ENABLE_QUEUES_ENV, "false")
    monkeypatch.setenv("INLINE_BUDGET_S", "0.001")
    rebuild_singletons()
    function_client("send").post("/messages", json={"channel": "sms", "to": numbers(60), "text": "x"}, headers=tenant.auth)
    monkeypatch.setenv("INLINE_BUDGET_S", "10")
    rebuild_singletons()
    sandbox.configure(latency_ms=20)
    barrier = threading.Barrier(2)

    def one() -> None:
        scheduler = Scheduler(get_runtime())
        barrier.wait()
        scheduler.one_pass()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _statuses(pool) == {"sent": 60}
    assert sandbox.ledger.accepted == 60 and sandbox.ledger.duplicates == 0


def test_retry_scheduler_function_runs_for_its_budget(send_env, pool):
    client = function_client("retry-scheduler")
    response = client.post("/events", json={"budget_s": 0.3})
    assert response.status_code == 200
    report = response.get_json()["report"]
    assert report["passes"] >= 1 and report["seconds"] >= 0.3
    assert client.post("/", json={"budget_s": "forever"}).status_code == 422


def _later():
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=5)  # past the reconcile grace for rows accepted just now


def test_two_schedulers_promote_each_due_retry_once(send_env, pool):
    from common.queue import QueueItem

    rt = get_runtime()
    due_ms = int(time.time() * 1000) + 300
    items = [QueueItem(f"00000000-0000-7000-8000-{i:012d}", "c1", "bulk", "+13125550100", "sms", due_at_ms=due_ms)
             for i in range(400)]  # fmt: skip
    rt.queue.enqueue(items)
    assert rt.queue.depths().delayed == 400
    while time.time() * 1000 < due_ms + 5:  # the condition is the clock itself: wait until they are due
        time.sleep(0.01)
    barrier = threading.Barrier(2)
    promoted: list[int] = []

    def one() -> None:
        barrier.wait()
        promoted.append(sum(rt.queue.promote_due(limit=50) for _ in range(10)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(promoted) == 400
    depths = rt.queue.depths()
    assert (depths.ready_bulk, depths.delayed) == (400, 0)
