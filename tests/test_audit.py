"""The audit log: each security-relevant action writes its entry, nothing can change or remove one, and no
entry ever holds a phone number or a message text.

Actions are driven through their real entry points: the dlq-drain function and ``koinonia dlq`` (replay,
purge), signed STOP/START webhooks and a carrier 40300 (opt-out, opt-in), the send function's
``POST /privacy/deletions`` (data deletion). The audit module (common/audit.py) and its append-only
trigger are migration 0006's; these tests are about who writes what.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import phonenumbers
import pytest

from common import audit, constants
from common.consume import ConsumeBudget, run_consumer
from common.runtime import get_runtime
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, set_env
from tests.webhook_signing import Signer, envelope, inbound_payload

OPERATOR_TOKEN = "op-" + "Zq8Lm" * 8
MEMBERS = numbers(3, area="415")
STRANGER = numbers(1, area="773")[0]
TEXTS = ["Choir practice moved to 7pm", "Can someone drive Ruth to church?", "Welcome to Second Church"]


@pytest.fixture
def signer(send_env, monkeypatch) -> Signer:
    s = Signer()
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: s.public_key, "OPERATOR_TOKEN": OPERATOR_TOKEN})
    return s


@pytest.fixture
def church(signer, pool) -> Tenant:
    return make_church(pool, "First Church", sender="+13125550100", members=MEMBERS)


@pytest.fixture
def other(signer, pool) -> Tenant:
    return make_church(pool, "Second Church", sender="+13125550199", members=[STRANGER])


@pytest.fixture
def send(signer):
    return function_client("send")


@pytest.fixture
def dlq(signer):
    return function_client("dlq-drain")


@pytest.fixture
def text_church(signer):
    client = function_client("webhooks")

    def post(tenant: Tenant, member: str, text: str) -> None:
        body = envelope("message.received", inbound_payload(member, tenant.sender, text))
        answer = client.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
        assert answer.status_code == 200, answer.get_json()

    return post


def drain() -> None:
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=30, stop_when_idle=True)))


def dead_letters(send, tenant: Tenant, pool, sandbox, to: list[str]) -> list[str]:
    """Messages the carrier refuses for good: one dead letter each; their ids."""
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    answer = send.post("/messages", json={"channel": "sms", "to": to, "text": TEXTS[0]}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    drain()
    sandbox.configure(rules={})
    rows = pool.run("SELECT id::text FROM dead_letters WHERE church_id = CAST(:c AS uuid) ORDER BY id", c=tenant.church_id)
    assert len(rows) >= len(to)
    return [r[0] for r in rows]


def entries(pool, action: str) -> list[dict[str, Any]]:
    rows = pool.run(
        "SELECT church_id::text, actor, target, details FROM audit_log WHERE action = :a ORDER BY id", a=action
    )
    return [{"church_id": c, "actor": a, "target": t, "details": d} for c, a, t, d in rows]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_nothing_identifying(pool, numbers_used: list[str], texts: list[str]) -> None:
    rows = [r[0] for r in pool.run("SELECT row_to_json(a)::text FROM audit_log a")]
    assert rows, "no audit entries at all: the test would prove nothing"
    for number in numbers_used:
        national = phonenumbers.national_significant_number(phonenumbers.parse(number, None))
        for row in rows:
            for value in _strings(json.loads(row)):
                assert national not in re.sub(r"\D", "", value), f"a number in the audit log: {row}"
    for text in texts:
        assert not any(text in row for row in rows), f"a message text in the audit log: {text}"


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


# -- dead letters -------------------------------------------------------------------------------------------


def test_replay_writes_one_entry_per_church_with_the_callers_actor(send, dlq, church, other, pool, sandbox):
    ours = dead_letters(send, church, pool, sandbox, MEMBERS[:2])
    theirs = dead_letters(send, other, pool, sandbox, [STRANGER])

    answer = dlq.post("/dead-letters/replay", json={"ids": [ours[0], theirs[0]]}, headers=church.auth)
    assert answer.status_code == 200 and answer.get_json()["replayed"] == 1  # the other church's id: not found
    [entry] = entries(pool, "dead_letters.replayed")
    assert entry == {"church_id": church.church_id, "actor": f"church:{church.api_key.split('_')[1]}",
                     "target": f"church:{church.church_id}", "details": {"count": 1, "dead_letter_ids": [ours[0]]}}  # fmt: skip

    again = dlq.post("/dead-letters/replay", json={"ids": [ours[0]]}, headers=church.auth)
    assert again.get_json()["skipped"] == 1
    assert len(entries(pool, "dead_letters.replayed")) == 1  # nothing replayed, nothing recorded

    # The operator's filter replay spans churches: each church's trail gets its own entry.
    everything = dlq.post("/dead-letters/replay", json={"filter": {}}, headers=bearer(OPERATOR_TOKEN))
    assert everything.get_json()["replayed"] == 2
    operator = [e for e in entries(pool, "dead_letters.replayed") if e["actor"] == "operator"]
    assert {e["church_id"]: e["details"]["dead_letter_ids"] for e in operator} == {
        church.church_id: [ours[1]], other.church_id: [theirs[0]]}  # fmt: skip
    assert_nothing_identifying(pool, [*MEMBERS, STRANGER], TEXTS)


def test_purge_writes_its_entry_and_the_cli_is_named_as_actor(send, dlq, church, other, pool, sandbox, capsys):
    import common.cli

    ours = dead_letters(send, church, pool, sandbox, MEMBERS)
    theirs = dead_letters(send, other, pool, sandbox, [STRANGER])
    answer = dlq.post("/dead-letters/purge", json={"ids": [ours[0]]}, headers=church.auth)
    assert answer.status_code == 200 and answer.get_json()["purged"] == 1
    assert entries(pool, "dead_letters.purged") == [{
        "church_id": church.church_id, "actor": f"church:{church.api_key.split('_')[1]}",
        "target": f"church:{church.church_id}",
        "details": {"count": 1, "dead_letter_ids": [ours[0]]}}]  # fmt: skip

    assert common.cli.main(["dlq", "purge", "--code", "40310", "--yes", "--batch-size", "1"]) == 0
    capsys.readouterr()
    by_cli = [e for e in entries(pool, "dead_letters.purged") if e["actor"] == "cli"]
    assert len(by_cli) == 3  # one per batch of one
    assert sorted(i for e in by_cli for i in e["details"]["dead_letter_ids"]) == sorted([*ours[1:], *theirs])
    assert {e["church_id"] for e in by_cli} == {church.church_id, other.church_id}
    assert common.cli.main(["dlq", "replay", "--all"]) == 0  # nothing left to replay: no entry
    assert entries(pool, "dead_letters.replayed") == []
    assert_nothing_identifying(pool, [*MEMBERS, STRANGER], TEXTS)


# -- opt-outs ------------------------------------------------------------------------------------------------------


def test_stop_and_start_are_audited_by_event_id_without_the_number(send, text_church, church, pool, sandbox):
    member = MEMBERS[0]
    text_church(church, member, "STOP")
    [event_id] = [r[0] for r in pool.run("SELECT id FROM opt_out_events WHERE action = 'opt_out'")]
    assert entries(pool, "opt_out.recorded") == [{
        "church_id": church.church_id, "actor": "member:keyword", "target": f"opt_out_event:{event_id}",
        "details": {"source": "keyword", "keyword": "STOP", "channel": "sms"}}]  # fmt: skip
    text_church(church, member, "START")
    [event_id] = [r[0] for r in pool.run("SELECT id FROM opt_out_events WHERE action = 'opt_in'")]
    assert entries(pool, "opt_in.recorded") == [{
        "church_id": church.church_id, "actor": "member:keyword", "target": f"opt_out_event:{event_id}",
        "details": {"source": "keyword", "keyword": "START", "channel": "sms"}}]  # fmt: skip
    text_church(church, member, "please stop texting me")  # flagged for review: not an opt-out, not audited
    assert pool.run("SELECT count(*) FROM opt_out_events WHERE action = 'flagged'")[0][0] == 1
    assert pool.run("SELECT count(*) FROM audit_log")[0][0] == 2
    # The carrier's own refusal (40300) is an opt-out too, recorded on the send path.
    blocked = MEMBERS[1]
    sandbox.configure(rules={blocked: "blocked"})
    answer = send.post("/messages", json={"channel": "sms", "to": blocked, "text": TEXTS[1]}, headers=church.auth)
    assert answer.status_code == 202
    drain()
    carrier = [e for e in entries(pool, "opt_out.recorded") if e["actor"] == "carrier"]
    assert len(carrier) == 1 and carrier[0]["details"]["source"] == "carrier_40300"
    assert_nothing_identifying(pool, MEMBERS, [*TEXTS, "please stop texting me"])


# -- deletion, the trail per church, append-only ---------------------------------------------------------------------


def test_a_deletion_is_audited_and_each_church_reads_only_its_own_trail(send, text_church, church, other, pool):
    text_church(church, MEMBERS[0], "STOP")
    text_church(other, STRANGER, "STOP")
    answer = send.post("/privacy/deletions", json={"phone": MEMBERS[0]}, headers=church.auth)
    assert answer.status_code == 202
    [entry] = entries(pool, "data.deleted")
    prefix = church.api_key.split("_")[1]
    assert entry["church_id"] == church.church_id and entry["actor"] == f"church:{prefix}"
    assert entry["target"].startswith("contact:") and entry["details"]["scope"] == "person"
    assert entry["details"]["opt_out_events"] == 1 and entry["details"]["suppression_kept"] is True

    ours = audit.list_for_church(pool, church.church_id, limit=50)
    assert [e.action for e in ours] == ["data.deleted", "opt_out.recorded"]  # newest first
    theirs = audit.list_for_church(pool, other.church_id, limit=50)
    assert [e.action for e in theirs] == ["opt_out.recorded"]
    # The erased person's opt-out entry stays, and names nobody (its event is gone).
    assert pool.run("SELECT count(*) FROM opt_out_events WHERE church_id = CAST(:c AS uuid)", c=church.church_id) == [[0]]
    assert_nothing_identifying(pool, [*MEMBERS, STRANGER], [])


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"],
)
def test_the_audit_log_refuses_every_change(pool, statement):
    audit.record(pool, "data.deleted", actor="cli", target="church:x", details={"rows": 1})
    with pytest.raises(Exception, match="audit_log is append-only"):
        pool.run(statement)
    assert pool.run("SELECT actor, target FROM audit_log") == [["cli", "church:x"]]
