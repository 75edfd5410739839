"""The subscription quota: a send must fit in what is left of the church's segment allowance this period.

Real PostgreSQL and Redis; the send function as functions-framework serves it. The cache is shown by a
stale value being used within its TTL (the plan is cut in PostgreSQL behind its back) and then refreshed.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from common import constants
from common.billing.quota import QUOTA_SQL, remaining_allowance
from common.billing.usage import usage_for_current_period
from common.compliance import opt_outs
from common.redis_client import RedisGate
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, set_env, wait_for
from tests.media_server import UNCHECKABLE_MEDIA_URL
from tests.test_hot_queries import BIG_TABLES, NOW, _nodes
from tests.test_hot_queries import seeded as seeded  # the realistically skewed database (a fixture)
from tests.webhook_signing import Signer, envelope, inbound_payload

DEAD_REDIS = "redis://127.0.0.1:1/0"
MEDIA = [UNCHECKABLE_MEDIA_URL]  # accepted with a warning, no network needed


def post(client, tenant: Tenant, *, key: str | None = None, **body):
    headers = dict(tenant.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    body.setdefault("channel", "sms")
    body.setdefault("text", "Advent service at 10am")  # one GSM-7 segment
    return client.post("/messages", json=body, headers=headers)


def counts(pool) -> tuple[int, int]:
    return tuple(pool.run("SELECT (SELECT count(*) FROM broadcasts), (SELECT count(*) FROM messages)")[0])


def refusal(answer, code: str) -> str:
    assert answer.status_code == 402, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == code, error
    return str(error["message"])


def set_allowance(pool, tenant: Tenant, allowance: int) -> None:
    pool.run("UPDATE subscriptions SET segment_allowance = :a WHERE church_id = CAST(:c AS uuid)", a=allowance,
             c=tenant.church_id)  # fmt: skip


@pytest.fixture
def cache(env, redis_prefix):
    gate = RedisGate(env.redis_url, prefix=redis_prefix)
    yield gate
    gate.close()


def cache_key(gate: RedisGate, tenant: Tenant) -> str:
    return gate.key("limit", f"quota:{tenant.church_id}")


def test_a_send_that_fits_passes_and_one_that_would_exceed_is_refused_naming_the_allowance(env, pool, cache):
    tenant = make_church(pool, allowance=10)
    client = function_client("send")
    assert post(client, tenant, to=numbers(6, area="415")).status_code == 202
    before = counts(pool)
    message = refusal(post(client, tenant, to=numbers(5, area="646")), "quota_exceeded")
    assert "needs 5 segments" in message and "only 4 remain" in message and "upgrade the plan" in message
    assert re.search(r"renews on \d{4}-\d{2}-\d{2}", message), message
    assert counts(pool) == before  # nothing written
    assert post(client, tenant, to=numbers(4, area="646")).status_code == 202  # exactly what is left
    message = refusal(post(client, tenant, to="+13125550142"), "quota_exceeded")
    assert "only 0 remain" in message
    # Segments count: a two-segment text to one number needs 2.
    set_allowance(pool, tenant, 11)
    cache.client.delete(cache_key(cache, tenant))  # as if its TTL ran out
    message = refusal(post(client, tenant, to="+13125550142", text="x" * 200), "quota_exceeded")
    assert "needs 2 segments" in message and "only 1 remain" in message


def test_mms_segments_weigh_the_plans_mms_weight(env, pool):
    tenant = make_church(pool, allowance=10, mms_weight=3)
    client = function_client("send")
    assert post(client, tenant, channel="mms", media_urls=MEDIA, to=numbers(3, area="415")).status_code == 202  # 9
    message = refusal(post(client, tenant, channel="mms", media_urls=MEDIA, to="+13125550142"), "quota_exceeded")
    assert "needs 3 segments" in message and "MMS weight 3" in message and "only 1 remain" in message
    assert post(client, tenant, to="+13125550142").status_code == 202  # an SMS segment is 1


def test_a_church_without_a_current_subscription_is_refused(env, pool):
    client = function_client("send")
    none = make_church(pool, allowance=None)
    message = refusal(post(client, none, to="+13125550142"), "no_subscription")
    assert "subscription" in message
    lapsed = make_church(pool, "Lapsed Church", sender="+13125550101")
    pool.run("UPDATE subscriptions SET status = 'canceled' WHERE church_id = CAST(:c AS uuid)", c=lapsed.church_id)
    refusal(post(client, lapsed, to="+13125550142"), "no_subscription")
    assert counts(pool) == (0, 0)


def test_the_remaining_allowance_is_cached_within_its_ttl_then_read_again(env, pool, cache, monkeypatch):
    set_env(monkeypatch, QUOTA_CACHE_TTL_S="600")
    tenant = make_church(pool, allowance=100)
    client = function_client("send")
    assert post(client, tenant, to=numbers(10, area="415")).status_code == 202  # cached: 100 - 10 = 90
    assert cache.client.hget(cache_key(cache, tenant), "r") == "90"
    assert 0 < cache.client.pttl(cache_key(cache, tenant)) <= 600_000
    # The plan is cut behind the cache's back: PostgreSQL now says 15 - 10 pending = 5 remain.
    set_allowance(pool, tenant, 15)
    with pool.connection() as conn:
        assert remaining_allowance(conn, tenant.church_id, now=datetime.now(UTC)).remaining == 5
    # Within the TTL the cached value decides (no usage query): 20 fits in the cached 90.
    assert post(client, tenant, to=numbers(20, area="646")).status_code == 202
    assert cache.client.hget(cache_key(cache, tenant), "r") == "70"
    # The TTL runs out (as setup: the entry is dropped); the next send reads PostgreSQL: 15 - 30 < 0.
    cache.client.delete(cache_key(cache, tenant))
    message = refusal(post(client, tenant, to="+13125550142"), "quota_exceeded")
    assert "only 0 remain" in message
    assert counts(pool) == (2, 30)


def test_the_cache_entry_expires_after_its_ttl(env, pool, cache, monkeypatch):
    set_env(monkeypatch, QUOTA_CACHE_TTL_S="0.5")
    tenant = make_church(pool, allowance=10)
    client = function_client("send")
    assert post(client, tenant, to="+13125550142").status_code == 202
    assert 0 < cache.client.pttl(cache_key(cache, tenant)) <= 500
    set_allowance(pool, tenant, 1)  # now spent: 1 - 1 pending
    wait_for(lambda: not cache.client.exists(cache_key(cache, tenant)), timeout_s=10, what="the quota cache entry to expire")
    refusal(post(client, tenant, to="+13125550143"), "quota_exceeded")


def test_accepted_but_unsent_messages_hold_their_share_after_the_cache_expires(env, pool, cache):
    tenant = make_church(pool, allowance=10)
    client = function_client("send")
    next_week = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    answer = post(client, tenant, to=numbers(8, area="415"), send_at=next_week)
    assert answer.status_code == 202 and answer.get_json()["mode"] == "scheduled"
    cache.client.delete(cache_key(cache, tenant))  # the cache expired; usage.py counts none of the 8 yet
    usage = usage_for_current_period(pool, UUID(tenant.church_id), now=datetime.now(UTC))
    assert usage is not None and usage.used == 0
    with pool.connection() as conn:
        assert remaining_allowance(conn, tenant.church_id, now=datetime.now(UTC)).remaining == 2
    message = refusal(post(client, tenant, to=numbers(3, area="646"), send_at=next_week), "quota_exceeded")
    assert "only 2 remain" in message
    # Suppressed recipients are not sent, so not counted (and give nothing back): 2 of 3 fit.
    with pool.transaction() as conn:
        opt_outs.opt_out(conn, tenant.church_id, numbers(3, area="646")[0], source="keyword", keyword="STOP")
    assert post(client, tenant, to=numbers(3, area="646")).status_code == 202


def test_with_redis_down_the_quota_is_read_from_postgresql_every_time(send_env, pool, monkeypatch):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: DEAD_REDIS})
    tenant = make_church(pool, allowance=5)
    client = function_client("send")
    answer = post(client, tenant, to="+13125550142")
    assert answer.status_code == 202 and answer.get_json()["mode"] == "inline", answer.get_json()
    set_allowance(pool, tenant, 1)  # at once: nothing is cached
    refusal(post(client, tenant, to="+13125550143"), "quota_exceeded")
    assert counts(pool) == (1, 1)


def test_an_idempotent_replay_is_answered_when_the_allowance_is_spent(env, pool):
    tenant = make_church(pool, allowance=3)
    client = function_client("send")
    first = post(client, tenant, key="advent", to=numbers(3, area="415"))
    assert first.status_code == 202
    replay = post(client, tenant, key="advent", to=numbers(3, area="415"))
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    refusal(post(client, tenant, key="advent-2", to="+13125550142"), "quota_exceeded")
    assert counts(pool) == (1, 3)


def test_compliance_replies_bypass_the_quota(send_env, pool, monkeypatch):
    signer = Signer()
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: signer.public_key})
    tenant = make_church(pool, members=numbers(1, area="415"), allowance=None)  # no plan: every send is 402
    refusal(post(function_client("send"), tenant, to="+13125550142"), "no_subscription")
    hooks = function_client("webhooks")
    for text in ("HELP", "STOP"):
        body = envelope("message.received", inbound_payload(tenant.members[0], tenant.sender, text))
        assert hooks.post("/webhooks/telnyx", data=body, headers=signer.headers(body)).status_code == 200
    assert pool.run("SELECT count(*) FROM messages WHERE purpose = 'compliance'")[0][0] == 2


@pytest.mark.slow
def test_the_quota_query_reads_messages_from_the_index_alone(seeded):
    """A cache miss runs one statement: usage.py's query and the pending sum, both index-only on messages."""
    pool, params = seeded
    with pool.connection() as conn:
        rows = conn.run(QUOTA_SQL, church_id=params["big"], now=NOW)
        raw = conn.run("EXPLAIN (FORMAT JSON) " + QUOTA_SQL, church_id=params["big"], now=NOW)[0][0]
    assert rows and int(rows[0][2]) > 0 and int(rows[0][4]) > 0, rows  # used and pending both have rows to read
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    nodes = list(_nodes(plan))
    shown = json.dumps(plan, indent=1, default=str)
    assert not [n for n in nodes if "Seq Scan" in n["Node Type"] and n.get("Relation Name") in BIG_TABLES], shown
    on_messages = [n["Node Type"] for n in nodes if n.get("Index Name") == "messages_church_created"]
    assert on_messages == ["Index Only Scan", "Index Only Scan"], shown
