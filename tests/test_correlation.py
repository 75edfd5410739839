"""Request ids and correlation ids (issue #8): one id follows a message from ``send`` through ``queue-consume`` to the
webhook that reports its delivery, and every log line says which request it was written for.

The functions run as functions-framework serves them (real PostgreSQL, Redis, the sandbox carrier); log lines are
read from ``caplog`` through our ``JsonFormatter``, the formatter production writes stdout with, so what is
asserted is what an operator would query.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pg8000.native
import pytest

from common import log_context
from common.config import parse_database_url
from common.db.migrate import discover, migrate
from common.db.pool import Pool
from common.logs import JsonFormatter
from tests.factories import make_church
from tests.helpers import function_client, with_database
from tests.webhook_signing import envelope, inbound_payload, outbound_payload

RECIPIENTS = ["+13125550142", "+13125550143", "+13125550144"]
BODY = "Potluck after the 10am service"
CORRELATION_ID = "app-42:send.1"
GENERATED = re.compile(r"[0-9a-hjkmnp-tv-z]{26}")  # log_context.new_request_id: Crockford base32

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    """Every log line captured so far, as the JSON our formatter writes."""
    log_context.install_record_factory()  # as configure_logging does in every function's main.py
    caplog.set_level(logging.INFO)
    formatter = JsonFormatter()

    def read() -> list[dict[str, Any]]:
        return [json.loads(formatter.format(record)) for record in caplog.records]

    return read


def one(logged: list[dict[str, Any]], msg: str, **fields: Any) -> dict[str, Any]:
    found = [line for line in logged if line["msg"] == msg and all(line.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, f"expected one {msg!r} line with {fields}, got {found}"
    return found[0]


def assert_no_pii(logged: list[dict[str, Any]], *secrets: str) -> None:
    text = "\n".join(json.dumps(line) for line in logged)
    for secret in secrets:
        assert secret not in text, f"{secret!r} was logged"


def _digits(number: str) -> str:
    return number.removeprefix("+1")  # 3125550142: also catches +1 312..., 1-312-..., the bare national number


def test_one_correlation_id_follows_a_broadcast_from_send_to_consumer_to_webhook(send_env, signer, pool, sandbox, lines):
    tenant = make_church(pool)
    send = function_client("send")
    answer = send.post("/messages", json={"channel": "sms", "to": RECIPIENTS, "text": BODY},
                       headers={**tenant.auth, "X-Request-Id": CORRELATION_ID})  # fmt: skip
    assert answer.status_code == 202, answer.get_json()
    assert answer.headers["X-Request-Id"] == CORRELATION_ID
    accepted_body = answer.get_json()
    assert accepted_body["correlation_id"] == CORRELATION_ID
    message_ids = [r["message_id"] for r in accepted_body["recipients"]]
    stored = pool.run("SELECT correlation_id, count(*) FROM messages GROUP BY correlation_id")
    assert stored == [[CORRELATION_ID, 3]]  # every row of the broadcast, written by its one INSERT

    consume = function_client("queue-consume").post("/", json={"max_seconds": 30, "stop_when_idle": True},
                                                    headers={"X-Request-Id": "consume-run-7"})  # fmt: skip
    assert consume.status_code == 200 and consume.get_json()["report"]["sent"] == 3
    assert consume.headers["X-Request-Id"] == "consume-run-7"
    mid = message_ids[0]
    [[pid]] = pool.run("SELECT provider_message_id FROM messages WHERE id = CAST(:id AS uuid)", id=mid)

    receipt = envelope("message.finalized", outbound_payload(pid, mid, "delivered", to=RECIPIENTS[0]))
    hook = function_client("webhooks").post(
        "/webhooks/telnyx", data=receipt, headers={**signer.headers(receipt), "X-Request-Id": "hook-9"}
    )
    assert hook.status_code == 200 and hook.get_json()["result"] == "applied"
    assert hook.headers["X-Request-Id"] == "hook-9"

    logged = lines()
    line = one(logged, "send accepted")
    assert (line["request_id"], line["correlation_id"], line["function"]) == (CORRELATION_ID, CORRELATION_ID, "send")
    assert (line["church_id"], line["broadcast_id"], line["channel"], line["mode"], line["messages"]) == (
        tenant.church_id, accepted_body["broadcast_id"], "sms", "queued", 3)
    for message_id in message_ids:  # one line per outcome, each with its message's correlation id
        outcome = one(logged, "delivery outcome", message_id=message_id)
        assert outcome["correlation_id"] == CORRELATION_ID
        assert (outcome["request_id"], outcome["function"]) == ("consume-run-7", "queue_consume")  # the invocation's own
        assert (outcome["status"], outcome["attempt"]) == ("sent", 1)
        assert isinstance(outcome["latency_ms"], int) and outcome["latency_ms"] >= 0
    assert one(logged, "delivery outcome", message_id=mid)["provider_message_id"] == pid
    run = one(logged, "consumer run")
    assert run["request_id"] == "consume-run-7" and run["sent"] == 3
    applied = one(logged, "delivery receipt applied", message_id=mid)
    assert (applied["correlation_id"], applied["status"], applied["request_id"], applied["function"]) == (
        CORRELATION_ID, "delivered", "hook-9", "webhooks")
    assert_no_pii(logged, BODY, "See you Sunday", *(_digits(n) for n in RECIPIENTS))  # the receipt's payload has a text too

    shown = send.get(f"/messages/{mid}", headers=tenant.auth)
    assert shown.get_json()["correlation_id"] == CORRELATION_ID and shown.get_json()["status"] == "delivered"
    listed = send.get(f"/messages?broadcast_id={accepted_body['broadcast_id']}", headers=tenant.auth).get_json()
    assert {m["correlation_id"] for m in listed["data"]} == {CORRELATION_ID}


def test_without_an_x_request_id_one_is_made_and_becomes_the_correlation_id(send_env, pool, lines):
    tenant = make_church(pool)
    send = function_client("send")
    first = send.post("/messages", json={"channel": "sms", "to": RECIPIENTS[0], "text": BODY}, headers=tenant.auth)
    second = send.post("/messages", json={"channel": "sms", "to": RECIPIENTS[1], "text": BODY}, headers=tenant.auth)
    assert first.status_code == second.status_code == 202
    made = first.headers["X-Request-Id"]
    assert GENERATED.fullmatch(made) and made != second.headers["X-Request-Id"]
    assert first.get_json()["correlation_id"] == made
    mid = first.get_json()["recipients"][0]["message_id"]
    assert pool.run("SELECT correlation_id FROM messages WHERE id = CAST(:id AS uuid)", id=mid) == [[made]]
    assert one(lines(), "send accepted", request_id=made)["correlation_id"] == made


def test_a_replay_names_the_request_that_sent_the_messages(send_env, pool, lines):
    tenant = make_church(pool)
    send = function_client("send")
    payload = {"channel": "sms", "to": RECIPIENTS[0], "text": BODY}
    first = send.post("/messages", json=payload, headers={**tenant.auth, "Idempotency-Key": "k1", "X-Request-Id": "first"})
    again = send.post("/messages", json=payload, headers={**tenant.auth, "Idempotency-Key": "k1", "X-Request-Id": "retry"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == first.get_json()
    assert again.headers["X-Request-Id"] == "retry" and again.get_json()["correlation_id"] == "first"
    line = one(lines(), "send accepted", request_id="retry")
    assert (line["mode"], line["correlation_id"]) == ("replayed", "first")


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\ndef",  # a log line of its own, if written raw
        "x" * 200,
        "ünïcödé-id",
        'id" , "level": "ERROR',
        "a\x00b",
        "with space",
        "a" * 65,  # one past the limit
        "",
    ],
)
def test_a_hostile_x_request_id_is_replaced_and_never_logged(send_env, pool, lines, hostile):
    tenant = make_church(pool)
    # Straight into the WSGI environ: Werkzeug's test client refuses a line break in a header; a server may not.
    answer = function_client("send").post(
        "/messages", json={"channel": "sms", "to": RECIPIENTS[0], "text": BODY}, headers=tenant.auth,
        environ_overrides={"HTTP_X_REQUEST_ID": hostile},
    )  # fmt: skip
    assert answer.status_code == 202, answer.get_json()
    replaced = answer.headers["X-Request-Id"]
    assert GENERATED.fullmatch(replaced)
    assert answer.get_json()["correlation_id"] == replaced
    logged = lines()
    assert one(logged, "send accepted")["request_id"] == replaced
    if hostile:
        assert_no_pii(logged, hostile, json.dumps(hostile)[1:-1])


@pytest.mark.parametrize("sane", ["a" * 64, "7f3c9a2e-1b4d-4c8e-9f00-123456789abc", "Root-1:5e1b.x_y"])
def test_a_sane_x_request_id_is_kept_as_it_is(send_env, sane):
    answer = function_client("send").get("/openapi.json", headers={"X-Request-Id": sane})
    assert answer.status_code == 200 and answer.headers["X-Request-Id"] == sane


def test_errors_and_unrouted_paths_carry_the_request_id_too(send_env):
    send = function_client("send")
    unauthorized = send.get("/messages", headers={"X-Request-Id": "no-key-1"})
    assert unauthorized.status_code == 401 and unauthorized.headers["X-Request-Id"] == "no-key-1"
    flask_404 = send.get("/favicon.ico", headers={"X-Request-Id": "icon-1"})  # Flask's own 404 (common/web.py)
    assert flask_404.status_code == 404 and flask_404.headers["X-Request-Id"] == "icon-1"
    alive = function_client("health").get("/alive", headers={"X-Request-Id": "probe-1"})
    assert alive.status_code == 200 and alive.headers["X-Request-Id"] == "probe-1"


LAMBDA_CONTEXT = json.dumps({
    "request_id": "8476a536-e9f4-11e8-9739-2dfe598c3fcd", "deadline": 1542409706888,
    "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:queue-consume", "xray_trace_id": None,
    "env_config": {"function_name": "queue-consume", "memory": 1024, "version": "$LATEST"},
})  # fmt: skip
API_CONTEXT = json.dumps({"accountId": "123456789012", "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
                          "http": {"method": "POST", "path": "/", "sourceIp": "203.0.113.7"}})  # fmt: skip


def test_behind_the_lambda_web_adapter_the_invocation_and_gateway_ids_are_logged(send_env, lines):
    answer = function_client("queue-consume").post(
        "/", json={"max_seconds": 5, "stop_when_idle": True},
        headers={"X-Request-Id": "run-1", "x-amzn-lambda-context": LAMBDA_CONTEXT, "x-amzn-request-context": API_CONTEXT},
    )  # fmt: skip
    assert answer.status_code == 200
    run = one(lines(), "consumer run")
    assert (run["request_id"], run["lambda_request_id"], run["api_request_id"]) == (
        "run-1", "8476a536-e9f4-11e8-9739-2dfe598c3fcd", "c6af9ac6-7b61-11e6-9a41-93e8deadbeef")


@pytest.mark.parametrize(
    "header",
    [
        "{", "[]", "null", '{"request_id": 7, "requestId": ["x"]}', '{"request_id": "a\\nb", "requestId": "x y"}',
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser recurses
        json.dumps({"request_id": "r" * 10, "pad": "p" * 40_000}),  # too long to parse
    ],
)  # fmt: skip
def test_malformed_adapter_headers_are_left_out_not_fatal(send_env, lines, header):
    answer = function_client("queue-consume").post(
        "/", json={"max_seconds": 5, "stop_when_idle": True},
        headers={"x-amzn-lambda-context": header, "x-amzn-request-context": header},
    )  # fmt: skip
    assert answer.status_code == 200
    run = one(lines(), "consumer run")
    assert "lambda_request_id" not in run and "api_request_id" not in run
    assert run["request_id"] == answer.headers["X-Request-Id"]


def test_a_keyword_reply_carries_the_webhooks_request_id_and_the_inbound_line_only_ids(send_env, signer, pool, lines):
    member = "+14155550123"
    tenant = make_church(pool, members=[member])
    text = envelope("message.received", inbound_payload(member, tenant.sender, "Stop"))
    hook = function_client("webhooks").post(
        "/webhooks/telnyx", data=text, headers={**signer.headers(text), "X-Request-Id": "hook-stop-1"}
    )
    assert hook.status_code == 200
    assert pool.run("SELECT purpose, correlation_id FROM messages") == [["compliance", "hook-stop-1"]]  # the confirmation
    logged = lines()
    inbound = one(logged, "inbound text", request_id="hook-stop-1")
    assert inbound["church_id"] == tenant.church_id and inbound["keyword"] == "opt_out"
    assert inbound["conversation_id"] and inbound["text_id"] and inbound["reply_broadcast_id"]
    assert_no_pii(logged, _digits(member), '"Stop"')


def test_log_lines_take_the_ids_current_when_they_are_written():
    logger = logging.getLogger("koinonia.test_correlation")
    log_context.install_record_factory()
    make = logging.getLogRecordFactory()
    formatter = JsonFormatter()

    def record(msg: str) -> logging.LogRecord:
        return make(logger.name, logging.INFO, __file__, 1, msg, None, None)

    outside = record("outside")
    with log_context.bound(log_context.RequestIds("req-1", function="send", lambda_request_id="lam-1")):
        inside = record("inside")
    assert log_context.request_id() is None  # reset after the block
    written = json.loads(formatter.format(inside))  # formatted later, as a queue handler or caplog would
    assert (written["request_id"], written["function"], written["lambda_request_id"]) == ("req-1", "send", "lam-1")
    assert "request_id" not in json.loads(formatter.format(outside))


def test_only_sane_ids_are_taken_from_headers():
    assert log_context.from_headers({"X-Request-Id": "ok-1"}).request_id == "ok-1"
    for hostile in ("a\nb", "a\r\nb", "\u2028", "a" * 65, "", None):
        made = log_context.from_headers({"X-Request-Id": hostile}).request_id  # type: ignore[dict-item]
        assert GENERATED.fullmatch(made)
    ids = [log_context.new_request_id() for _ in range(1000)]
    millis = [i[:10] for i in ids]  # the first 10 characters are the UUIDv7's 48-bit milliseconds
    assert len(set(ids)) == 1000 and millis == sorted(millis)  # unique, and in time order as text


# -- the migration ------------------------------------------------------------------------------------------------


@pytest.fixture
def empty_pool(pg_server_url: str) -> Iterator[Pool]:
    name = f"kt_corr_{uuid.uuid4().hex[:12]}"
    admin = Pool(parse_database_url(pg_server_url))
    admin.run(f'CREATE DATABASE "{name}"')
    pool = Pool(parse_database_url(with_database(pg_server_url, name)))
    yield pool
    pool.close()
    admin.run(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def test_the_correlation_id_migration_applies_and_bounds_the_column(empty_pool, send_env):
    applied = migrate(empty_pool, progress=lambda _: None)
    [mine] = [m for m in discover() if m.name == "message_correlation_id"]
    assert mine.version in applied
    assert empty_pool.run(
        "SELECT data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = 'messages' AND column_name = 'correlation_id'"
    ) == [["text", "YES"]]
    tenant = make_church(empty_pool)
    insert = (
        "INSERT INTO messages (id, church_id, channel, lane, status, deadline_at, correlation_id)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'sms', 'conv', 'queued', now() + interval '1 hour', :cid)"
    )
    for fine in (None, "x", "a" * 64):
        empty_pool.run(insert, id=str(uuid.uuid4()), c=tenant.church_id, cid=fine)
    for bad in ("", "a" * 65):
        with pytest.raises(pg8000.native.DatabaseError, match="messages_correlation_id_length"):
            empty_pool.run(insert, id=str(uuid.uuid4()), c=tenant.church_id, cid=bad)
