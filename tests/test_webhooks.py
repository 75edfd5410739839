"""The webhooks function: delivery receipts move messages forward only, once; members' texts thread and opt out.

Events are signed in the test with a key made here (tests/webhook_signing.py) and posted to the function
as Telnyx would; the carrier for the sends is our sandbox. The full loop with the sandbox sending the
webhooks itself is tests/test_webhooks_loop.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from common.consume import ConsumeBudget, run_consumer
from common.messages import receipts, store
from common.messages.store import Outcome
from common.privacy.crypto import lookup_hash, unseal
from common.runtime import get_runtime
from common.scheduler import Scheduler
from tests.factories import make_church, numbers
from tests.helpers import function_client
from tests.webhook_signing import envelope, inbound_payload, outbound_payload


@pytest.fixture
def tenant(signer, pool):
    return make_church(pool, members=numbers(3, area="415"))


@pytest.fixture
def hooks(signer):
    client = function_client("webhooks")

    def post(body: bytes) -> dict:
        answer = client.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    return post


@pytest.fixture
def send(signer):
    return function_client("send")


def drain() -> None:
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=30, stop_when_idle=True)))


def message_row(pool, message_id: str) -> dict:
    cols = ["status", "provider_message_id", "carrier", "cost_amount", "last_error_code", "finalized_at", "next_attempt_at"]
    row = pool.run(f"SELECT {', '.join(cols)} FROM messages WHERE id = CAST(:id AS uuid)", id=message_id)[0]
    return dict(zip(cols, row, strict=True))


def sent_message(send, tenant, pool, to: str = "+13125550142") -> tuple[str, str]:
    answer = send.post("/messages", json={"channel": "sms", "to": to, "text": "See you Sunday"}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    message_id = answer.get_json()["recipients"][0]["message_id"]
    drain()
    row = message_row(pool, message_id)
    assert row["status"] == "sent"
    return message_id, row["provider_message_id"]


def test_receipts_move_a_message_to_delivered_with_carrier_and_cost(send, tenant, pool, hooks):
    mid, pid = sent_message(send, tenant, pool)
    hooks(envelope("message.sent", outbound_payload(pid, mid, "sent")))
    assert message_row(pool, mid)["status"] == "sent"
    hooks(envelope("message.finalized", outbound_payload(pid, mid, "delivered")))
    row = message_row(pool, mid)
    assert row["status"] == "delivered"
    assert row["carrier"] == "T-MOBILE USA, INC." and str(row["cost_amount"]) == "0.00400"
    assert row["finalized_at"] is not None
    shown = send.get(f"/messages/{mid}", headers=tenant.auth).get_json()
    assert (shown["status"], shown["carrier"], shown["cost"]) == (
        "delivered", "T-MOBILE USA, INC.", {"amount": "0.00400", "currency": "USD"})


def test_a_duplicate_event_changes_nothing(send, tenant, pool, hooks):
    mid, pid = sent_message(send, tenant, pool)
    body = envelope("message.finalized", outbound_payload(pid, mid, "delivery_failed",
                                                          errors=[{"code": "40002", "title": "Blocked as spam"}]))
    assert hooks(body)["result"] == "applied"
    first = message_row(pool, mid)
    assert first["status"] == "delivery_failed" and first["last_error_code"] == "40002"
    assert hooks(body)["result"] == "duplicate"
    assert message_row(pool, mid) == first
    assert pool.run("SELECT count(*) FROM webhook_events")[0][0] == 1


def test_out_of_order_events_never_move_a_message_backwards(send, tenant, pool, hooks):
    mid, pid = sent_message(send, tenant, pool)
    hooks(envelope("message.finalized", outbound_payload(pid, mid, "delivered")))
    hooks(envelope("message.sent", outbound_payload(pid, mid, "sent")))  # late
    assert message_row(pool, mid)["status"] == "delivered"
    # delivery_unconfirmed may still become delivered; never the reverse.
    mid2, pid2 = sent_message(send, tenant, pool, to="+13125550143")
    hooks(envelope("message.finalized", outbound_payload(pid2, mid2, "delivery_unconfirmed")))
    assert message_row(pool, mid2)["status"] == "delivery_unconfirmed"
    hooks(envelope("message.finalized", outbound_payload(pid2, mid2, "delivered")))
    hooks(envelope("message.finalized", outbound_payload(pid2, mid2, "delivery_unconfirmed")))
    assert message_row(pool, mid2)["status"] == "delivered"


def test_a_receipt_that_beats_our_outcome_write_is_applied_by_that_write(send, tenant, pool, hooks):
    answer = send.post("/messages", json={"channel": "sms", "to": "+13125550142", "text": "x"}, headers=tenant.auth)
    mid = answer.get_json()["recipients"][0]["message_id"]
    claim = store.claim(pool, [mid], lease_s=30)  # we are "sending" it: the carrier answered, we have not written
    assert [m.id for m in claim.sendable] == [mid]
    pid = str(uuid.uuid4())
    hooks(envelope("message.finalized", outbound_payload(pid, mid, "delivered")))
    assert message_row(pool, mid)["status"] == "sending"  # never skips our own write
    store.record_outcomes(pool, claim.token, [Outcome(mid, "sent", "sent", provider_message_id=pid, http_status=200)])
    assert message_row(pool, mid)["status"] == "delivered"


def test_a_receipt_for_an_attempt_we_gave_up_on_cancels_the_retry(send, tenant, pool, hooks, sandbox):
    """The carrier accepted attempt 1 but we never heard (timeout): its receipt stops attempt 2."""
    answer = send.post("/messages", json={"channel": "sms", "to": "+13125550142", "text": "x"}, headers=tenant.auth)
    mid = answer.get_json()["recipients"][0]["message_id"]
    claim = store.claim(pool, [mid], lease_s=30)
    from datetime import UTC, datetime

    store.record_outcomes(pool, claim.token, [Outcome(mid, "retrying", "retry", error_code="timeout",
                                                      next_attempt_at=datetime.now(UTC))])  # fmt: skip
    assert message_row(pool, mid)["status"] == "retrying"
    pid = str(uuid.uuid4())
    hooks(envelope("message.sent", outbound_payload(pid, mid, "sent")))
    row = message_row(pool, mid)
    assert row["status"] == "sent" and row["provider_message_id"] == pid and row["next_attempt_at"] is None
    drain()  # the queue still holds the id: the claim refuses it, nothing goes to the carrier
    assert sandbox.ledger.accepted == 0
    assert message_row(pool, mid)["status"] == "sent"


def test_a_receipt_without_our_id_waits_for_the_sweep(send, tenant, pool, hooks):
    mid, pid = sent_message(send, tenant, pool)
    with pool.transaction() as conn:  # a receipt that raced in with no message id and was not applied
        conn.run(
            "INSERT INTO carrier_receipts (provider_message_id, status, rank, carrier_status)"
            " VALUES (:p, 'delivered', 3, 'delivered')", p=pid,
        )  # fmt: skip
    Scheduler(get_runtime()).one_pass()
    assert message_row(pool, mid)["status"] == "delivered"
    assert receipts.apply_pending(pool) == 0


# -- members' texts -------------------------------------------------------------------------------------


def text_from(hooks, tenant, member: str, text: str, *, autoresponse: str | None = None) -> dict:
    return hooks(envelope("message.received", inbound_payload(member, tenant.sender, text, autoresponse_type=autoresponse)))


def test_texts_thread_into_one_conversation_per_member(send, tenant, pool, hooks):
    member = tenant.members[0]
    text_from(hooks, tenant, member, "Can I bring a friend on Sunday?")
    text_from(hooks, tenant, member, "Two friends actually")
    text_from(hooks, tenant, tenant.members[1], "Amen")
    listing = send.get("/conversations", headers=tenant.auth).get_json()
    assert [c["contact_address"] for c in listing["data"]] == [tenant.members[1], member]  # latest first
    mine = listing["data"][1]
    assert mine["unread_count"] == 2 and mine["needs_review"] is False and mine["contact_id"] is not None
    thread = send.get(f"/conversations/{mine['id']}/messages?limit=1", headers=tenant.auth).get_json()
    assert [m["body"] for m in thread["data"]] == ["Two friends actually"]
    older = send.get(f"/conversations/{mine['id']}/messages?limit=1&cursor={thread['next_cursor']}", headers=tenant.auth)
    assert [m["body"] for m in older.get_json()["data"]] == ["Can I bring a friend on Sunday?"]
    # At rest: the number sealed and found by its lookup hash (the contact's), every text sealed.
    assert pool.run("SELECT contact_hash FROM conversations WHERE id = CAST(:id AS uuid)", id=mine["id"]) == [
        [lookup_hash(tenant.church_id, member)]]
    stored = [bytes(b) for (b,) in pool.run("SELECT body_enc FROM conversation_messages ORDER BY created_at")]
    assert [unseal(b, "text") for b in stored] == ["Can I bring a friend on Sunday?", "Two friends actually", "Amen"]
    assert not any(b"friend" in b or b"Amen" in b for b in stored)
    other = make_church(pool, "Other Church", sender="+13125550999")
    assert send.get(f"/conversations/{mine['id']}/messages", headers=other.auth).status_code == 404
    assert send.get("/conversations", headers=other.auth).get_json()["data"] == []


def test_stop_opts_out_at_once_and_the_next_broadcast_skips_them(send, tenant, pool, hooks, sandbox):
    stopper = tenant.members[0]
    text_from(hooks, tenant, stopper, "  stop ", autoresponse="STOP")  # the carrier already confirmed it
    assert pool.run("SELECT source FROM opt_outs WHERE address_hash = :h", h=lookup_hash(tenant.church_id, stopper)) == [
        ["keyword"]]
    assert pool.run("SELECT action, source, keyword FROM opt_out_events") == [["opt_out", "keyword", "STOP"]]
    assert pool.run("SELECT count(*) FROM messages")[0][0] == 0  # no second confirmation from us
    answer = send.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "Potluck at 6"},
                       headers=tenant.auth)  # fmt: skip
    assert answer.get_json()["counts"] == {"accepted": 2, "suppressed": 1, "invalid": 0, "duplicates_removed": 0}
    drain()
    assert stopper not in sandbox.ledger.by_to() and len(sandbox.ledger.by_to()) == 2


def test_one_confirmation_for_stop_and_start_when_the_carrier_did_not_answer(send, tenant, pool, hooks, sandbox):
    member = tenant.members[0]
    text_from(hooks, tenant, member, "STOP")
    text_from(hooks, tenant, member, "Stop")  # already out: logged, not confirmed twice
    replies = pool.run("SELECT purpose, lane, body_enc FROM messages ORDER BY created_at")
    assert len(replies) == 1 and replies[0][:2] == ["compliance", "conv"] and "START" in unseal(replies[0][2], "text")
    drain()  # the confirmation reaches a person who has opted out: it is the one text that may
    assert sandbox.ledger.by_to() == {member: 1}
    text_from(hooks, tenant, member, "yes")
    assert pool.run("SELECT count(*) FROM opt_outs")[0][0] == 0
    assert [r[0] for r in pool.run("SELECT action FROM opt_out_events ORDER BY id")] == ["opt_out", "opt_out", "opt_in"]
    assert pool.run("SELECT count(*) FROM messages")[0][0] == 2
    thread = pool.run("SELECT direction FROM conversation_messages ORDER BY created_at, direction DESC")
    assert [d for (d,) in thread] == ["inbound", "outbound", "inbound", "inbound", "outbound"]


def test_help_gets_the_churchs_help_text(send, tenant, pool, hooks):
    pool.run("UPDATE churches SET help_text = 'First Church: call 312-555-0100. Reply STOP to opt out.'")
    text_from(hooks, tenant, tenant.members[0], "INFO")
    assert [[unseal(body, "text"), purpose] for body, purpose in pool.run("SELECT body_enc, purpose FROM messages")] == [
        ["First Church: call 312-555-0100. Reply STOP to opt out.", "compliance"]
    ]


def test_a_reply_that_reads_like_stop_is_flagged_not_obeyed(send, tenant, pool, hooks):
    text_from(hooks, tenant, tenant.members[0], "please stop texting me")
    assert pool.run("SELECT count(*) FROM opt_outs")[0][0] == 0
    assert pool.run("SELECT action FROM opt_out_events") == [["flagged"]]
    listing = send.get("/conversations", headers=tenant.auth).get_json()
    assert listing["data"][0]["needs_review"] is True


def test_a_text_to_a_number_nobody_owns_is_acknowledged_and_dropped(tenant, pool, hooks):
    body = envelope("message.received", inbound_payload(tenant.members[0], "+13125550777", "hello?"))
    assert hooks(body)["result"] == "applied"
    assert pool.run("SELECT count(*) FROM conversations")[0][0] == 0


def test_a_malformed_but_signed_event_is_400(signer, env):
    client = function_client("webhooks")
    body = json.dumps({"data": {"event_type": "message.finalized", "id": "e1", "payload": {"id": "p"}}}).encode()
    answer = client.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
    assert answer.status_code == 400 and answer.get_json()["error"]["field"] == "data.payload.to"


def test_webhook_bookkeeping_older_than_a_week_is_pruned(send, tenant, pool, hooks):
    mid, pid = sent_message(send, tenant, pool)
    hooks(envelope("message.finalized", outbound_payload(pid, mid, "delivered")))
    text_from(hooks, tenant, tenant.members[0], "Amen")
    assert receipts.prune(pool) == 0  # all fresh
    pool.run("UPDATE webhook_events SET received_at = now() - interval '8 days'")
    pool.run("UPDATE carrier_receipts SET received_at = now() - interval '8 days'")
    assert receipts.prune(pool) == 3  # two event ids and the receipt
    assert pool.run("SELECT status FROM messages WHERE id = CAST(:id AS uuid)", id=mid) == [["delivered"]]
