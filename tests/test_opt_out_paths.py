"""No message, bulk or conversational, reaches a person who opted out: on every path that sends.

The opt-out always arrives *after* the message was accepted, as a signed ``message.received`` STOP
webhook posted to the webhooks function, so what is proven here is the claim-time rule
(common/messages/store.py ``CLAIM_SQL``), not accept-time suppression. Each path is driven for real:
PostgreSQL, Redis, the consumer, the retry-scheduler, the dlq-drain function and our sandbox carrier,
whose ledger is the evidence of what actually went out.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common import constants
from common.consume import ConsumeBudget, ConsumeReport, run_consumer
from common.privacy.crypto import unseal
from common.runtime import get_runtime
from common.scheduler import Scheduler
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, set_env
from tests.webhook_signing import envelope, inbound_payload

# -- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture
def tenant(signer, pool) -> Tenant:
    return make_church(pool, members=numbers(3, area="415"))


@pytest.fixture
def send(signer):
    return function_client("send")


@pytest.fixture
def text_from(signer, tenant):
    """A member texts the church's number, as Telnyx would post it (signed)."""
    client = function_client("webhooks")

    def post(member: str, text: str, *, autoresponse: str | None = None) -> dict[str, Any]:
        body = envelope("message.received", inbound_payload(member, tenant.sender, text, autoresponse_type=autoresponse))
        answer = client.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    return post


def drain(**budget: Any) -> ConsumeReport:
    budget = {"max_seconds": 30, "stop_when_idle": True, **budget}
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(**budget)))


def broadcast(send, tenant: Tenant, **extra: Any) -> dict[str, str]:
    """A group broadcast to every member; ``{member: message_id}``."""
    answer = send.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "Potluck at 6", **extra},
                       headers=tenant.auth)  # fmt: skip
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert body["counts"]["suppressed"] == 0  # nobody has opted out yet: the accept let everyone through
    return {r["to"]: r["message_id"] for r in body["recipients"]}


def rows(pool, ids: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """``{member: (status, last_error_code)}``."""
    found = pool.run("SELECT to_enc, status, last_error_code FROM messages WHERE id = ANY(CAST(:ids AS uuid[]))",
                     ids=list(ids.values()))  # fmt: skip
    return {unseal(to, "address"): (status, code) for to, status, code in found}


def assert_only_the_stopper_was_spared(pool, sandbox, ids: dict[str, str], stopper: str) -> None:
    by_to = sandbox.ledger.by_to()
    assert stopper not in by_to, f"the carrier accepted {by_to.get(stopper)} text(s) to the opted-out member"
    others = [m for m in ids if m != stopper]
    assert {m: by_to.get(m) for m in others} == dict.fromkeys(others, 1)
    assert sandbox.ledger.duplicates == 0
    state = rows(pool, ids)
    assert state[stopper] == ("suppressed", "opted_out")
    assert {m: state[m][0] for m in others} == dict.fromkeys(others, "sent")
    [[finalized]] = pool.run("SELECT finalized_at IS NOT NULL FROM messages WHERE id = CAST(:id AS uuid)", id=ids[stopper])
    assert finalized


def stop(text_from, pool, tenant: Tenant, member: str) -> None:
    """STOP, already answered by the carrier (autoresponse_type), so we send no confirmation of our own."""
    text_from(member, "STOP", autoresponse="STOP")
    opted_out = pool.run("SELECT address_enc FROM opt_outs WHERE church_id = CAST(:c AS uuid)", c=tenant.church_id)
    assert [unseal(a, "address") for (a,) in opted_out] == [member]
    assert pool.run("SELECT count(*) FROM messages WHERE purpose = 'compliance'")[0][0] == 0


# -- the paths -------------------------------------------------------------------------------------------------


def test_queued_a_broadcast_waiting_in_redis_is_not_sent_to_who_stopped_since(send, tenant, pool, text_from, sandbox):
    ids = broadcast(send, tenant)
    assert get_runtime().queue.holds(list(ids.values())) == [True] * 3  # handed to Redis, not yet consumed
    stopper = tenant.members[1]
    stop(text_from, pool, tenant, stopper)

    report = drain()
    assert (report.sent, report.suppressed) == (2, 1)
    assert_only_the_stopper_was_spared(pool, sandbox, ids, stopper)
    assert sandbox.ledger.attempts == 2  # not even attempted


def test_retried_a_retry_after_a_carrier_failure_is_not_sent_to_who_stopped_since(send, tenant, pool, text_from,
                                                                                  sandbox):  # fmt: skip
    stopper = tenant.members[0]
    sandbox.configure(rules={stopper: "fail_first:1"})  # 503 once, then it would be accepted
    ids = broadcast(send, tenant)
    first = drain(max_messages=3)  # one attempt each: stop before the retry comes due
    assert (first.sent, first.retrying) == (2, 1)
    assert rows(pool, ids)[stopper][0] == "retrying"
    assert sandbox.ledger.by_status() == {200: 2, 503: 1}

    stop(text_from, pool, tenant, stopper)
    # Test setup, not synchronisation: make the retry due now instead of in ~1 s, in PostgreSQL and in
    # Redis's delayed set (the two clocks the product keeps for it), so the scheduler's pass promotes it.
    pool.run("UPDATE messages SET next_attempt_at = now() WHERE id = CAST(:id AS uuid)", id=ids[stopper])
    queue = get_runtime().queue
    assert queue.client.zadd(queue.keys.delayed, {ids[stopper]: int(datetime.now(UTC).timestamp() * 1000) - 1000},
                             xx=True, ch=True) == 1  # fmt: skip
    scheduler = Scheduler(get_runtime())
    scheduler.one_pass()
    assert scheduler.report.promoted == 1

    second = drain()
    assert (second.dequeued, second.claimed, second.suppressed) == (1, 0, 1)
    assert sandbox.ledger.attempts == 3  # the failed first attempt and the two others: no retry went out
    assert_only_the_stopper_was_spared(pool, sandbox, ids, stopper)


def test_replayed_a_dead_letter_replayed_after_stop_is_not_sent(send, tenant, pool, text_from, sandbox):
    stopper = tenant.members[2]
    sandbox.configure(rules={stopper: "invalid"})  # 400 / 40310: permanent, a dead letter
    ids = broadcast(send, tenant)
    drain()
    assert rows(pool, ids)[stopper] == ("failed", "40310")
    [[dead_letter]] = pool.run("SELECT id::text FROM dead_letters WHERE message_id = CAST(:m AS uuid)", m=ids[stopper])

    stop(text_from, pool, tenant, stopper)
    sandbox.configure(rules={})  # "the number was fixed": only the opt-out may keep the replay from going out
    answer = function_client("dlq-drain").post("/dead-letters/replay", json={"ids": [dead_letter]}, headers=tenant.auth)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["replayed"], body["enqueued"], body["left_queued"]) == (1, 1, 0), body
    assert rows(pool, ids)[stopper] == ("queued", None)

    report = drain()
    assert (report.claimed, report.suppressed) == (0, 1)
    assert sandbox.ledger.attempts == 3  # the original three; the replay never reached the carrier
    assert_only_the_stopper_was_spared(pool, sandbox, ids, stopper)


def test_inline_a_send_waiting_in_postgresql_with_queues_off_is_not_sent_to_who_stopped(send, tenant, pool, text_from,
                                                                                       sandbox, monkeypatch):  # fmt: skip
    set_env(monkeypatch, **{constants.ENABLE_QUEUES_ENV: "false"})
    send_at = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    ids = broadcast(function_client("send"), tenant, send_at=send_at)
    assert set(rows(pool, ids).values()) == {("scheduled", None)}  # waiting in PostgreSQL alone

    stopper = tenant.members[0]
    stop(text_from, pool, tenant, stopper)
    # Test setup, not synchronisation: bring send_at forward to now, so the scheduler finds the rows due.
    pool.run("UPDATE messages SET next_attempt_at = now() WHERE id = ANY(CAST(:ids AS uuid[]))", ids=list(ids.values()))
    scheduler = Scheduler(get_runtime())
    scheduler.one_pass()  # queues off: the pass claims and sends inline
    assert scheduler.report.inline_passes == 1
    assert (scheduler.report.inline_sent, scheduler.report.inline_other) == (2, 1)
    assert_only_the_stopper_was_spared(pool, sandbox, ids, stopper)


def test_conversational_a_one_to_one_text_is_suppressed_too(send, tenant, pool, text_from, sandbox):
    member, bystander = tenant.members[0], tenant.members[1]
    ids = {}
    for to in (member, bystander):
        answer = send.post("/messages", json={"channel": "sms", "to": to, "text": "Are you coming Sunday?"},
                           headers=tenant.auth)  # fmt: skip
        assert answer.status_code == 202, answer.get_json()
        ids[to] = answer.get_json()["recipients"][0]["message_id"]
    lanes = pool.run("SELECT DISTINCT lane FROM messages")
    assert lanes == [["conv"]]

    stop(text_from, pool, tenant, member)
    report = drain()
    assert (report.sent, report.suppressed) == (1, 1)
    assert_only_the_stopper_was_spared(pool, sandbox, ids, member)


def test_the_stop_confirmation_alone_reaches_the_opted_out_member_once(send, tenant, pool, text_from, sandbox):
    member = tenant.members[0]
    ids = broadcast(send, tenant)  # accepted before the STOP, still queued
    text_from(member, "Stop")  # no autoresponse_type: the carrier left the confirmation to us
    confirmations = pool.run("SELECT id::text, purpose, lane, to_enc FROM messages WHERE purpose = 'compliance'")
    assert [[*c[1:3], unseal(c[3], "address")] for c in confirmations] == [["compliance", "conv", member]]
    text_from(member, "STOP")  # already out: no second confirmation
    assert pool.run("SELECT count(*) FROM messages WHERE purpose = 'compliance'")[0][0] == 1

    drain()
    assert sandbox.ledger.by_to()[member] == 1  # the confirmation, and nothing else
    [[status, body]] = pool.run("SELECT status, body_enc FROM messages WHERE id = CAST(:id AS uuid)", id=confirmations[0][0])
    assert status == "sent" and "START" in unseal(body, "text")
    state = rows(pool, ids)
    assert state[member] == ("suppressed", "opted_out")  # the broadcast queued before the STOP was not

    refused = send.post("/messages", json={"channel": "sms", "to": member, "text": "We miss you"}, headers=tenant.auth)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "recipients_opted_out"
    drain()
    assert sandbox.ledger.by_to()[member] == 1


@pytest.mark.parametrize(
    ("keyword", "autoresponse"),
    [("START", "START"), ("unstop", "START"), ("Start", None), ("YES", None)],
)
def test_opting_back_in_after_stop_lets_the_next_send_through(send, tenant, pool, text_from, sandbox, keyword,
                                                              autoresponse):  # fmt: skip
    member = tenant.members[0]
    stop(text_from, pool, tenant, member)
    text_from(member, keyword, autoresponse=autoresponse)
    assert pool.run("SELECT count(*) FROM opt_outs")[0][0] == 0
    confirmations = pool.run("SELECT count(*) FROM messages WHERE purpose = 'compliance'")[0][0]
    assert confirmations == (0 if autoresponse else 1)  # ours only when the carrier did not answer

    answer = send.post("/messages", json={"channel": "sms", "to": member, "text": "Welcome back"}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    [entry] = answer.get_json()["recipients"]
    assert entry["status"] == "queued"
    drain()
    assert rows(pool, {member: entry["message_id"]}) == {member: ("sent", None)}
    assert sandbox.ledger.by_to() == {member: 1 + confirmations}
