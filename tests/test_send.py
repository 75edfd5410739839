"""POST /messages through functions-framework, against real PostgreSQL, Redis and the sandbox carrier."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.consume import ConsumeBudget, run_consumer
from common.privacy import crypto
from common.runtime import get_runtime
from tests.factories import make_church, numbers
from tests.helpers import function_client
from tests.media_server import UNCHECKABLE_MEDIA_URL


@pytest.fixture
def client(send_env):
    return function_client("send")


@pytest.fixture
def tenant(send_env, pool):
    return make_church(pool, members=numbers(3, area="415"))


def drain(max_seconds: float = 60.0):
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=max_seconds, stop_when_idle=True)))


def opt_out(pool, church_id: str, address: str) -> None:
    pool.run(
        "INSERT INTO opt_outs (church_id, address_enc, address_hash, source) VALUES (CAST(:c AS uuid), :e, :h, 'keyword')",
        c=church_id, e=crypto.seal(address, "address"), h=crypto.lookup_hash(church_id, address),
    )  # fmt: skip


def _counts(pool) -> tuple[int, int]:
    return (pool.run("SELECT count(*) FROM broadcasts")[0][0], pool.run("SELECT count(*) FROM messages")[0][0])


@pytest.mark.smoke
def test_a_single_send_reaches_the_carrier_exactly_once(client, tenant, pool, sandbox):
    response = client.post("/messages", json={"channel": "sms", "to": "(312) 555-0142", "text": "See you Sunday"},
                           headers=tenant.auth)  # fmt: skip
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["mode"] == "queued"
    assert body["counts"]["accepted"] == 1
    [recipient] = body["recipients"]
    assert recipient["to"] == "+13125550142" and recipient["status"] == "queued"
    report = drain()
    assert report.sent == 1
    assert sandbox.ledger.accepted == 1 and sandbox.ledger.duplicates == 0
    entry = sandbox.ledger.entries()[0]
    assert (entry.to, entry.from_, entry.text) == ("+13125550142", tenant.sender, "See you Sunday")
    row = pool.run("SELECT status, provider_message_id, attempts, lane FROM messages")[0]
    assert row[0] == "sent" and row[1] == entry.id and row[2] == 1 and row[3] == "conv"
    read = client.get(f"/messages/{recipient['message_id']}", headers=tenant.auth).get_json()
    assert read["status"] == "sent" and read["attempts"] == 1


def test_a_5000_recipient_broadcast_makes_5000_distinct_carrier_requests(client, tenant, pool, sandbox):
    to = numbers(5000)
    response = client.post("/messages", json={"channel": "sms", "to": to + to[:10], "text": "Prayer meeting 7pm"},
                           headers=tenant.auth)  # fmt: skip
    assert response.status_code == 202
    body = response.get_json()
    assert body["counts"] == {"accepted": 5000, "suppressed": 0, "invalid": 0, "duplicates_removed": 10}
    assert body["recipients_truncated"] is True and len(body["recipients"]) == 1000
    drain()
    ledger = sandbox.ledger
    assert ledger.accepted == 5000
    assert ledger.unique == 5000 and ledger.duplicates == 0
    assert set(ledger.by_to()) == set(to)
    assert pool.run("SELECT status, count(*) FROM messages GROUP BY status") == [["sent", 5000]]


def test_groups_expand_to_members_and_opted_out_members_are_suppressed(client, tenant, pool, sandbox):
    opted = tenant.members[0]
    opt_out(pool, tenant.church_id, opted)
    body = client.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "Choir at 6"},
                       headers=tenant.auth).get_json()  # fmt: skip
    assert body["counts"]["accepted"] == 2 and body["counts"]["suppressed"] == 1
    statuses = {r["to"]: r["status"] for r in body["recipients"]}
    assert statuses[opted] == "suppressed"
    drain()
    assert set(sandbox.ledger.by_to()) == set(tenant.members[1:])


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        ({"channel": "sms", "to": "12", "text": "x"}, 422, "invalid_recipients", "to[0]"),
        ({"channel": "sms", "to": ["+13125550142", "hello"], "text": "x"}, 422, "invalid_recipients", "to[1]"),
        ({"channel": "sms", "to": "+13125550142", "text": "a" * 1531}, 422, "text_too_long", "text"),
        ({"channel": "sms", "to": "+13125550142", "text": "🙏" * 336}, 422, "text_too_long", "text"),
        ({"channel": "sms", "groups": ["00000000-0000-7000-8000-000000000009"], "text": "x"}, 422, "unknown_group", "groups[0]"),
        ({"channel": "sms", "to": "+13125550142", "text": "x", "from": "+13125559999"}, 422, "unknown_sender", "from"),
        ({"channel": "sms", "to": 13125550142, "text": "x"}, 422, "validation_failed", "to"),
        ({"channel": "sms", "to": "+13125550142", "text": ["x"]}, 422, "validation_failed", "text"),
        ({"channel": "fax", "to": "+13125550142", "text": "x"}, 422, "validation_failed", "channel"),
        ({"channel": "sms", "text": "x"}, 422, "validation_failed", "to"),
        ({"channel": "sms", "to": "+13125550142", "text": "x", "send_at": "tomorrow"}, 422, "validation_failed", "send_at"),
        ({"channel": "sms", "to": "+13125550142", "text": "x", "surprise": 1}, 422, "validation_failed", "surprise"),
        ([1, 2], 422, "validation_failed", ""),
    ],
)
def test_bad_input_gets_a_clear_4xx_naming_the_field_and_writes_nothing(client, tenant, pool, payload, status, code, field):
    response = client.post("/messages", json=payload, headers=tenant.auth)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    assert _counts(pool) == (0, 0)


def test_another_churchs_number_and_group_are_refused(client, tenant, pool):
    other = make_church(pool, "Other Church", sender="+13125550199", members=numbers(1, area="646"))
    for payload, field in [
        ({"channel": "sms", "to": "+13125550142", "text": "x", "from": other.sender}, "from"),
        ({"channel": "sms", "groups": [other.group_id], "text": "x"}, "groups[0]"),
    ]:
        response = client.post("/messages", json=payload, headers=tenant.auth)
        assert response.status_code == 422
        assert response.get_json()["error"]["field"] == field
    assert _counts(pool) == (0, 0)


def test_only_opted_out_recipients_is_refused(client, tenant, pool):
    opt_out(pool, tenant.church_id, "+13125550142")
    response = client.post("/messages", json={"channel": "sms", "to": "+13125550142", "text": "x"}, headers=tenant.auth)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "recipients_opted_out"
    assert _counts(pool) == (0, 0)


def test_malformed_json_and_huge_bodies(client, tenant, pool):
    bad = client.post("/messages", data="{not json", headers={**tenant.auth, "Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_json"
    huge = json.dumps({"channel": "sms", "to": "+13125550142", "text": "x" * (10 * 1024 * 1024)})
    big = client.post("/messages", data=huge, headers={**tenant.auth, "Content-Type": "application/json"})
    assert big.status_code == 413 and big.get_json()["error"]["code"] == "payload_too_large"
    assert _counts(pool) == (0, 0)


def test_skip_invalid_sends_the_rest_and_reports_each_invalid_one(client, tenant, sandbox):
    body = client.post("/messages", json={"channel": "sms", "to": ["+13125550142", "bogus", "+13125550143"],
                                          "text": "x", "skip_invalid": True}, headers=tenant.auth).get_json()  # fmt: skip
    assert body["counts"]["accepted"] == 2
    assert body["invalid"] == [{"index": 1, "field": "to[1]", "value": "bogus", "reason": "not a phone number"}]
    drain()
    assert sandbox.ledger.accepted == 2


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer kn_000000000000_" + "A" * 32, "Basic abc"])
def test_unknown_or_missing_keys_are_401_and_nothing_is_recorded(client, tenant, pool, header):
    headers = {"Authorization": header} if header else {}
    response = client.post("/messages", json={"channel": "sms", "to": "+13125550142", "text": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert _counts(pool) == (0, 0)


def test_a_revoked_key_is_401(client, tenant, pool):
    pool.run("UPDATE api_keys SET revoked_at = now()")
    response = client.post("/messages", json={"channel": "sms", "to": "+13125550142", "text": "x"}, headers=tenant.auth)
    assert response.status_code == 401


def test_idempotent_replay_returns_the_first_answer_and_a_conflicting_one_is_409(client, tenant, pool, sandbox):
    payload = {"channel": "sms", "to": ["+13125550142", "+13125550143"], "text": "Potluck Friday"}
    headers = {**tenant.auth, "Idempotency-Key": "potluck-2026-12-04"}
    first = client.post("/messages", json=payload, headers=headers)
    second = client.post("/messages", json=payload, headers=headers)
    assert first.status_code == second.status_code == 202
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert _counts(pool) == (1, 2)
    conflict = client.post("/messages", json={**payload, "text": "Potluck Saturday"}, headers=headers)
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "idempotency_conflict"
    drain()
    assert sandbox.ledger.accepted == 2
    bad_key = client.post("/messages", json=payload, headers={**tenant.auth, "Idempotency-Key": "no spaces"})
    assert bad_key.status_code == 422 and bad_key.get_json()["error"]["field"] == "Idempotency-Key"


def test_numbers_texts_and_answers_are_sealed_at_rest(client, tenant, pool):
    """Nothing a member typed or is reached at is stored in the clear; the API still answers in the clear."""
    payload = {"channel": "sms", "to": ["+13125550142", "bogus"], "groups": [tenant.group_id], "text": "Advent at 10",
               "skip_invalid": True}  # fmt: skip
    answer = client.post("/messages", json=payload, headers={**tenant.auth, "Idempotency-Key": "advent"}).get_json()
    expected = ["+13125550142", *sorted(tenant.members)]
    assert [r["to"] for r in answer["recipients"]] == expected
    rows = pool.run("SELECT id::text, to_enc, to_hash, body_enc FROM messages")
    assert len({bytes(r[3]) for r in rows}) == 1 and crypto.unseal(rows[0][3], "text") == "Advent at 10"
    by_id = {r[0]: (crypto.unseal(r[1], "address"), bytes(r[2])) for r in rows}
    assert {mid: to for mid, (to, _) in by_id.items()} == {r["message_id"]: r["to"] for r in answer["recipients"]}
    assert all(h == crypto.lookup_hash(tenant.church_id, to) for to, h in by_id.values())
    [[sealed, has_invalid]] = pool.run("SELECT response_enc, response_has_invalid FROM broadcasts")
    assert has_invalid is True and json.loads(crypto.unseal(sealed, "answer")) == answer
    dump = b"".join(bytes(str(v), "utf-8") for row in pool.run("SELECT * FROM messages") for v in row)
    dump += b"".join(bytes(str(v), "utf-8") for row in pool.run("SELECT * FROM broadcasts") for v in row)
    assert b"555014" not in dump and b"Advent" not in dump and b"bogus" not in dump
    for read in (client.get(f"/messages/{answer['recipients'][0]['message_id']}", headers=tenant.auth).get_json(),
                 client.get("/messages?limit=1", headers=tenant.auth).get_json()["data"][0]):  # fmt: skip
        assert read["to"] in expected
    again = client.post("/messages", json=payload, headers={**tenant.auth, "Idempotency-Key": "advent"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == answer


def test_read_api_is_church_scoped_and_pages(client, tenant, pool):
    other = make_church(pool, "Other Church", sender="+13125550199")
    body = client.post("/messages", json={"channel": "sms", "to": numbers(7), "text": "x"}, headers=tenant.auth).get_json()
    mine = body["recipients"][0]["message_id"]
    assert client.get(f"/messages/{mine}", headers=tenant.auth).status_code == 200
    hidden = client.get(f"/messages/{mine}", headers=other.auth)
    assert hidden.status_code == 404 and mine not in hidden.get_data(as_text=True).replace(f"no message {mine}", "")
    assert client.get("/messages/not-a-uuid", headers=tenant.auth).status_code == 404
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/messages{query}", headers=tenant.auth).get_json()
        seen += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 == len(set(seen))
    by_broadcast = client.get(f"/messages?broadcast_id={body['broadcast_id']}&limit=500", headers=tenant.auth).get_json()
    assert len(by_broadcast["data"]) == 7
    assert client.get(f"/messages?broadcast_id={body['broadcast_id']}", headers=other.auth).get_json()["data"] == []
    assert client.get("/messages", headers=other.auth).get_json()["data"] == []


def test_a_scheduled_send_waits_for_its_time(client, tenant, pool, sandbox):
    from datetime import UTC, datetime, timedelta

    send_at = datetime.now(UTC) + timedelta(seconds=1.5)
    body = client.post("/messages", json={"channel": "sms", "to": "+13125550142", "text": "Doors open",
                                          "send_at": send_at.isoformat()}, headers=tenant.auth).get_json()  # fmt: skip
    assert body["mode"] == "scheduled" and body["recipients"][0]["status"] == "scheduled"
    assert drain().sent == 0  # nothing is due yet: the invocation returns without sending
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while sandbox.ledger.accepted == 0 and datetime.now(UTC) < deadline:
        drain()
    [entry] = sandbox.ledger.entries()
    assert datetime.fromisoformat(entry.received_at) >= send_at - timedelta(milliseconds=5)
    assert pool.run("SELECT status FROM messages") == [["sent"]]


def test_an_mms_counts_as_one_message_whatever_its_text(client, tenant, pool):
    """Media only, or a long text: one MMS, billed once (times the plan's MMS weight), never segmented."""
    for text in ("", "x" * 2000):
        answer = client.post("/messages", json={"channel": "mms", "to": "+13125550142", "text": text,
                                                "media_urls": [UNCHECKABLE_MEDIA_URL]},
                             headers=tenant.auth)  # fmt: skip
        assert answer.status_code == 202, answer.get_json()
        assert answer.get_json()["segments"] == 1
    assert pool.run("SELECT segments FROM messages ORDER BY created_at") == [[1], [1]]
