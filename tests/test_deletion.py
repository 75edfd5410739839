"""Data deletion (common/privacy): a person's erasure and a church's deletion leave nothing identifying.

Everything is built through the real paths: sends through the send function, the consumer and our sandbox
carrier (sent, delivered, dead-lettered, retrying, in flight, queued, scheduled), members' texts and STOP
as signed webhooks. After a deletion the test dumps *every* table of the database (found in the catalog,
so a table added later is covered without touching this file) and every Redis key under the test's
prefix, and looks for the person's number in any format (every string's digits, so E.164, national and
formatted numbers alike) and for every text they sent or were sent. Numbers and texts are sealed at rest
(common/privacy/crypto.py), so the search also opens every sealed value it meets (a ``bytea`` that opens
under the test's keys, whatever its column) and looks inside, and looks for the person's lookup hashes
(their number's and email's, under every church the dump names) in every ``bytea``. The one hash kept on
purpose is an erasure suppression's (common/privacy/suppression.py): checked by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pytest

from common.billing.usage import UNBILLED_STATUSES, usage_for_current_period
from common.compliance import opt_outs
from common.consume import ConsumeBudget, ConsumeReport, run_consumer
from common.dead_letters import retention
from common.dead_letters.access import Scope
from common.dead_letters.replay import replay_ids
from common.messages import store
from common.privacy.crypto import DecryptionError, lookup_hash, seal, unseal
from common.privacy.deletion import ERASED, delete_church, delete_person
from common.queue import MessageQueue
from common.runtime import get_runtime
from tests.factories import Tenant, add_contact, make_church, numbers
from tests.helpers import function_client
from tests.media_server import UNCHECKABLE_MEDIA_URL
from tests.webhook_signing import envelope, inbound_payload, outbound_payload

PERSON = "+16302000007"  # the person who asks to be erased
PERSON_FORMATS = ("+16302000007", "16302000007", "6302000007", "(630) 200-0007", "630-200-0007", "630.200.0007")
PERSON_EMAIL = "ruth.adeyemi@example.org"  # on their contact: their mail opt-out goes too
OTHERS = numbers(2, area="415")  # fellow members of the same church
STRANGER = numbers(1, area="773")[0]  # a member of another church

# Every text the person sent or was sent that nobody else was sent.
PERSON_TEXTS = {
    "inbound": "Please pray for my mother, her surgery is on Tuesday",
    "sent": "Praying for your mother today, call me anytime",
    "dead_archived": "Your small group moved to Thursday at 7",
    "dead": "Choir robes are ready for pickup in room 12",
    "retrying": "Baptism class tonight at 6, bring your sponsor",
    "sending": "Could you usher at the early service next Sunday?",
    "queued": "Bible study notes for Romans 8 are on the website",
    "scheduled": "Easter brunch RSVP closes Friday",
}
BULK_TEXT = "Potluck Sunday after the 10am service"  # also sent to others: it stays in their rows


# -- dumps ---------------------------------------------------------------------------------------------------


def dump_database(pool) -> dict[str, list[str]]:
    """Every row of every table of the database, as JSON text, per table (sorted: comparable)."""
    tables = [r[0] for r in pool.run(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE' ORDER BY table_name")]  # fmt: skip
    assert {"messages", "broadcasts", "audit_log", "erasure_suppressions", "usage_archive"} <= set(tables)
    return {t: sorted(r[0] for r in pool.run(f'SELECT row_to_json(t)::text FROM "{t}" t')) for t in tables}


def dump_redis(client, prefix: str) -> dict[str, str]:
    """Every key under the test's prefix with its whole value, whatever its type."""
    out: dict[str, str] = {}
    for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = f"<{kind}>"
        out[key] = json.dumps(value, sort_keys=True, default=str)
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _opened(value: str) -> list[str]:
    """A ``bytea`` as row_to_json writes it (``\\x<hex>``) that is a sealed value: the strings it holds."""
    if not value.startswith("\\x"):
        return []
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        return []
    for kind in ("address", "text", "name", "answer"):
        try:
            text = unseal(raw, kind)
        except DecryptionError:
            continue
        return [text, *(_strings(json.loads(text)) if kind == "answer" else [])]
    return []


def hashes_of(addresses: list[str], church_ids: set[str]) -> set[str]:
    """The lookup hashes of ``addresses`` under each church, as row_to_json writes a ``bytea``."""
    return {"\\x" + lookup_hash(c, a).hex() for c in church_ids for a in addresses}


def traces(texts: list[str], number: str | None, bodies: list[str], hashes: Collection[str] = ()) -> list[str]:
    """The texts (JSON) in which ``number`` (in any format: its national digits) or one of ``bodies`` appears,
    in plaintext or inside a sealed value, or that hold one of ``hashes``."""
    national = phonenumbers.national_significant_number(phonenumbers.parse(number, None)) if number else None

    def names(value: str) -> bool:
        return bool(national and national in _digits(value)) or any(body in value for body in bodies)

    found = []
    for text in texts:
        for s in _strings(json.loads(text)):
            if s in hashes or names(s) or any(names(o) for o in _opened(s)):
                found.append(text)
                break
    return found


def church_ids_in(dump: dict[str, list[str]]) -> set[str]:
    """Every church id the dump names (a row's ``church_id``, a church's ``id``)."""
    ids = {str(row["id"]) for row in map(json.loads, dump.get("churches", []))}
    return ids | {str(c) for rows in dump.values() for row in map(json.loads, rows) if (c := row.get("church_id"))}


def db_traces(pool, number: str, bodies: list[str], emails: tuple[str, ...] = ()) -> dict[str, list[str]]:
    dump = dump_database(pool)
    hashes = hashes_of([number, *emails], church_ids_in(dump))
    # An erasure suppression is the number's lookup hash, kept on purpose: the tests check it by itself.
    return {
        t: hits for t, rows in dump.items()
        if (hits := traces(rows, number, [*bodies, *emails], set() if t == "erasure_suppressions" else hashes))
    }  # fmt: skip


def redis_traces(client, prefix: str, number: str, bodies: list[str]) -> dict[str, str]:
    national = phonenumbers.national_significant_number(phonenumbers.parse(number, None))
    return {
        k: v for k, v in dump_redis(client, prefix).items()
        if national in _digits(k) or traces([v], number, bodies) or any(national in _digits(s) for s in _strings(json.loads(v)))
    }  # fmt: skip


def queue_state(client, prefix: str) -> dict[str, str]:
    """The queue's content (ids and where they are), without the rate buckets and wake tokens that expire."""
    return {k: v for k, v in dump_redis(client, prefix).items() if ":q:" in k and not re.search(r":q:(bucket|account|wake)", k)}


# -- fixtures and helpers --------------------------------------------------------------------------------------


@pytest.fixture
def send(signer):
    return function_client("send")


@pytest.fixture
def hooks(signer):
    client = function_client("webhooks")

    def post(body: bytes) -> dict[str, Any]:
        answer = client.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    return post


def text_church(hooks, tenant: Tenant, member: str, text: str) -> None:
    """The member texts the church's number (a signed message.received, as Telnyx posts it)."""
    hooks(envelope("message.received", inbound_payload(member, tenant.sender, text)))


def drain(**budget: Any) -> ConsumeReport:
    budget = {"max_seconds": 30, "stop_when_idle": True, **budget}
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(**budget)))


def post(send, tenant: Tenant, **body: Any) -> dict[str, Any]:
    answer = send.post("/messages", json={"channel": "sms", **body}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def text_to(send, tenant: Tenant, to: str, text: str, **extra: Any) -> str:
    return post(send, tenant, to=to, text=text, **extra)["recipients"][0]["message_id"]


def status_of(pool, message_id: str) -> str:
    return str(pool.run("SELECT status FROM messages WHERE id = CAST(:id AS uuid)", id=message_id)[0][0])


def subscribe(pool, tenant: Tenant) -> None:
    now = datetime.now(UTC)
    pool.run(
        "INSERT INTO subscriptions (id, church_id, plan, status, segment_allowance, period_start, period_end)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'standard', 'active', 10000, :s, :e)",
        id=str(uuid.uuid4()), c=tenant.church_id, s=now - timedelta(days=1), e=now + timedelta(days=29),
    )  # fmt: skip


def usage(pool, tenant: Tenant) -> int:
    found = usage_for_current_period(pool, uuid.UUID(tenant.church_id), now=datetime.now(UTC))
    assert found is not None
    return found.used


def church_rows(pool, church_id: str) -> dict[str, list[str]]:
    """Every row anywhere that names this church."""
    return {t: hits for t, rows in dump_database(pool).items() if (hits := [r for r in rows if church_id in r])}


def add_member(pool, tenant: Tenant, phone: str) -> None:
    contact = add_contact(pool, tenant.church_id, phone)
    pool.run("INSERT INTO group_members (group_id, contact_id) VALUES (CAST(:g AS uuid), CAST(:c AS uuid))",
             g=tenant.group_id, c=contact)  # fmt: skip


def erase(send, tenant: Tenant, phone: str) -> dict[str, Any]:
    answer = send.post("/privacy/deletions", json={"phone": phone}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


# -- a person ----------------------------------------------------------------------------------------------------


@pytest.fixture
def church(signer, pool) -> Tenant:
    tenant = make_church(pool, "First Church", sender="+13125550100", members=[PERSON, *OTHERS])
    subscribe(pool, tenant)
    return tenant


def give_person_an_email(pool, tenant: Tenant) -> None:
    """The person's contact has an email address too, and they opted out of the church's mail."""
    with pool.transaction() as conn:
        conn.run(
            "UPDATE contacts SET email_enc = :e, email_hash = :h WHERE church_id = CAST(:c AS uuid) AND phone_hash = :p",
            e=seal(PERSON_EMAIL, "address"), h=lookup_hash(tenant.church_id, PERSON_EMAIL), c=tenant.church_id,
            p=lookup_hash(tenant.church_id, PERSON),
        )  # fmt: skip
        opt_outs.opt_out(conn, tenant.church_id, PERSON_EMAIL, source="api", channel="mail")


@pytest.fixture
def other_church(signer, pool) -> Tenant:
    tenant = make_church(pool, "Second Church", sender="+13125550199", members=[STRANGER])
    subscribe(pool, tenant)
    return tenant


@pytest.fixture
def person_history(send, hooks, church, other_church, pool, sandbox) -> dict[str, str]:
    """The person's whole life with the church, one message in every state; ``{kind: message id}``."""
    ids: dict[str, str] = {}
    text_church(hooks, church, PERSON, PERSON_TEXTS["inbound"])
    ids["sent"] = text_to(send, church, PERSON, PERSON_TEXTS["sent"])
    drain()
    [[pid]] = pool.run("SELECT provider_message_id FROM messages WHERE id = CAST(:id AS uuid)", id=ids["sent"])
    hooks(envelope("message.finalized", outbound_payload(pid, ids["sent"], "delivered", to=PERSON)))
    assert status_of(pool, ids["sent"]) == "delivered"
    bulk = post(send, church, groups=[church.group_id], text=BULK_TEXT)
    ids["bulk"] = next(r["message_id"] for r in bulk["recipients"] if r["to"] == PERSON)
    drain()
    sandbox.configure(rules={PERSON: "invalid"})
    ids["dead_archived"] = text_to(send, church, PERSON, PERSON_TEXTS["dead_archived"])
    drain()
    assert retention.archive_older_than(pool, Scope.church(church.church_id), 0).done == 1
    ids["dead"] = text_to(send, church, PERSON, PERSON_TEXTS["dead"])
    drain()
    assert {status_of(pool, ids[k]) for k in ("dead_archived", "dead")} == {"failed"}
    sandbox.configure(rules={PERSON: "5xx"})
    ids["retrying"] = text_to(send, church, PERSON, PERSON_TEXTS["retrying"], max_attempts=4)
    drain(max_messages=1)  # one attempt: a retry is due in about a second
    assert status_of(pool, ids["retrying"]) == "retrying"
    sandbox.configure(rules={})
    ids["sending"] = text_to(send, church, PERSON, PERSON_TEXTS["sending"])
    claim = store.claim(pool, [ids["sending"]], lease_s=60)  # a consumer holds it, about to call the carrier
    assert [m.id for m in claim.sendable] == [ids["sending"]]
    ids["sending_token"] = claim.token
    ids["queued"] = text_to(send, church, PERSON, PERSON_TEXTS["queued"])
    ids["scheduled"] = text_to(send, church, PERSON, PERSON_TEXTS["scheduled"],
                               send_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())  # fmt: skip
    assert status_of(pool, ids["scheduled"]) == "scheduled"
    # Others' business, which must survive untouched.
    text_church(hooks, church, OTHERS[0], "Thank you for the visit yesterday")
    ids["other_queued"] = text_to(send, church, OTHERS[0], "See you at rehearsal")
    # The church typed the person's number with a digit too many: refused, and kept as typed in the answer.
    mistyped = post(send, church, to=[OTHERS[1], "630 200 0007 9"], text="Men's breakfast Saturday", skip_invalid=True)
    assert mistyped["invalid"][0]["value"] == "630 200 0007 9"
    ids["stranger"] = text_to(send, other_church, STRANGER, "Welcome to Second Church")
    # Last, the person texts STOP: opted out, with our confirmation queued and threaded.
    text_church(hooks, church, PERSON, "STOP")
    [[reply]] = pool.run("SELECT id::text FROM messages WHERE purpose = 'compliance'")
    ids["confirmation"] = reply
    give_person_an_email(pool, church)
    return ids


def test_erasing_a_person_leaves_nothing_identifying_in_postgresql_or_redis(
    send, church, other_church, person_history, pool, sandbox, redis_gate, caplog
):
    ids = person_history
    client, prefix = redis_gate.client, redis_gate.prefix
    bodies = list(PERSON_TEXTS.values())
    emails = (PERSON_EMAIL,)
    # The setup really left the person everywhere: the test can fail. Each search finds them on its own:
    # in what the sealed values say, and by their lookup hashes.
    everywhere = {
        "contacts", "conversations", "conversation_messages", "messages", "broadcasts", "opt_outs", "opt_out_events",
    }  # fmt: skip
    assert set(db_traces(pool, PERSON, bodies, emails)) >= everywhere
    dump = dump_database(pool)
    by_hash = hashes_of([PERSON, PERSON_EMAIL], {church.church_id})
    assert {t for t, rows in dump.items() if traces(rows, None, [], by_hash)} >= everywhere - {
        "conversation_messages", "broadcasts"}  # fmt: skip
    assert {t for t, rows in dump.items() if traces(rows, PERSON, [*bodies, PERSON_EMAIL])} >= everywhere
    assert not any(fmt in row for rows in dump.values() for row in rows for fmt in [*PERSON_FORMATS, *bodies]), (
        "plaintext at rest")  # fmt: skip
    person_hash = lookup_hash(church.church_id, PERSON)
    queue = MessageQueue(client, prefix)
    pending = [ids[k] for k in ("retrying", "sending", "queued", "scheduled", "confirmation")]
    assert queue.holds(pending) == [True] * len(pending)
    usage_before = {t.church_id: usage(pool, t) for t in (church, other_church)}
    others_before = pool.run(
        "SELECT id::text, to_enc, body_enc, status FROM messages WHERE to_hash <> :p ORDER BY id", p=person_hash
    )
    assert {unseal(to, "address") for _, to, _, _ in others_before} == {*OTHERS, STRANGER}
    other_conversations = pool.run(
        "SELECT c.contact_enc, m.body_enc FROM conversations c JOIN conversation_messages m ON m.conversation_id = c.id"
        " WHERE c.contact_hash <> :p ORDER BY m.id", p=person_hash,
    )  # fmt: skip
    second_church_before = church_rows(pool, other_church.church_id)
    sent_to_person = sandbox.ledger.by_to().get(PERSON, 0)

    with caplog.at_level(logging.DEBUG):
        answer = erase(send, church, "(630) 200-0007")
    assert answer["erased"] is True and answer["suppression_kept"] is True
    counts = answer["counts"]
    assert counts["messages"] == 9 and counts["cancelled"] == 5  # 9: sent, bulk, 2 dead, 5 pending
    assert counts["dead_letters"] == 2 and counts["conversations"] == 1 and counts["conversation_messages"] == 3
    assert counts["contacts"] == 1 and counts["group_memberships"] == 1
    assert counts["opt_outs"] == 2 and counts["opt_out_events"] == 2  # sms (STOP) and mail (by the contact's email)
    assert counts["receipts"] == 1 and counts["broadcasts"] >= 8
    assert not any(
        PERSON in str(r.getMessage()) + json.dumps(getattr(r, "fields", {}), default=str) for r in caplog.records
    ), "a log line carries the number"
    assert PERSON not in json.dumps(answer)

    # Nothing identifying is left: every table, every Redis key and value.
    assert db_traces(pool, PERSON, bodies, emails) == {}
    assert redis_traces(client, prefix, PERSON, bodies) == {}
    for fmt in PERSON_FORMATS:
        assert not any(fmt in row for rows in dump_database(pool).values() for row in rows), fmt
    # The message rows stay as billing facts; what was pending can never go out.
    erased = dict(pool.run(
        "SELECT id::text, status FROM messages WHERE to_enc IS NULL AND to_hash IS NULL AND body_enc IS NULL"
        " AND subject_enc IS NULL AND html_body_enc IS NULL AND provider_message_id IS NULL"
        " AND carrier IS NULL AND media_urls IS NULL"))  # fmt: skip
    assert erased == {
        ids["sent"]: "delivered", ids["bulk"]: "sent", ids["dead_archived"]: "failed", ids["dead"]: "failed",
        ids["retrying"]: "failed", ids["sending"]: "failed", ids["queued"]: "suppressed",
        ids["scheduled"]: "suppressed", ids["confirmation"]: "suppressed",
    }  # fmt: skip
    assert queue.holds(pending) == [False] * len(pending)
    assert {t.church_id: usage(pool, t) for t in (church, other_church)} == usage_before
    # Dead letters keep their history, without anything but attempt numbers, outcomes, codes and times.
    for table in ("dead_letters", "dead_letters_archive"):
        [[attempts]] = pool.run(f"SELECT attempts FROM {table}")
        assert len(attempts) == 1 and set(attempts[0]) == {"attempt", "finished_at", "outcome", "error_code", "http_status"}
    # Everyone else's data is exactly as it was.
    assert pool.run(
        "SELECT id::text, to_enc, body_enc, status FROM messages WHERE to_enc IS NOT NULL ORDER BY id"
    ) == others_before
    assert pool.run(
        "SELECT c.contact_enc, m.body_enc FROM conversations c JOIN conversation_messages m ON m.conversation_id = c.id"
        " ORDER BY m.id") == other_conversations  # fmt: skip
    contacts = pool.run("SELECT phone_enc, email_enc FROM contacts")
    assert sorted(unseal(p, "address") for p, _ in contacts) == sorted([*OTHERS, STRANGER])
    assert [e for _, e in contacts if e is not None] == []
    # The answers keep their shape: the person's entries say "erased", the others' are as they were.
    answers = [json.loads(unseal(r, "answer")) for (r,) in pool.run(
        "SELECT response_enc FROM broadcasts WHERE church_id = CAST(:c AS uuid) AND response_has_invalid",
        c=church.church_id)]  # fmt: skip
    assert [[i["value"] for i in a["invalid"]] for a in answers] == [[ERASED]]
    assert sorted(r["to"] for r in answers[0]["recipients"]) == [OTHERS[1]]
    assert church_rows(pool, other_church.church_id) == second_church_before
    assert queue.holds([ids["other_queued"], ids["stranger"]]) == [True, True]

    # The consumer that held the in-flight message cannot record it; nothing more reaches the person.
    late = store.Outcome(ids["sending"], "sent", "sent", provider_message_id=str(uuid.uuid4()))
    assert store.record_outcomes(pool, ids["sending_token"], [late]) == set()
    drain()
    assert sandbox.ledger.by_to().get(PERSON, 0) == sent_to_person
    assert status_of(pool, ids["other_queued"]) == "sent"
    [[dead_letter]] = pool.run("SELECT id::text FROM dead_letters")
    replayed = replay_ids(get_runtime(), Scope.church(church.church_id), [dead_letter])
    assert (replayed.replayed, replayed.skipped) == (0, 1)
    assert sandbox.ledger.by_to().get(PERSON, 0) == sent_to_person

    # The audit entry names no one.
    [[target, details]] = pool.run("SELECT target, details FROM audit_log WHERE action = 'data.deleted'")
    assert target.startswith("contact:") and details["scope"] == "person" and details["messages"] == 9
    assert db_traces(pool, PERSON, bodies, emails) == {}
    # The one trace kept on purpose: the opted-out number's lookup hash, as the suppression.
    assert pool.run("SELECT church_id::text, channel, address_hmac FROM erasure_suppressions") == [
        [church.church_id, "sms", person_hash]]

    # Idempotent: a second run finds nothing and changes nothing, in PostgreSQL or Redis.
    database, redis_state = dump_database(pool), queue_state(client, prefix)
    again = delete_person(pool, church.church_id, "6302000007", actor="church:test", redis=redis_gate)
    assert not again.changed and set(again.counts().values()) == {0}
    assert dump_database(pool) == database
    assert queue_state(client, prefix) == redis_state
    answer = erase(send, church, PERSON)
    assert answer["erased"] is False and set(answer["counts"].values()) == {0}
    assert answer["suppression_kept"] is True  # still unreachable, as the first run left it

    # They had opted out: re-added by the church, they stay unreachable; their own START lifts it.
    add_member(pool, church, PERSON)
    group = post(send, church, groups=[church.group_id], text="Choir practice moved")
    assert {r["to"]: r["status"] for r in group["recipients"]}[PERSON] == "suppressed"
    refused = send.post("/messages", json={"channel": "sms", "to": "630-200-0007", "text": "Hello again"}, headers=church.auth)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "recipients_opted_out"


def test_start_from_an_erased_opted_out_person_lifts_the_suppression(send, hooks, church, pool):
    text_church(hooks, church, PERSON, "STOP")
    assert erase(send, church, PERSON)["suppression_kept"] is True
    assert pool.run("SELECT count(*) FROM erasure_suppressions")[0][0] == 1
    assert db_traces(pool, PERSON, []) == {}
    text_church(hooks, church, PERSON, "START")  # they text the church again themselves
    assert pool.run("SELECT count(*) FROM erasure_suppressions")[0][0] == 0
    assert post(send, church, to=PERSON, text="Welcome back")["recipients"][0]["status"] == "queued"


def test_erasure_is_church_scoped_and_keeps_nothing_of_people_who_had_not_opted_out(send, church, pool, redis_gate):
    """Suppression rule: only erased people who had opted out are remembered (by keyed hash)."""
    second = make_church(pool, "Second Church", sender="+13125550199", members=[PERSON])
    text_to(send, church, PERSON, "From the first church")
    text_to(send, second, PERSON, "From the second church")
    answer = erase(send, church, PERSON)
    assert answer["erased"] is True and answer["suppression_kept"] is False
    assert pool.run("SELECT count(*) FROM erasure_suppressions")[0][0] == 0
    # The other church's data about the same person is that church's to erase.
    kept = pool.run("SELECT to_enc, to_hash, body_enc FROM messages WHERE church_id = CAST(:c AS uuid)", c=second.church_id)
    assert [[unseal(to, "address"), h, unseal(b, "text")] for to, h, b in kept] == [
        [PERSON, lookup_hash(second.church_id, PERSON), "From the second church"]]  # fmt: skip
    count = "SELECT count(*) FROM contacts WHERE church_id = CAST(:c AS uuid) AND phone_hash = :h"
    assert pool.run(count, c=second.church_id, h=lookup_hash(second.church_id, PERSON))[0][0] == 1
    assert pool.run(count, c=church.church_id, h=lookup_hash(church.church_id, PERSON))[0][0] == 0
    first_church_rows = [r for rows in church_rows(pool, church.church_id).values() for r in rows]
    first_hashes = hashes_of([PERSON], {church.church_id})
    assert traces(first_church_rows, PERSON, ["From the first church"], first_hashes) == []
    # Re-added by the church later, they are simply a new member: nothing remembered them.
    add_member(pool, church, PERSON)
    group = post(send, church, groups=[church.group_id], text="Welcome, new members")
    assert {r["to"]: r["status"] for r in group["recipients"]}[PERSON] == "queued"


def test_the_deletion_request_is_validated_and_needs_the_churchs_key(send, church, pool):
    bad = send.post("/privacy/deletions", json={"phone": "not a number"}, headers=church.auth)
    assert bad.status_code == 422 and bad.get_json()["error"] == {
        "code": "invalid_phone", "field": "phone",
        "message": "phone is not a phone number; send the number as the church has it, e.g. +13125550142 or (312) 555-0142",
    }  # fmt: skip
    extra = send.post("/privacy/deletions", json={"phone": PERSON, "everything": True}, headers=church.auth)
    assert extra.status_code == 422 and extra.get_json()["error"]["field"] == "everything"
    anonymous = send.post("/privacy/deletions", json={"phone": PERSON})
    assert anonymous.status_code == 401
    assert pool.run("SELECT count(*) FROM contacts WHERE phone_hash = :h", h=lookup_hash(church.church_id, PERSON)) == [[1]]
    # A number we would never text (premium rate) may still be in a contact import: it can be erased.
    add_contact(pool, church.church_id, "+19005550123")
    premium = erase(send, church, "(900) 555-0123")
    assert premium["erased"] is True and premium["counts"]["contacts"] == 1


def test_koinonia_delete_person_shows_progress_and_refuses_an_unknown_church(send, church, pool, capsys):
    import common.cli

    for i in range(5):
        text_to(send, church, PERSON, f"Note {i}")
    assert common.cli.main(["delete", "person", "--church", church.church_id, "--phone", "630 200 0007",
                            "--batch-size", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "delete person: 2 messages erased so far" in out and "delete person: 4 messages erased so far" in out
    assert "erased 5 messages" in out and "deleted 0 conversations" in out and "1 contacts" in out
    assert not any(fmt in out for fmt in PERSON_FORMATS)
    assert db_traces(pool, PERSON, [f"Note {i}" for i in range(5)]) == {}
    [[actor]] = pool.run("SELECT actor FROM audit_log WHERE action = 'data.deleted'")
    assert actor == "cli"
    assert common.cli.main(["delete", "person", "--church", church.church_id, "--phone", PERSON]) == 0
    assert "nothing of this number was left" in capsys.readouterr().out
    unknown = str(uuid.uuid4())
    assert common.cli.main(["delete", "person", "--church", unknown, "--phone", PERSON]) == 2
    assert f"delete person: no church {unknown}" in capsys.readouterr().err


# -- a church --------------------------------------------------------------------------------------------------------

CHURCH_MEMBERS = numbers(2, area="708")


def test_deleting_a_church_keeps_only_its_billing_counts_and_audit_trail(
    send, hooks, other_church, pool, sandbox, redis_gate, capsys
):
    import common.cli

    doomed = make_church(pool, "Doomed Church", sender="+13125550177", members=CHURCH_MEMBERS)
    subscribe(pool, doomed)
    texts = ["Midweek prayer at 7", "Youth retreat forms due", "Organ repair fund update", "Parking lot closed Sunday"]
    post(send, doomed, groups=[doomed.group_id], text=texts[0])
    text_to(send, doomed, CHURCH_MEMBERS[0], texts[1], channel="mms", media_urls=[UNCHECKABLE_MEDIA_URL])
    sandbox.configure(rules={CHURCH_MEMBERS[1]: "invalid"})
    text_to(send, doomed, CHURCH_MEMBERS[1], texts[2])
    drain()
    sandbox.configure(rules={})
    assert retention.archive_older_than(pool, Scope.church(doomed.church_id), 0).done >= 1
    text_to(send, doomed, CHURCH_MEMBERS[1], texts[3])  # still queued in Redis
    text_church(hooks, doomed, CHURCH_MEMBERS[0], "Will there be childcare?")
    text_church(hooks, doomed, CHURCH_MEMBERS[1], "STOP")
    stranger_pending = text_to(send, other_church, STRANGER, "Second church news")
    # A table another feature might add, with no foreign key: found in the catalog, deleted too.
    pool.run("CREATE TABLE church_notes (church_id uuid NOT NULL, note text NOT NULL)")
    pool.run("INSERT INTO church_notes VALUES (CAST(:a AS uuid), 'doomed note'), (CAST(:b AS uuid), 'kept note')",
             a=doomed.church_id, b=other_church.church_id)  # fmt: skip
    # What the usage archive must say, computed here from the rows with the usage rule's statuses.
    expected: dict[tuple[str, str], list[int]] = {}
    for created, channel, segments, status, attempts in pool.run(
        "SELECT created_at, channel, segments, status, attempts FROM messages WHERE church_id = CAST(:c AS uuid)",
        c=doomed.church_id,
    ):
        billed = channel in ("sms", "mms") and status not in UNBILLED_STATUSES and not (status == "failed" and attempts == 0)
        row = expected.setdefault((created.astimezone(UTC).strftime("%Y-%m-01"), channel), [0, 0, 0, 0])
        row[0] += 1
        row[1] += segments
        row[2] += billed
        row[3] += segments if billed else 0
    assert sum(r[2] for r in expected.values()) >= 3
    numbers_of_doomed = [*CHURCH_MEMBERS, doomed.sender]
    queue = MessageQueue(redis_gate.client, redis_gate.prefix)
    redis_before = dump_redis(redis_gate.client, redis_gate.prefix)
    assert any(doomed.church_id in k or doomed.church_id in v for k, v in redis_before.items())
    second_church_before = church_rows(pool, other_church.church_id)

    assert common.cli.main(["delete", "church", doomed.church_id]) == 1  # not a terminal, no --yes: nothing happens
    assert "nothing deleted" in capsys.readouterr().out
    assert pool.run("SELECT count(*) FROM churches")[0][0] == 2

    assert common.cli.main(["delete", "church", doomed.church_id, "--yes", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "delete messages [" in out and "delete church_notes [" in out and f"delete church: {doomed.church_id} deleted" in out

    left = church_rows(pool, doomed.church_id)
    assert set(left) == {"audit_log", "usage_archive"}, left
    for number in numbers_of_doomed:
        assert db_traces(pool, number, texts) == {}, number
        assert redis_traces(redis_gate.client, redis_gate.prefix, number, texts) == {}, number
    assert not [(k, v) for k, v in dump_redis(redis_gate.client, redis_gate.prefix).items()
                if doomed.church_id in k or doomed.church_id in v]  # fmt: skip
    archived = {
        (str(period), channel): [messages, segments, billed, billed_segments]
        for period, channel, messages, segments, billed, billed_segments in pool.run(
            "SELECT period_start, channel, messages, segments, billed_messages, billed_segments FROM usage_archive"
            " WHERE church_id = CAST(:c AS uuid)", c=doomed.church_id)
    }  # fmt: skip
    assert archived == expected
    actions = [r[0] for r in pool.run("SELECT action FROM audit_log WHERE church_id = CAST(:c AS uuid) ORDER BY id",
                                      c=doomed.church_id)]  # fmt: skip
    assert actions[-1] == "data.deleted" and "opt_out.recorded" in actions
    [[actor, target, details]] = pool.run("SELECT actor, target, details FROM audit_log WHERE action = 'data.deleted'")
    assert (actor, target) == ("cli", f"church:{doomed.church_id}") and details["rows"]["messages"] == 6
    # The other church is untouched, its queued message included.
    assert church_rows(pool, other_church.church_id) == second_church_before
    assert pool.run("SELECT note FROM church_notes") == [["kept note"]]
    assert queue.holds([stranger_pending]) == [True]
    # The deleted church's key no longer works.
    assert send.get("/messages", headers=doomed.auth).status_code == 401

    # Idempotent: again, it says so and changes nothing.
    database = dump_database(pool)
    assert common.cli.main(["delete", "church", doomed.church_id, "--yes"]) == 0
    assert "was already deleted" in capsys.readouterr().out
    assert dump_database(pool) == database
    unknown = str(uuid.uuid4())
    assert common.cli.main(["delete", "church", unknown, "--yes"]) == 2
    assert f"delete church: no church {unknown}" in capsys.readouterr().err


def test_delete_church_resumes_after_an_interruption(pool, redis_gate, env):
    """A run cut short (here: the first batch fails) is finished by the next; the archive is written once."""
    doomed = make_church(pool, "Doomed Church", members=numbers(3, area="708"))
    to = numbers(1, area="708")[0]
    pool.run(
        "INSERT INTO messages (id, church_id, channel, lane, to_enc, to_hash, body_enc, status, attempts, deadline_at)"
        " SELECT gen_random_uuid(), CAST(:c AS uuid), 'sms', 'bulk', :to, :h, :body, 'sent', 1, now()"
        " FROM generate_series(1, 5)",
        c=doomed.church_id, to=seal(to, "address"), h=lookup_hash(doomed.church_id, to), body=seal("Hello", "text"),
    )  # fmt: skip
    calls: list[tuple[str, int]] = []

    def interrupt(what: str, done: int) -> None:
        calls.append((what, done))
        if what == "messages":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        delete_church(pool, doomed.church_id, actor="cli", progress=interrupt, redis=redis_gate, batch_size=2)
    assert pool.run("SELECT count(*) FROM messages")[0][0] == 3
    assert pool.run("SELECT messages FROM usage_archive") == [[5]]
    report = delete_church(pool, doomed.church_id, actor="cli", redis=redis_gate, batch_size=2)
    assert report.rows["messages"] == 3 and report.usage_archive_rows == 0
    assert pool.run("SELECT messages FROM usage_archive") == [[5]]
    assert church_rows(pool, doomed.church_id).keys() == {"audit_log", "usage_archive"}
    with pytest.raises(Exception, match="no church"):
        delete_person(pool, doomed.church_id, PERSON, actor="cli")
