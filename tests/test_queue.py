"""The Redis message queue (common/queue) against a real Redis: lanes, fairness, rate limits, leases,
delays, dedup, bounded memory, wake-ups and a Redis crash.

Rate assertions use the Redis server clock the dequeue script itself used (``Dequeued.now_ms``), so a
slow test machine can make a test see fewer messages, never more than the limits allow.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

from common.queue import (
    AsyncMessageQueue,
    Lease,
    MessageQueue,
    QueueConfig,
    QueueItem,
    SenderLimit,
)
from common.redis_client import RedisGate
from infra.embedded import RedisProcess

UNLIMITED = SenderLimit(1_000_000.0, 100_000)
# Account caps out of the way, generous default sender: tests that are not about rate limits.
FAST = QueueConfig(
    account_sms_per_s=1_000_000.0,
    account_mms_per_s=1_000_000.0,
    account_mail_per_s=1_000_000.0,
    default_sender=UNLIMITED,
)


@pytest.fixture
def fast_queue(redis_gate: RedisGate) -> MessageQueue:
    return MessageQueue(redis_gate.client, redis_gate.prefix, FAST)


def items(church: str, n: int, *, lane: str = "bulk", sender: str | None = None, channel: str = "sms",
          due_at_ms: int | None = None, start: int = 0) -> list[QueueItem]:  # fmt: skip
    return [
        QueueItem(f"{church}-{i}", church, lane, sender or f"+1{church}", channel, due_at_ms)  # type: ignore[arg-type]
        for i in range(start, start + n)
    ]


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail after ``timeout_s`` (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.005)


def drain(queue: MessageQueue, *, max_items: int = 500, lease_ms: int = 30_000) -> list[Lease]:
    """Dequeue and ack until a dequeue comes back empty with nothing ready now."""
    taken: list[Lease] = []
    for _ in range(10_000):
        batch = queue.dequeue(max_items, lease_ms)
        queue.ack(batch.leases)
        taken += batch.leases
        if not batch.leases and (batch.next_ready_ms is None or batch.next_ready_ms > batch.now_ms):
            return taken
    pytest.fail("queue did not drain")


def max_in_window(stamps_ms: Sequence[int], window_ms: int = 1000) -> int:
    """The most events in any half-open window [t, t + window_ms)."""
    stamps = sorted(stamps_ms)
    best, lo = 0, 0
    for hi, stamp in enumerate(stamps):
        while stamp - stamps[lo] >= window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def prefix_keys(gate: RedisGate) -> list[str]:
    return sorted(gate.client.scan_iter(match=f"{{{gate.prefix}}}*", count=1000))


# -- lanes and fairness ------------------------------------------------------------------------


def test_conversational_lane_is_served_before_bulk(fast_queue: MessageQueue) -> None:
    fast_queue.enqueue(items("bulkchurch", 50, lane="bulk"))
    fast_queue.enqueue(items("convA", 5, lane="conv") + items("convB", 5, lane="conv", channel="mms"))

    first = fast_queue.dequeue(8, 30_000)
    assert [lease.lane for lease in first.leases] == ["conv"] * 8

    second = fast_queue.dequeue(20, 30_000)
    lanes = [lease.lane for lease in second.leases]
    assert lanes == ["conv"] * 2 + ["bulk"] * 18
    # a conversational message arriving behind a bulk backlog still goes first
    fast_queue.enqueue(items("convC", 1, lane="conv"))
    assert fast_queue.dequeue(5, 30_000).leases[0].message_id == "convC-0"


def test_round_robin_across_backlogged_churches(fast_queue: MessageQueue) -> None:
    for church in ("c1", "c2", "c3"):
        fast_queue.enqueue(items(church, 100))
    leases = fast_queue.dequeue(30, 30_000).leases
    assert Counter(lease.church_id for lease in leases) == {"c1": 10, "c2": 10, "c3": 10}
    # strict rotation: every window of three consecutive messages has all three churches
    for i in range(len(leases) - 2):
        assert {lease.church_id for lease in leases[i : i + 3]} == {"c1", "c2", "c3"}
    # FIFO within a church
    c1 = [int(lease.message_id.split("-")[1]) for lease in leases if lease.church_id == "c1"]
    assert c1 == list(range(10))


def test_backlog_of_20000_does_not_delay_another_churchs_single_message(fast_queue: MessageQueue) -> None:
    assert fast_queue.enqueue(items("big", 20_000)) == 20_000  # 20 script calls, one pipeline
    fast_queue.enqueue(items("mid1", 300) + items("mid2", 300))
    for _ in range(3):  # the consumers are busy with the backlog
        assert len(fast_queue.dequeue(200, 30_000).leases) == 200

    fast_queue.enqueue(items("small", 1))
    waiting = fast_queue.depths().churches_waiting
    assert waiting == 4
    batch = fast_queue.dequeue(200, 30_000).leases
    position = [lease.message_id for lease in batch].index("small-0")
    assert position < waiting  # within one round: at most one message per other waiting queue before it
    # and the backlog still flows
    assert Counter(lease.church_id for lease in batch)["big"] >= 60


def test_lone_queue_is_taken_in_one_go_within_the_batch(fast_queue: MessageQueue) -> None:
    fast_queue.enqueue(items("solo", 1_000))
    batch = fast_queue.dequeue(400, 30_000)
    assert [lease.message_id for lease in batch.leases] == [f"solo-{i}" for i in range(400)]
    assert batch.next_ready_ms == batch.now_ms  # more is ready right now


# -- rate limits -------------------------------------------------------------------------------


def test_sender_bucket_is_exact_and_does_not_block_other_senders(redis_gate: RedisGate) -> None:
    queue = MessageQueue(redis_gate.client, redis_gate.prefix, FAST)
    queue.enqueue(items("slow", 100, sender="+15550000010"), {("sms", "+15550000010"): SenderLimit(10.0, 1)})
    queue.enqueue(items("quick", 5_000, sender="+15550000999"), {("sms", "+15550000999"): SenderLimit(2_000.0, 50)})

    slow_at: list[int] = []
    quick = 0
    start = None
    while True:  # bounded by server time: about 1.5 s of dequeueing with generous batches
        batch = queue.dequeue(100, 30_000)
        start = start or batch.now_ms
        for lease in batch.leases:
            if lease.sender == "+15550000010":
                slow_at.append(batch.now_ms)
            else:
                quick += 1
        queue.ack(batch.leases)
        if batch.now_ms - start >= 1_500:
            break

    assert max_in_window(slow_at) <= 10 + 1  # rate + burst, on the server's clock
    gaps = [b - a for a, b in itertools.pairwise(slow_at)]
    assert gaps and min(gaps) >= 99  # burst 1: never two within 100 ms (99: whole-ms rounding)
    assert len(slow_at) >= 8  # not starved (15 is the ceiling in 1.5 s)
    assert quick >= 20 * len(slow_at)  # the slow sender's empty bucket never held the other one up


def test_account_cap_per_channel(redis_gate: RedisGate) -> None:
    config = QueueConfig(account_sms_per_s=20.0, account_mms_per_s=1_000_000.0, default_sender=UNLIMITED)
    queue = MessageQueue(redis_gate.client, redis_gate.prefix, config)
    for n in range(10):
        queue.enqueue(items(f"sms{n}", 100))
    queue.enqueue(items("mmschurch", 2_000, channel="mms"))

    sms_at: list[int] = []
    mms = 0
    start = None
    while True:
        batch = queue.dequeue(50, 30_000)
        start = start or batch.now_ms
        for lease in batch.leases:
            if lease.channel == "sms":
                sms_at.append(batch.now_ms)
            else:
                mms += 1
        queue.ack(batch.leases)
        if batch.now_ms - start >= 1_500:
            break

    assert max_in_window(sms_at) <= 20 + config.account_burst("sms")
    assert len(sms_at) >= 15
    assert len({lease for lease in sms_at}) > 1  # spread over time, not one burst
    assert mms >= 500  # a throttled SMS account does not hold up MMS


def test_next_ready_ms_when_throttled_delayed_and_empty(redis_gate: RedisGate) -> None:
    queue = MessageQueue(redis_gate.client, redis_gate.prefix, FAST)
    assert queue.dequeue(10, 1_000).next_ready_ms is None  # nothing at all

    queue.enqueue(items("t", 3, sender="+1222"), {("sms", "+1222"): SenderLimit(2.0, 1)})
    first = queue.dequeue(10, 30_000)
    assert len(first.leases) == 1
    assert first.next_ready_ms is not None
    assert 490 <= first.next_ready_ms - first.now_ms <= 510  # next token in 500 ms
    again = queue.dequeue(10, 30_000)
    assert again.leases == []
    assert again.next_ready_ms is not None
    assert abs(again.next_ready_ms - first.next_ready_ms) <= 1
    queue.ack(first.leases)
    queue.remove(["t-1", "t-2"])

    due = server_ms(redis_gate.client) + 60_000
    queue.enqueue(items("later", 1, due_at_ms=due))
    batch = queue.dequeue(10, 30_000)
    assert batch.leases == []
    assert batch.next_ready_ms == due


# -- leases ------------------------------------------------------------------------------------


def test_expired_leases_are_reclaimed_to_the_front_and_renew_keeps_them(fast_queue: MessageQueue) -> None:
    fast_queue.enqueue(items("l", 4))
    leases = fast_queue.dequeue(4, 300).leases
    assert len(leases) == 4
    kept, lost = leases[:2], leases[2:]
    assert fast_queue.renew(kept, 60_000) == 2
    fast_queue.enqueue(items("l", 1, start=4))  # arrives after; reclaimed ones must go before it

    reclaimed = 0

    def two_reclaimed() -> bool:
        nonlocal reclaimed
        reclaimed += fast_queue.reclaim_expired()
        return reclaimed >= 2

    wait_until(two_reclaimed, what="the two unrenewed leases to expire")
    assert reclaimed == 2
    depths = fast_queue.depths()
    assert (depths.ready_bulk, depths.inflight) == (3, 2)

    again = fast_queue.dequeue(10, 30_000).leases
    assert [lease.message_id for lease in again] == ["l-2", "l-3", "l-4"]
    # the old holder is fenced off: its stale leases neither renew nor ack the new ones
    assert fast_queue.renew(lost, 60_000) == 0
    assert fast_queue.ack(lost) == 0
    assert fast_queue.holds(["l-2", "l-3"]) == [True, True]
    assert fast_queue.ack(again) == 3
    assert fast_queue.ack(kept) == 2
    assert fast_queue.depths().inflight == 0


def test_dequeue_itself_reclaims_expired_leases(fast_queue: MessageQueue) -> None:
    fast_queue.enqueue(items("d", 2))
    first = fast_queue.dequeue(2, 100).leases
    wait_until(lambda: len(fast_queue.dequeue(2, 30_000).leases) == 2, what="dequeue to hand the ids out again")
    assert fast_queue.ack(first) == 0


def test_retry_later_then_promote_due(fast_queue: MessageQueue) -> None:
    fast_queue.enqueue(items("r", 2))
    leases = fast_queue.dequeue(2, 30_000).leases
    due = server_ms(fast_queue.client) + 300
    assert fast_queue.retry_later([(lease, due) for lease in leases]) == 2
    assert fast_queue.retry_later([(leases[0], due)]) == 0  # no longer held: no-op
    depths = fast_queue.depths()
    assert (depths.ready_bulk, depths.delayed, depths.inflight) == (0, 2, 0)
    assert fast_queue.holds(["r-0", "r-1"]) == [True, True]
    assert fast_queue.promote_due() == 0  # not due yet

    promoted = 0

    def both_promoted() -> bool:
        nonlocal promoted
        promoted += fast_queue.promote_due()
        return promoted >= 2

    wait_until(both_promoted, what="the retries to come due")
    assert promoted == 2
    assert server_ms(fast_queue.client) >= due
    again = fast_queue.dequeue(5, 30_000).leases
    assert sorted(lease.message_id for lease in again) == ["r-0", "r-1"]
    assert fast_queue.ack(again) == 2


def test_scheduled_items_wait_until_due(fast_queue: MessageQueue) -> None:
    due = server_ms(fast_queue.client) + 250
    assert fast_queue.enqueue(items("s", 3, due_at_ms=due) + items("now", 1, due_at_ms=due - 10_000)) == 4
    first = fast_queue.dequeue(10, 30_000)
    assert [lease.message_id for lease in first.leases] == ["now-0"]
    assert first.next_ready_ms == due
    got: list[Lease] = []

    def all_due() -> bool:
        got.extend(fast_queue.dequeue(10, 30_000).leases)  # dequeue promotes due ids itself
        return len(got) >= 3

    wait_until(all_due, what="scheduled items to come due")
    assert [lease.message_id for lease in got] == ["s-0", "s-1", "s-2"]


# -- dedup, remove, holds, depths --------------------------------------------------------------


def test_enqueue_is_idempotent_per_message_id(fast_queue: MessageQueue) -> None:
    batch = items("dup", 5)
    assert fast_queue.enqueue(batch + batch[:2]) == 5  # duplicates inside one call count once
    assert fast_queue.enqueue(batch) == 0
    leases = fast_queue.dequeue(2, 30_000).leases
    assert fast_queue.enqueue(batch) == 0  # inflight ids are held too
    fast_queue.retry_later([(leases[0], server_ms(fast_queue.client) + 60_000)])
    assert fast_queue.enqueue(batch) == 0  # and delayed ones
    assert fast_queue.depths().ready_bulk == 3
    fast_queue.ack(leases[1:])
    assert fast_queue.enqueue(batch) == 1  # acked: gone, so it may come again (reconcile decides)


@pytest.mark.parametrize("eager_remove_max", [0, 128], ids=["lazy-tombstones", "eager-lrem"])
def test_remove_wherever_the_id_is(redis_gate: RedisGate, eager_remove_max: int) -> None:
    config = QueueConfig(default_sender=UNLIMITED, eager_remove_max=eager_remove_max)
    fast_queue = MessageQueue(redis_gate.client, redis_gate.prefix, config)
    fast_queue.enqueue(items("x", 6))
    fast_queue.enqueue(items("x", 1, start=6, due_at_ms=server_ms(fast_queue.client) + 60_000))
    leased = fast_queue.dequeue(2, 30_000).leases  # x-0, x-1 inflight
    assert fast_queue.remove(["x-1", "x-3", "x-6", "unknown"]) == 3
    assert fast_queue.holds([f"x-{i}" for i in range(7)]) == [True, False, True, False, True, True, False]
    assert fast_queue.ack([leased[1]]) == 0  # its lease went with it
    depths = fast_queue.depths()
    assert (depths.delayed, depths.inflight) == (0, 1)
    assert depths.ready_bulk == (4 if eager_remove_max == 0 else 3)  # a lazy removal leaves a tombstone
    # removed while ready (LREM, or a tombstone the dequeue drops); re-enqueued elsewhere, it comes out
    # once, from there
    fast_queue.enqueue([QueueItem("x-3", "x", "conv", "+1other", "sms")])
    rest = drain(fast_queue)
    assert sorted(lease.message_id for lease in rest) == ["x-2", "x-3", "x-4", "x-5"]
    assert next(lease for lease in rest if lease.message_id == "x-3").lane == "conv"
    assert fast_queue.ack(leased[:1]) == 1


def test_holds_and_depths(fast_queue: MessageQueue) -> None:
    assert fast_queue.holds([]) == []
    fast_queue.enqueue(items("h1", 3, lane="conv") + items("h2", 4) + items("h3", 2, channel="mail"))
    fast_queue.enqueue(items("h4", 2, due_at_ms=server_ms(fast_queue.client) + 60_000))
    depths = fast_queue.depths()
    assert depths == type(depths)(ready_conv=3, ready_bulk=6, delayed=2, inflight=0, churches_waiting=3)
    leases = fast_queue.dequeue(4, 30_000).leases
    assert [lease.lane for lease in leases] == ["conv"] * 3 + ["bulk"]
    depths = fast_queue.depths()
    assert (depths.ready_conv, depths.ready_bulk, depths.inflight, depths.churches_waiting) == (0, 5, 4, 2)
    ids = ["h1-0", "h2-3", "h3-1", "h4-0", "nope"]
    assert fast_queue.holds(ids) == [True, True, True, True, False]
    assert fast_queue.holds([f"h2-{i}" for i in range(2_500)]).count(True) == 4  # several HMGET chunks


def test_full_drain_leaves_only_config_and_expiring_keys(redis_gate: RedisGate) -> None:
    config = QueueConfig(account_sms_per_s=2_000.0, account_mms_per_s=2_000.0, account_mail_per_s=2_000.0,
                         default_sender=UNLIMITED)  # fmt: skip
    queue = MessageQueue(redis_gate.client, redis_gate.prefix, config)
    soon = server_ms(redis_gate.client) + 200
    queue.enqueue(
        items("a", 300) + items("b", 50, lane="conv", channel="mms") + items("c", 20, channel="mail")
        + items("d", 10, due_at_ms=soon),
        {("sms", "+1a"): SenderLimit(500.0, 20)},
    )  # fmt: skip
    queue.remove(["a-5", "a-6", "d-1"])
    first = queue.dequeue(10, 30_000).leases
    queue.retry_later([(first[0], server_ms(redis_gate.client) + 100)])
    queue.ack(first[1:])

    taken: list[Lease] = list(first[1:])

    def everything_acked() -> bool:
        taken.extend(drain(queue))
        depths = queue.depths()
        return depths == type(depths)(0, 0, 0, 0, 0)

    wait_until(everything_acked, what="the whole queue to drain")
    assert len({lease.message_id for lease in taken}) == 300 + 50 + 20 + 10 - 3

    leftovers = {}
    for key in prefix_keys(redis_gate):
        leftovers[key.removeprefix(f"{{{redis_gate.prefix}}}:q:")] = redis_gate.client.pttl(key)
    config_keys = {"limits", "seq"}
    assert set(leftovers) - config_keys, "expected bucket keys to linger briefly"
    for name, ttl in leftovers.items():
        if name in config_keys:
            continue
        assert name.split(":")[0] in {"bucket", "account", "wake"}, name
        assert ttl != -1, f"{name} would live forever"  # -2: expired between SCAN and PTTL
    assert all(key_slot(key.encode()) == key_slot(f"{{{redis_gate.prefix}}}".encode()) for key in prefix_keys(redis_gate))


def test_bytes_client_without_decoding(redis_server_url: str, redis_prefix: str, redis_gate: RedisGate) -> None:
    client = redis.Redis.from_url(redis_server_url)  # decode_responses=False: replies are bytes
    try:
        queue = MessageQueue(client, redis_prefix, FAST)
        assert queue.enqueue(items("by", 3)) == 3
        batch = queue.dequeue(3, 30_000)
        assert [lease.message_id for lease in batch.leases] == ["by-0", "by-1", "by-2"]
        assert batch.leases[0].church_id == "by"
        assert queue.holds(["by-0", "zz"]) == [True, False]
        assert queue.ack(batch.leases) == 3
        assert queue.depths().inflight == 0
    finally:
        client.close()


def test_rejects_items_that_would_break_key_names(fast_queue: MessageQueue) -> None:
    with pytest.raises(ValueError, match="church id"):
        fast_queue.enqueue([QueueItem("m1", "a:b", "bulk", "+1", "sms")])
    with pytest.raises(ValueError, match="lane"):
        fast_queue.enqueue([QueueItem("m1", "c", "urgent", "+1", "sms")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        MessageQueue(fast_queue.client, "a{b}")
    # a sender may contain ':' (e-mail style): it is the last part of the queue name
    assert fast_queue.enqueue([QueueItem("m2", "c", "bulk", "news:letter@church.org", "mail")]) == 1
    assert fast_queue.dequeue(1, 30_000).leases[0].sender == "news:letter@church.org"


# -- async consumer ----------------------------------------------------------------------------


@pytest.fixture
def async_client_factory(redis_server_url: str) -> Iterator[Callable[..., redis.asyncio.Redis]]:
    def make(**kwargs: object) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(redis_server_url, decode_responses=True, **kwargs)  # type: ignore[arg-type]

    yield make


def test_async_wait_for_work_wakes_on_enqueue(
    fast_queue: MessageQueue, redis_gate: RedisGate, async_client_factory: Callable[..., redis.asyncio.Redis]
) -> None:
    name = f"waiter-{uuid.uuid4().hex[:8]}"

    def waiter_blocked() -> bool:
        return any(c.get("name") == name and c.get("cmd") == "blpop" for c in redis_gate.client.client_list())

    async def main() -> None:
        client = async_client_factory(client_name=name)
        try:
            queue = AsyncMessageQueue(client, redis_gate.prefix, FAST)
            started = time.monotonic()
            waiter = asyncio.create_task(queue.wait_for_work(10.0))
            # wait until the server reports our BLPOP blocked (no sleep standing in for it)
            deadline = time.monotonic() + 5
            while not await asyncio.to_thread(waiter_blocked):
                assert time.monotonic() < deadline, "BLPOP never blocked"
                await asyncio.sleep(0.005)
            assert not waiter.done()
            await asyncio.to_thread(fast_queue.enqueue, items("w", 2))
            assert await asyncio.wait_for(waiter, 5) is True
            assert time.monotonic() - started < 5

            batch = await queue.dequeue(10, 30_000)
            assert [lease.message_id for lease in batch.leases] == ["w-0", "w-1"]
            assert await queue.renew(batch.leases, 60_000) == 2
            await queue.retry_later([(batch.leases[0], batch.now_ms + 60_000)])
            await queue.ack(batch.leases[1:])
            depths = await queue.depths()
            assert (depths.delayed, depths.inflight) == (1, 0)
            assert await queue.holds(["w-0", "w-1"]) == [True, False]
            assert await queue.enqueue(items("w", 1)) == 0
            assert await queue.remove(["w-0"]) == 1
            assert await queue.promote_due() == 0 and await queue.reclaim_expired() == 0
        finally:
            await client.aclose()

    asyncio.run(main())


def test_async_wait_for_work_times_out_beyond_the_socket_timeout(
    redis_gate: RedisGate, async_client_factory: Callable[..., redis.asyncio.Redis]
) -> None:
    async def main() -> None:
        # RedisGate-style 0.5 s socket timeout: a 1.2 s wait must not end in TimeoutError
        client = async_client_factory(socket_timeout=0.5)
        try:
            queue = AsyncMessageQueue(client, redis_gate.prefix, FAST)
            drained = 0
            while await queue.wait_for_work(0):  # no stale tokens
                drained += 1
            started = time.monotonic()
            assert await queue.wait_for_work(1.2) is False
            # It really waited past the 0.5 s socket timeout (a wait that gave up early would also say False);
            # a wait that never returned is caught by the test's timeout, not by a clock bound here.
            assert time.monotonic() - started >= 1.1
        finally:
            await client.aclose()

    asyncio.run(main())


# -- Redis crash -------------------------------------------------------------------------------


def test_redis_killed_during_enqueue_raises_then_queue_recovers(service_dir: Path) -> None:
    server = RedisProcess(service_dir / "redis", persist=False).start()
    gate = RedisGate(server.url, prefix="fault")
    try:
        # small chunks: every enqueue is a multi-call pipeline (the EVALSHA + NOSCRIPT reload path)
        queue = MessageQueue(
            gate.client, gate.prefix, QueueConfig(enqueue_chunk=100, account_sms_per_s=1_000_000.0, default_sender=UNLIMITED)
        )
        assert queue.enqueue(items("pre", 300)) == 300

        failure: list[BaseException] = []
        one_done = threading.Event()

        def keep_enqueueing() -> None:
            n = 0
            try:
                while True:
                    queue.enqueue(items("bg", 2_000, start=n))
                    n += 2_000
                    one_done.set()
            except BaseException as exc:  # recorded for the assertion below
                failure.append(exc)

        worker = threading.Thread(target=keep_enqueueing, daemon=True)
        worker.start()
        assert one_done.wait(10)
        server.kill()
        worker.join(30)
        assert not worker.is_alive()
        assert len(failure) == 1 and isinstance(failure[0], redis.ConnectionError), failure

        with pytest.raises(redis.ConnectionError):
            queue.enqueue(items("down", 1))

        server.start()  # same port, empty (persist=False), no scripts loaded
        assert queue.enqueue(items("post", 250)) == 250  # pipelined chunks reload their script
        assert queue.holds(["post-0", "pre-0"]) == [True, False]
        batch = queue.dequeue(1_000, 30_000)
        assert len(batch.leases) == 250
        assert queue.ack(batch.leases) == 250
        gate.client.script_flush()
        assert queue.enqueue(items("flushed", 1)) == 1  # single call: Script reloads on NOSCRIPT
        assert [lease.message_id for lease in queue.dequeue(5, 30_000).leases] == ["flushed-0"]
    finally:
        gate.close()
        server.stop()
