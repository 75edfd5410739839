"""Rate limits: failed authentication per client address, sends per church per minute, bulk recipients per
church per day. Real Redis (and the in-process fallback with Redis pointed at a port nobody listens on),
real PostgreSQL, the functions as functions-framework serves them. Limits are made small through settings;
recovery is waited for on the observable answer (bounded), or a bucket is emptied/filled in Redis as setup.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import flask
import pytest

from common import constants
from common.compliance import opt_outs
from common.limits import Limiter, Rate, Take
from common.limits.auth_failures import client_address
from common.redis_client import RedisGate
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, set_env
from tests.webhook_signing import Signer, envelope, inbound_payload

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there: every call fails at once
BAD_KEY = {"Authorization": "Bearer kn_000000000000_" + "x" * 32}
ADDRESS_A = "203.0.113.7"
ADDRESS_B = "198.51.100.20"


def from_(address: str) -> dict[str, dict[str, str]]:
    return {"environ_base": {"REMOTE_ADDR": address}}


def assert_retry_after(answer, *, at_least: int = 1, at_most: int | None = None) -> int:
    header = answer.headers.get("Retry-After", "")
    assert re.fullmatch(r"[1-9][0-9]*", header), f"Retry-After must be whole seconds >= 1, got {header!r}"
    value = int(header)
    assert value >= at_least and (at_most is None or value <= at_most), value
    return value


def counts(pool) -> tuple[int, int]:
    return tuple(pool.run("SELECT (SELECT count(*) FROM broadcasts), (SELECT count(*) FROM messages)")[0])


def eventually(answer: Callable[[], int], wanted: int, *, within_s: float = 10.0):
    """Ask until the answer's status is ``wanted`` (bounded): the observable end of a refill."""
    deadline = time.monotonic() + within_s
    while True:
        status = answer()
        if status == wanted:
            return
        assert time.monotonic() < deadline, f"still {status} after {within_s} s"
        time.sleep(0.05)


def post(client, tenant: Tenant, *, address: str = ADDRESS_A, key: str | None = None, **body):
    headers = dict(tenant.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    body.setdefault("channel", "sms")
    body.setdefault("text", "Choir practice moved to 7pm")
    return client.post("/messages", json=body, headers=headers, **from_(address))


# -- failed authentication per client address -----------------------------------------------------------------


def test_failed_authentications_block_the_address_before_the_handler_and_not_another(env, pool, monkeypatch):
    set_env(monkeypatch, AUTH_FAIL_LIMIT="3", AUTH_FAIL_PERIOD_S="300")
    tenant = make_church(pool)
    client = function_client("send")
    for _ in range(3):
        assert client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_A)).status_code == 401
    # Over the limit: even the right key is refused, so the handler (and its key lookup) never ran.
    answer = client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A))
    assert answer.status_code == 429, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "too_many_auth_failures" and "API key" in error["message"]
    wait = assert_retry_after(answer, at_most=100)  # one token per 100 s
    assert f"wait {wait} s" in error["message"]
    refused = post(client, tenant, to="+13125550142")
    assert refused.status_code == 429 and counts(pool) == (0, 0)
    # Another address is untouched: its good key works, its bad key is its own 401.
    assert client.get("/messages", headers=tenant.auth, **from_(ADDRESS_B)).status_code == 200
    assert client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_B)).status_code == 401
    assert post(client, tenant, address=ADDRESS_B, to="+13125550142").status_code == 202


def test_an_address_is_let_back_in_when_its_bucket_refills(env, pool, monkeypatch):
    set_env(monkeypatch, AUTH_FAIL_LIMIT="2", AUTH_FAIL_PERIOD_S="1")  # a token every 0.5 s
    tenant = make_church(pool)
    client = function_client("send")
    for _ in range(2):
        assert client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_A)).status_code == 401
    blocked = client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A))
    assert blocked.status_code == 429
    assert_retry_after(blocked, at_most=1)
    eventually(lambda: client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A)).status_code, 200)
    # Failures count again from what refilled (a token, two if this machine is slow), then block again.
    statuses = [client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_A)).status_code for _ in range(3)]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    assert client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A)).status_code == 429


def test_a_bucket_emptied_elsewhere_turns_the_next_401_into_429_and_blocks_here(env, pool, redis_prefix, monkeypatch):
    """Another instance used the address's failures up: this one learns it from its own first 401."""
    set_env(monkeypatch, AUTH_FAIL_LIMIT="5", AUTH_FAIL_PERIOD_S="300")
    tenant = make_church(pool)
    gate = RedisGate(env.redis_url, prefix=redis_prefix)
    try:
        seconds, micros = gate.client.time()
        now_ms = seconds * 1000 + micros // 1000
        # GCRA state of a bucket whose 5 tokens (60 s each) were all spent just now.
        gate.client.set(gate.key("limit", f"auth_fail:{ADDRESS_A}"), now_ms + 5 * 60_000, px=600_000)
    finally:
        gate.close()
    client = function_client("send")
    assert client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A)).status_code == 200  # a good key passes
    first = client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_A))
    assert first.status_code == 429 and first.get_json()["error"]["code"] == "too_many_auth_failures"
    assert_retry_after(first, at_least=50, at_most=60)
    assert client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A)).status_code == 429


def test_a_blocked_address_still_delivers_signed_webhooks(send_env, pool, monkeypatch):
    """Only requests presenting a credential are refused early: Telnyx shares no key, and must get through."""
    signer = Signer()
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: signer.public_key, "AUTH_FAIL_LIMIT": "2",
                            "AUTH_FAIL_PERIOD_S": "300"})  # fmt: skip
    tenant = make_church(pool, members=numbers(1, area="415"))
    client = function_client("send")
    for _ in range(2):
        assert client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_A)).status_code == 401
    assert client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A)).status_code == 429
    body = envelope("message.received", inbound_payload(tenant.members[0], tenant.sender, "Amen"))
    hooks = function_client("webhooks")
    assert hooks.post("/webhooks/telnyx", data=body, headers=signer.headers(body), **from_(ADDRESS_A)).status_code == 200
    # Without a credential the handler runs (no key lookup to reach); its 401 still counts, so: 429.
    assert client.get("/messages", **from_(ADDRESS_A)).status_code == 429


def test_with_redis_down_failed_authentications_are_limited_in_process(env, pool, monkeypatch):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: DEAD_REDIS, "AUTH_FAIL_LIMIT": "2", "AUTH_FAIL_PERIOD_S": "300"})
    tenant = make_church(pool)
    client = function_client("send")
    for _ in range(2):
        assert client.get("/messages", headers=BAD_KEY, **from_(ADDRESS_A)).status_code == 401
    answer = client.get("/messages", headers=tenant.auth, **from_(ADDRESS_A))
    assert answer.status_code == 429
    assert_retry_after(answer)
    assert client.get("/messages", headers=tenant.auth, **from_(ADDRESS_B)).status_code == 200


def test_behind_a_trusted_proxy_the_address_is_the_one_the_proxy_saw(env, pool, monkeypatch):
    set_env(monkeypatch, TRUSTED_PROXY="x-forwarded-for", AUTH_FAIL_LIMIT="2", AUTH_FAIL_PERIOD_S="300")
    tenant = make_church(pool)
    client = function_client("send")

    def get(headers: dict[str, str], forwarded: str) -> int:
        return client.get("/messages", headers={**headers, "X-Forwarded-For": forwarded}, **from_("10.0.0.1")).status_code

    # A client rotating made-up first hops is still the address our proxy appended last.
    assert get(BAD_KEY, "1.1.1.1, 192.0.2.50") == 401
    assert get(BAD_KEY, "2.2.2.2, 192.0.2.50") == 401
    assert get(tenant.auth, "3.3.3.3, 192.0.2.50") == 429
    # Naming the blocked address as a first hop does not lock anyone else out.
    assert get(tenant.auth, "192.0.2.50, 192.0.2.51") == 200
    assert get(tenant.auth, "192.0.2.51") == 200


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than the JSON parser recurses


def test_a_hostile_lambda_request_context_falls_back_to_the_peer_not_a_500(env, monkeypatch):
    set_env(monkeypatch, TRUSTED_PROXY="lambda")
    answer = function_client("send").get("/messages", headers={"x-amzn-request-context": DEEP, "X-Request-Id": "deep-1"})
    assert answer.status_code == 401, answer.get_data(as_text=True)[:500]  # no key: the 401 counted per peer
    assert answer.get_json()["error"]["code"] and answer.headers["X-Request-Id"] == "deep-1"


@pytest.mark.parametrize(
    ("trusted", "headers", "peer", "expected"),
    [
        ("none", {"X-Forwarded-For": "1.2.3.4"}, "192.0.2.9", "192.0.2.9"),
        ("x-forwarded-for", {"X-Forwarded-For": "1.2.3.4, 192.0.2.77"}, "10.0.0.1", "192.0.2.77"),
        ("x-forwarded-for", {}, "10.0.0.1", "10.0.0.1"),
        ("lambda", {"x-amzn-request-context": json.dumps({"http": {"sourceIp": "192.0.2.8"}}),
                    "X-Forwarded-For": "1.2.3.4"}, "127.0.0.1", "192.0.2.8"),
        ("lambda", {"x-amzn-request-context": json.dumps({"identity": {"sourceIp": "192.0.2.6"}})}, "127.0.0.1",
         "192.0.2.6"),
        ("lambda", {"x-amzn-request-context": "not json"}, "127.0.0.1", "127.0.0.1"),
        ("lambda", {"x-amzn-request-context": '["not an object"]'}, "127.0.0.1", "127.0.0.1"),
        ("lambda", {"x-amzn-request-context": DEEP}, "127.0.0.1", "127.0.0.1"),
        ("lambda", {"x-amzn-request-context": json.dumps({"http": {"sourceIp": "192.0.2.8"}, "pad": "p" * 40_000})},
         "127.0.0.1", "127.0.0.1"),  # past log_context's size cap: not parsed
        ("none", {}, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("none", {}, "::ffff:192.0.2.1", "192.0.2.1"),
    ],
)  # fmt: skip
def test_client_address(trusted, headers, peer, expected):
    app = flask.Flask(__name__)
    with app.test_request_context("/", headers=headers, environ_base={"REMOTE_ADDR": peer}):
        assert client_address(flask.request, trusted) == expected


# -- sends per church ---------------------------------------------------------------------------------------------


def test_send_requests_per_church_are_limited_and_a_refusal_writes_nothing(env, pool, monkeypatch):
    set_env(monkeypatch, CHURCH_SEND_LIMIT="2", CHURCH_SEND_PERIOD_S="60")
    tenant, other = make_church(pool), make_church(pool, "Second Church", sender="+13125550101")
    client = function_client("send")
    assert post(client, tenant, to="+13125550142").status_code == 202
    assert post(client, tenant, to=numbers(3, area="415")).status_code == 202
    before = counts(pool)
    refused = post(client, tenant, to="+13125550143")
    assert refused.status_code == 429, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "send_rate_limited" and "2 send requests per minute" in error["message"]
    wait = assert_retry_after(refused, at_least=25, at_most=30)  # one request every 30 s
    assert f"wait {wait} s" in error["message"]
    assert counts(pool) == before
    assert post(client, other, to="+13125550142").status_code == 202  # another church has its own bucket


def test_the_send_limit_recovers_after_its_window(env, pool, monkeypatch):
    set_env(monkeypatch, CHURCH_SEND_LIMIT="1", CHURCH_SEND_PERIOD_S="1")
    tenant = make_church(pool)
    client = function_client("send")
    assert post(client, tenant, to="+13125550142").status_code == 202
    refused = post(client, tenant, to="+13125550142")
    assert refused.status_code == 429
    assert_retry_after(refused, at_most=1)
    eventually(lambda: post(client, tenant, to="+13125550142").status_code, 202)
    assert counts(pool) == (2, 2)  # the refused attempts wrote nothing


def test_an_idempotent_replay_is_neither_refused_nor_charged(env, pool, monkeypatch):
    set_env(monkeypatch, CHURCH_SEND_LIMIT="2", CHURCH_SEND_PERIOD_S="600")
    tenant = make_church(pool)
    client = function_client("send")
    first = post(client, tenant, key="advent-1", to="+13125550142")
    assert first.status_code == 202
    for _ in range(3):
        replay = post(client, tenant, key="advent-1", to="+13125550142")
        assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert post(client, tenant, key="advent-2", to="+13125550142").status_code == 202  # the replays took nothing
    assert post(client, tenant, key="advent-3", to="+13125550142").status_code == 429
    replay = post(client, tenant, key="advent-1", to="+13125550142")  # the bucket is empty: still answered
    assert replay.status_code == 202 and replay.get_json() == first.get_json()
    assert counts(pool) == (2, 2)


def test_bulk_recipients_per_day_count_group_members_after_expansion(env, pool, monkeypatch):
    set_env(monkeypatch, CHURCH_BULK_RECIPIENTS_LIMIT="5")
    tenant = make_church(pool, members=numbers(4, area="415"))
    client = function_client("send")
    assert post(client, tenant, groups=[tenant.group_id]).status_code == 202  # 4 of 5
    before = counts(pool)
    refused = post(client, tenant, to=numbers(2, area="646"))
    assert refused.status_code == 429, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "bulk_recipients_limited"
    assert "5 recipients per day" in error["message"] and "1 are available now and this send has 2" in error["message"]
    assert_retry_after(refused, at_least=1, at_most=86_400)
    refused = post(client, tenant, groups=[tenant.group_id])  # no "to": the count is the group's members
    assert refused.status_code == 429 and "this send has 4" in refused.get_json()["error"]["message"]
    assert counts(pool) == before
    assert post(client, tenant, to="+16465550199").status_code == 202  # a one-to-one text is not bulk
    # Opted-out recipients are not sent, so not counted: 2 numbers, one opted out, fit in the 1 left.
    two = numbers(2, area="646")
    with pool.transaction() as conn:
        opt_outs.opt_out(conn, tenant.church_id, two[0], source="keyword", keyword="STOP")
    assert post(client, tenant, to=two).status_code == 202
    assert post(client, tenant, to=numbers(2, area="212")).status_code == 429


def test_the_bulk_bucket_refills_and_a_send_larger_than_a_whole_day_is_refused(env, pool, redis_prefix, monkeypatch):
    set_env(monkeypatch, CHURCH_BULK_RECIPIENTS_LIMIT="3")
    tenant = make_church(pool)
    client = function_client("send")
    too_big = post(client, tenant, to=numbers(4, area="415"))
    assert too_big.status_code == 429 and "Split it" in too_big.get_json()["error"]["message"]
    assert_retry_after(too_big, at_least=86_400, at_most=86_400)
    assert post(client, tenant, to=numbers(3, area="415")).status_code == 202
    assert post(client, tenant, to=numbers(2, area="646")).status_code == 429
    # A day later the bucket is full again; as setup, the day passes by dropping the bucket's state.
    gate = RedisGate(env.redis_url, prefix=redis_prefix)
    try:
        assert gate.client.delete(gate.key("limit", f"bulk:{tenant.church_id}")) == 1
    finally:
        gate.close()
    assert post(client, tenant, to=numbers(2, area="646")).status_code == 202
    assert counts(pool) == (2, 5)


def test_with_redis_down_the_send_limit_holds_in_process(send_env, pool, monkeypatch):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: DEAD_REDIS, "CHURCH_SEND_LIMIT": "2", "CHURCH_SEND_PERIOD_S": "600"})
    tenant = make_church(pool)
    client = function_client("send")
    for _ in range(2):
        answer = post(client, tenant, to="+13125550142")
        assert answer.status_code == 202 and answer.get_json()["mode"] == "inline", answer.get_json()
    refused = post(client, tenant, to="+13125550142")
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "send_rate_limited"
    assert_retry_after(refused, at_least=250, at_most=300)
    assert counts(pool) == (2, 2)


def test_compliance_replies_are_never_rate_limited(send_env, pool, monkeypatch):
    signer = Signer()
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: signer.public_key, "CHURCH_SEND_LIMIT": "1",
                            "CHURCH_SEND_PERIOD_S": "600"})  # fmt: skip
    tenant = make_church(pool, members=numbers(1, area="415"))
    client = function_client("send")
    assert post(client, tenant, to="+13125550142").status_code == 202
    assert post(client, tenant, to="+13125550142").status_code == 429  # the church's bucket is empty
    hooks = function_client("webhooks")
    for text in ("HELP", "STOP"):
        body = envelope("message.received", inbound_payload(tenant.members[0], tenant.sender, text))
        assert hooks.post("/webhooks/telnyx", data=body, headers=signer.headers(body)).status_code == 200
    replies = pool.run("SELECT count(*) FROM messages WHERE purpose = 'compliance'")[0][0]
    assert replies == 2


# -- the limiter itself: one request's buckets are charged together or not at all ----------------------------


@pytest.fixture(params=["redis", "in-process"])
def limiter(request, redis_gate) -> Limiter:
    return Limiter(redis_gate if request.param == "redis" else None)


def test_admit_charges_every_bucket_or_none(limiter):
    a, b = Rate(2, 600), Rate(3, 600)
    assert limiter.admit([Take("a", a, 1), Take("b", b, 2)]).allowed  # a: 1 left, b: 1 left
    refused = limiter.admit([Take("a", a, 1), Take("b", b, 2)])
    assert not refused.allowed and refused.refused_by == "b" and refused.bucket_left == 1
    assert 190 <= refused.retry_after_s <= 200  # one more token of b: 200 s each
    assert limiter.admit([Take("a", a, 1)]).allowed  # the refused admission took nothing from a
    later = limiter.admit([Take("a", a, 1), Take("b", b, 2)])
    assert not later.allowed and later.refused_by == "a" and later.retry_after_s > 250  # both short: the longer wait
    assert limiter.admit([Take("b", b, 1)]).allowed


def test_take_remembers_an_empty_bucket_without_asking_again(limiter):
    rate = Rate(2, 10)  # a token every 5 s
    assert limiter.take("x", rate).allowed and limiter.empty_for("x") == 0
    last = limiter.take("x", rate)
    assert last.allowed and last.remaining == 0 and 4 < last.next_token_s <= 5
    assert 4 < limiter.empty_for("x") <= 5
    refused = limiter.take("x", rate)
    assert not refused.allowed and refused.retry_after_header in ("4", "5")
