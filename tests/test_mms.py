"""MMS end to end (issue #7): media checked at accept, sent as ``type: MMS``, limited by the number's own MMS
rate, weighted in usage. Real PostgreSQL, Redis, the Telnyx sandbox and a real HTTPS media server
(tests/media_server.py) that the send function's media check probes.

Rates are shown without sleeping: a dequeue is one Lua call, and within it the Redis clock stands still, so
one call is one instant; what each bucket allows next is read from its stored state (GCRA: the "theoretical
arrival time", epoch microseconds on the same clock). The queue has no clock of its own to pass in.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from common.config import Settings
from common.consume import ConsumeBudget, ConsumeReport, run_consumer
from common.db.pool import Pool
from common.ids import uuid7
from common.media import CARRIER_SAFE_BYTES, MAX_TOTAL_BYTES
from common.queue import MessageQueue, QueueConfig, QueueItem, SenderLimit
from common.redis_client import RedisGate
from common.runtime import get_runtime, queue_config
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, set_env
from tests.media_server import MediaServer, media_server

SENDER = "+13125550100"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    with media_server(tmp_path_factory.mktemp("pki")) as running:
        yield running


@pytest.fixture
def client(send_env: Settings, server: MediaServer, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """The send function, trusting the media server's CA (APP_ENV=test lets it fetch from 127.0.0.1)."""
    set_env(monkeypatch, MEDIA_CA_BUNDLE=server.ca_file)
    return function_client("send")


@pytest.fixture
def tenant(client: FlaskClient, pool: Pool) -> Tenant:
    return make_church(pool, sender=SENDER)


def post_mms(client: FlaskClient, tenant: Tenant, media_urls: list[str], *, key: str | None = None, **body: Any) -> Any:
    headers = dict(tenant.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = {"channel": "mms", "to": "+13125550142", "text": "Easter flyer", "media_urls": media_urls, **body}
    return client.post("/messages", json=payload, headers=headers)


def drain() -> ConsumeReport:
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=60.0, stop_when_idle=True)))


def rows(pool: Pool) -> tuple[int, int]:
    broadcasts, messages = pool.run("SELECT (SELECT count(*) FROM broadcasts), (SELECT count(*) FROM messages)")[0]
    return int(broadcasts), int(messages)


def queue_and_event_keys(settings: Settings) -> list[str]:
    """The queue's keys (``{p}:q:...``) and the analytics stream's (``{p}:a:...``): what an accepted send writes."""
    gate = RedisGate(settings.redis_url, prefix=settings.redis_key_prefix)
    try:
        tag = f"{{{settings.redis_key_prefix}}}"
        return sorted(k for k in gate.client.scan_iter(match=f"{tag}:*", count=1000) if k.startswith((f"{tag}:q:", f"{tag}:a:")))
    finally:
        gate.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- refused: a clear 4xx naming the field, nothing written anywhere -------------------------------------------


def _cases(server: MediaServer) -> dict[str, tuple[list[str], str, str, str]]:
    """name -> (media_urls, code, field, words the message must hold)."""
    good = server.url("/media", size=50_000, type="image/jpeg")
    return {
        "eleven URLs": (
            [server.url("/media") for _ in range(11)], "validation_failed", "media_urls", "at most 10 media URLs, got 11",
        ),
        "a file of 1 MB": (
            [good, server.url("/media", size=MAX_TOTAL_BYTES, type="image/png")], "media_too_large", "media_urls[1]",
            "1,000,000 bytes",
        ),
        "over 1 MB in all": (
            [server.url("/media", size=400_000, type="image/jpeg") for _ in range(3)], "media_total_too_large", "media_urls",
            "1,200,000 bytes",
        ),
        "an http URL": ([good, good.replace("https://", "http://")], "media_not_https", "media_urls[1]", "not https"),
        "a type MMS does not carry": (
            [server.url("/media", size=5_000, type="text/html; charset=utf-8")], "media_type_unsupported", "media_urls[0]",
            "text/html",
        ),
        "a missing file": ([good, server.url("/status/404")], "media_not_found", "media_urls[1]", "HTTP 404"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["eleven URLs", "a file of 1 MB", "over 1 MB in all", "an http URL", "a type MMS does not carry", "a missing file"]
)
def test_bad_media_is_a_clear_422_naming_the_field_and_changes_nothing(client, tenant, pool, server, send_env, case):
    media_urls, code, field, words = _cases(server)[case]
    answer = post_mms(client, tenant, media_urls)
    assert answer.status_code == 422, answer.get_json()
    error = answer.get_json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert words in error["message"]
    assert "127.0.0.1" not in error["message"]  # never the URL (a query string can carry a token)
    if code != "validation_failed":  # the media check's every problem, each naming its field
        assert {"field": field, "code": code} in [{"field": d["field"], "code": d["code"]} for d in error["details"]]
    assert rows(pool) == (0, 0)
    assert queue_and_event_keys(send_env) == []


def test_eleven_urls_are_refused_before_any_is_fetched(client, tenant, server):
    urls = [server.url("/media") for _ in range(11)]
    assert post_mms(client, tenant, urls).status_code == 422
    assert all(server.requests_for(url) == [] for url in urls)


def test_a_file_too_large_reports_the_total_too_in_details(client, tenant, server):
    error = post_mms(client, tenant, [server.url("/media", size=MAX_TOTAL_BYTES, type="image/png")]).get_json()["error"]
    assert [(d["field"], d["code"]) for d in error["details"]] == [
        ("media_urls", "media_total_too_large"),
        ("media_urls[0]", "media_too_large"),
    ]
    assert error["field"] == "media_urls[0]" and "(1 more in details)" in error["message"]


# -- accepted with warnings ------------------------------------------------------------------------------------


def test_700_kb_in_all_is_accepted_with_the_carrier_safe_size_warning_and_a_replay_fetches_nothing(client, tenant, pool, server):
    urls = [server.url("/media", size=350_000, type="image/jpeg"), server.url("/media", size=350_000, type="image/png")]
    answer = post_mms(client, tenant, urls, key="easter-flyer-1")
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    [warning] = body["warnings"]
    assert (warning["field"], warning["code"]) == ("media_urls", "media_total_over_carrier_safe_size")
    assert "700,000 bytes" in warning["message"] and f"{CARRIER_SAFE_BYTES:,}" in warning["message"]
    assert rows(pool) == (1, 1)
    fetched = [len(server.requests_for(url)) for url in urls]
    assert all(fetched)

    again = post_mms(client, tenant, urls, key="easter-flyer-1")
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == body  # the stored answer, warnings included
    assert [len(server.requests_for(url)) for url in urls] == fetched  # nothing fetched again
    assert rows(pool) == (1, 1)


def test_an_unreachable_url_is_accepted_with_a_warning(client, tenant, pool, server):
    answer = post_mms(client, tenant, [server.url("/media", size=20_000), f"https://127.0.0.1:{closed_port()}/flyer.jpg"])
    assert answer.status_code == 202, answer.get_json()
    assert [(w["field"], w["code"]) for w in answer.get_json()["warnings"]] == [("media_urls[1]", "media_unreachable")]
    assert rows(pool) == (1, 1)


def test_clean_media_answers_without_warnings(client, tenant, server):
    answer = post_mms(client, tenant, [server.url("/media", size=120_000, type="image/jpeg")])
    assert answer.status_code == 202 and "warnings" not in answer.get_json()


# -- delivered as type MMS, weighted in usage ---------------------------------------------------------------------


def test_the_mms_reaches_the_carrier_as_type_mms_and_counts_segments_times_the_weight(client, pool, server, sandbox):
    church = make_church(pool, "Weighted Church", sender=SENDER, allowance=None)
    with pool.transaction() as conn:  # a plan that leaves mms_weight to its default (3, as church products bill it)
        conn.run(
            "INSERT INTO subscriptions (id, church_id, plan, status, segment_allowance, period_start, period_end)"
            " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'standard', 'active', 1000,"
            " now() - interval '1 day', now() + interval '30 days')",
            id=str(uuid7()), c=church.church_id,
        )  # fmt: skip
    flyer = server.url("/media", size=90_000, type="image/jpeg")
    to = numbers(2, area="415")
    assert post_mms(client, church, [flyer], to=to).status_code == 202
    long_text = "A text-only MMS: one part whatever its length. " * 20
    assert post_mms(client, church, [], to="+13125550142", text=long_text).status_code == 202
    assert client.post("/messages", json={"channel": "sms", "to": "+13125550143", "text": "Doors open at 9"},
                       headers=church.auth).status_code == 202  # fmt: skip
    assert drain().sent == 4

    entries = {entry.to: entry for entry in sandbox.ledger.entries()}
    assert [(entries[n].type, entries[n].media_urls) for n in to] == [("MMS", (flyer,))] * 2
    assert (entries["+13125550142"].type, entries["+13125550142"].media_urls) == ("MMS", None)  # no media, still MMS
    assert entries["+13125550143"].type == "SMS"

    usage = client.get("/usage", headers=church.auth).get_json()
    assert usage["mms_weight"] == 3
    assert usage["by_channel"] == {"sms": {"segments": 1, "used": 1}, "mms": {"segments": 3, "used": 9}}
    assert usage["used"] == 3 * 3 + 1


# -- per-channel sender buckets ------------------------------------------------------------------------------------


def bucket_next_us(gate: RedisGate, channel: str, sender: str, burst: int, per_second: float) -> int:
    """When the (channel, sender) bucket lets the next message go (epoch us, Redis clock): tat - (burst-1)*T."""
    tat = int(gate.client.get(f"{{{gate.prefix}}}:q:bucket:{channel}|{sender}"))
    return tat - int((burst - 1) * 1_000_000 / per_second)


def test_send_sets_each_channels_rate_in_its_own_bucket(client, pool, server, send_env):
    church = make_church(pool, "Two Rates Church", sender=SENDER, sms_per_second=10.0)
    pool.run("UPDATE sender_numbers SET mms_per_second = 1 WHERE church_id = CAST(:c AS uuid)", c=church.church_id)
    flyer = server.url("/media", size=10_000, type="image/png")
    assert client.post("/messages", json={"channel": "sms", "to": numbers(20), "text": "Choir at 6"},
                       headers=church.auth).status_code == 202  # fmt: skip
    assert post_mms(client, church, [flyer], to=numbers(5, area="415")).status_code == 202

    rt = get_runtime()
    gate = rt.redis
    assert gate.client.hgetall(rt.queue.keys.limits) == {f"sms|{SENDER}": "10.0 1", f"mms|{SENDER}": "1.0 1"}
    batch = rt.queue.dequeue(100, 30_000)  # one instant: each bucket holds one token (burst 1 at these rates)
    assert Counter(lease.channel for lease in batch.leases) == {"sms": 1, "mms": 1}
    now_us = batch.now_ms * 1000  # the script's clock, floored to ms
    assert 100_000 <= bucket_next_us(gate, "sms", SENDER, 1, 10.0) - now_us < 101_000  # next SMS in 0.1 s
    assert 1_000_000 <= bucket_next_us(gate, "mms", SENDER, 1, 1.0) - now_us < 1_001_000  # next MMS in 1 s


def test_the_mms_queue_is_held_to_its_own_rate_while_sms_from_the_same_number_is_not(redis_gate):
    unlimited_accounts = QueueConfig(account_sms_per_s=1e6, account_mms_per_s=1e6, account_mail_per_s=1e6)
    queue = MessageQueue(redis_gate.client, redis_gate.prefix, unlimited_accounts)
    church = str(uuid7())
    sms = [QueueItem(f"sms-{i}", church, "bulk", SENDER, "sms") for i in range(50)]
    mms = [QueueItem(f"mms-{i}", church, "bulk", SENDER, "mms") for i in range(50)]
    # One second of burst for SMS (10 at once), none for MMS; the MMS rate set last, as a shared bucket
    # keyed by the number alone would have applied it to both.
    queue.enqueue(sms, {("sms", SENDER): SenderLimit(10.0, 10)})
    queue.enqueue(mms, {("mms", SENDER): SenderLimit(1.0, 1)})

    first = queue.dequeue(100, 30_000)  # one instant t0
    assert Counter(lease.channel for lease in first.leases) == {"sms": 10, "mms": 1}
    t0_us = first.now_ms * 1000
    assert 1_000_000 <= bucket_next_us(redis_gate, "mms", SENDER, 1, 1.0) - t0_us < 1_001_000
    assert 100_000 <= bucket_next_us(redis_gate, "sms", SENDER, 10, 10.0) - t0_us < 101_000

    # Whenever the next call runs, the MMS queue gets nothing before t0 + 1 s on the script's clock, then one.
    second = queue.dequeue(100, 30_000)
    mms_now = sum(1 for lease in second.leases if lease.channel == "mms")
    assert mms_now == 0 if second.now_ms - first.now_ms < 1000 else mms_now <= 1
    assert second.next_ready_ms is not None  # more SMS and MMS are waiting: the reply says when to come back


def test_the_account_mms_cap_applies_by_default(redis_gate, env):
    config = queue_config(env)  # ACCOUNT_MMS_PER_SECOND=15, ACCOUNT_SMS_PER_SECOND=50 by default
    assert (config.account_mms_per_s, config.account_sms_per_s) == (15.0, 50.0)
    queue = MessageQueue(redis_gate.client, redis_gate.prefix, config)
    fast = SenderLimit(1e6, 100_000)
    items = [QueueItem(f"m-{i}", f"church{i % 7}", "bulk", f"+1312555{i % 7:04d}", "mms") for i in range(100)]
    items += [QueueItem(f"s-{i}", f"church{i % 7}", "bulk", f"+1312555{i % 7:04d}", "sms") for i in range(100)]
    queue.enqueue(items, {(channel, f"+1312555{n:04d}"): fast for n in range(7) for channel in ("sms", "mms")})
    batch = queue.dequeue(200, 30_000)  # one instant: each account bucket's burst (0.2 s of its rate), no more
    taken = Counter(lease.channel for lease in batch.leases)
    assert config.account_burst("mms") == 3 and config.account_burst("sms") == 10
    assert taken["sms"] == 10
    # 100 MMS ready from unlimited numbers, and the account cap lets at most its burst go at once. (At 15/s a
    # unit is 66,666.7 us; the bucket rounds up to whole us so it never runs fast, which can cost the third.)
    assert 2 <= taken["mms"] <= 3
