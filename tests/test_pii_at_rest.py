"""No member's number, email address, name or text is stored readable: the issue's "a test dumps every table
and finds no plaintext number or body".

The real system runs end to end: a church with members (names and email addresses too), a single text and
a group broadcast through the send function's HTTP handler (one with a mistyped number, kept in the stored
answer) and a mail to the group (subject, text and HTML, delivered through moto's SES), delivery by the
consumer through our Telnyx sandbox, whose signed receipts come back over HTTP to
the webhooks function; a member's text and another's STOP through the same function (with the confirmation
sent); a dead letter (a sandbox fault rule); a scheduled send and one left queued in Redis. Then every
column of every table of the database (listed from the catalog, so a table added later is covered: cast
to text, bytea both as hex and as escape) and every Redis key and value under the test's prefix are
searched for each number (E.164, national forms, digits only), email address, name and text.

The scanner is checked too: it must find the church's own sender number and name (plaintext on purpose),
and the sealed columns must hold what the flow wrote (opened with the key), so an empty flow cannot pass.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import phonenumbers
import pytest

from common.consume import ConsumeBudget, run_consumer
from common.privacy import crypto
from common.privacy.rotation import SEALED_TABLES
from common.runtime import get_runtime
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client

SENDER = "+13125550100"
CHURCH_NAME = "Saint Brigid Fellowship"
MEMBERS = numbers(5, area="630")
GUEST = numbers(1, area="630", start=50)[0]  # not a contact: typed by the church in a single send
OTHER_SENDER, OTHER_MEMBER = "+13125550199", numbers(1, area="773")[0]
NAMES = [("Thaddeus", "Okonkwo"), ("Philippa", "Vandersloot"), ("Ignatius", "Quimby"), ("Rosalind", "Featherstone"),
         ("Cornelius", "Ashdown")]  # fmt: skip
EMAILS = [f"{first}.{last}@example.org".lower() for first, last in NAMES]
MISTYPED = "630 200 0099 9"  # a number typed with a digit too many: kept, as typed, in the stored answer

TEXTS = {
    "single": "Quokka reminder: your choir robe is ready for pickup",
    "broadcast": "Narwhal potluck on Sunday after the 10am service",
    "dead": "Pangolin group moved to Thursday at 7",
    "inbound": "Axolotl here, please pray for my mother, surgery on Tuesday",
    "scheduled": "Okapi Easter brunch RSVP closes Friday",
    "queued": "Capybara bible study notes are on the website",
    "other_church": "Wombat welcome to Second Church",
    "unicode": "Ça va? Llama café après le culte 🙏",
    "mail_subject": "Manatee retreat: registration is open",
    "mail_text": "Ibex trail hike on Saturday, meet at the church at 8",
    "mail_html": "<p>Tapir choir <b>concert</b> after the service</p>",
}
MARKERS = ("quokka", "narwhal", "pangolin", "axolotl", "okapi", "capybara", "wombat", "llama", "manatee", "ibex", "tapir")


# -- what must not be found ----------------------------------------------------------------------------------------


def number_forms(e164: str) -> list[str]:
    parsed = phonenumbers.parse(e164, None)
    national = phonenumbers.national_significant_number(parsed)
    return [
        e164, e164.lstrip("+"), national,
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL),  # (630) 200-0001
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL),  # +1 630-200-0001
        f"{national[:3]}-{national[3:6]}-{national[6:]}", f"{national[:3]}.{national[3:6]}.{national[6:]}",
        f"{national[:3]} {national[3:6]} {national[6:]}",
    ]  # fmt: skip


def secrets() -> list[str]:
    """Every string that must not appear anywhere at rest (case-insensitive)."""
    out: list[str] = []
    for number in [*MEMBERS, GUEST, OTHER_MEMBER]:
        out += number_forms(number)
    out += EMAILS + [e.split("@")[0] for e in EMAILS]
    out += [name for pair in NAMES for name in pair]
    out += list(TEXTS.values()) + list(MARKERS) + [MISTYPED]
    return out


def national_digits() -> list[str]:
    return [phonenumbers.national_significant_number(phonenumbers.parse(n, None)) for n in [*MEMBERS, GUEST, OTHER_MEMBER]]


def find(where: str, value: str, *, digits: bool) -> list[str]:
    """What of the secrets ``value`` shows: as itself, as UTF-8 hex, and (``digits``) a number's digits with
    any punctuation in between."""
    hits = []
    low = value.lower()
    for secret in secrets():
        s = secret.lower()
        if s in low or s.encode().hex() in low:
            hits.append(f"{where}: {secret!r} in {value[:200]!r}")
    if digits:
        # Number-like runs (digits with the punctuation people type between them), compared by their digits:
        # "630 200-0001", "(630) 2000001", 16302000001 in JSON. Colons and letters end a run, so timestamps
        # and ids do not run into each other and make false matches.
        for run in _NUMBER_RUN.findall(value):
            only = re.sub(r"\D", "", run)
            hits += [f"{where}: digits of {d} in {value[:200]!r}" for d in national_digits() if d in only]
    return hits


_NUMBER_RUN = re.compile(r"[\d(+][\d\s().+-]{8,}\d")


# -- dumps ---------------------------------------------------------------------------------------------------------


def dump_database(pool) -> dict[tuple[str, str], list[str]]:
    """Every non-NULL value of every column of every table, as text, by (table, column); a bytea column
    twice: ``(table, column:hex)`` and ``(table, column:escape)``."""
    columns = pool.run(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
        " ORDER BY 1, 2, c.ordinal_position"
    )
    tables: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for schema, table, column, data_type in columns:
        tables.setdefault((schema, table), []).append((column, data_type))
    out: dict[tuple[str, str], list[str]] = {}
    for (schema, table), cols in tables.items():
        exprs, labels = [], []
        for column, data_type in cols:
            if data_type == "bytea":
                exprs += [f"encode(\"{column}\", 'hex')", f"encode(\"{column}\", 'escape')"]
                labels += [f"{column}:hex", f"{column}:escape"]
            else:
                exprs.append(f'CAST("{column}" AS text)')
                labels.append(column)
        for row in pool.run(f'SELECT {", ".join(exprs)} FROM "{schema}"."{table}"'):
            for label, value in zip(labels, row, strict=True):
                if value is not None:
                    out.setdefault((table, label), []).append(value)
    return out


def dump_redis(client, prefix: str) -> dict[str, list[str]]:
    """Every key under the test's prefix and every part of its value, as text."""
    out: dict[str, list[str]] = {}
    for key in client.scan_iter(match=f"{{{prefix}}}*", count=1000):
        kind = client.type(key)
        if kind == "string":
            parts: list[Any] = [client.get(key)]
        elif kind == "list":
            parts = client.lrange(key, 0, -1)
        elif kind == "hash":
            parts = [p for kv in client.hgetall(key).items() for p in kv]
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = [p for member, score in client.zrange(key, 0, -1, withscores=True) for p in (member, score)]
        elif kind == "stream":
            parts = [json.dumps(entry, default=str) for entry in client.xrange(key)]
        else:
            parts = [f"<{kind}>"]
        out[key] = [p.decode("utf-8", "backslashreplace") if isinstance(p, bytes) else str(p) for p in parts]
    return out


# -- the system ----------------------------------------------------------------------------------------------------


def add_names_and_emails(pool, tenant: Tenant) -> None:
    """What a contact import stores beside the number (sealed, with the email's lookup hash)."""
    for phone, (first, last), email in zip(MEMBERS, NAMES, EMAILS, strict=True):
        updated = pool.run(
            "UPDATE contacts SET first_name_enc = :f, last_name_enc = :l, email_enc = :e, email_hash = :eh"
            " WHERE church_id = CAST(:c AS uuid) AND phone_hash = :ph RETURNING 1",
            f=crypto.seal(first, "name"), l=crypto.seal(last, "name"), e=crypto.seal(email, "address"),
            eh=crypto.lookup_hash(tenant.church_id, email), c=tenant.church_id,
            ph=crypto.lookup_hash(tenant.church_id, phone),
        )  # fmt: skip
        assert updated == [[1]]


def post(send, tenant: Tenant, **body: Any) -> dict[str, Any]:
    answer = send.post("/messages", json={"channel": "sms", **body}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def drain_and_settle(sandbox) -> None:
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=30, stop_when_idle=True)))
    assert sandbox.wait_webhooks_idle(20), "the sandbox still had webhooks to deliver after 20 s"


def member_texts(sandbox, frm: str, to: str, text: str) -> None:
    answer = httpx.post(f"{sandbox.url}/_sandbox/inbound", json={"from": frm, "to": to, "text": text}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert sandbox.wait_webhooks_idle(20)


def statuses(pool) -> dict[str, int]:
    return dict(pool.run("SELECT status, count(*) FROM messages GROUP BY status"))


def opened(pool, table: str, column: str, kind: crypto.Kind) -> list[str]:
    return [crypto.unseal(r[0], kind) for r in pool.run(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")]


@pytest.fixture
def history(hooks_url, mail_env, pool, sandbox) -> dict[str, Any]:
    """A church's week through the real system; returns what the checks need."""
    church = make_church(pool, CHURCH_NAME, sender=SENDER, members=MEMBERS)
    add_names_and_emails(pool, church)
    other = make_church(pool, "Second Church", sender=OTHER_SENDER, members=[OTHER_MEMBER])
    send = function_client("send")

    single = post(send, church, to=phonenumbers.format_number(phonenumbers.parse(MEMBERS[0], None),
                                                              phonenumbers.PhoneNumberFormat.NATIONAL),
                  text=TEXTS["single"])  # fmt: skip
    guest = post(send, church, to=[GUEST, MISTYPED], text=TEXTS["unicode"], skip_invalid=True)
    assert guest["invalid"][0]["value"] == MISTYPED
    group = post(send, church, groups=[church.group_id], text=TEXTS["broadcast"])
    assert len(group["recipients"]) == len(MEMBERS)
    mail = post(send, church, channel="mail", groups=[church.group_id], subject=TEXTS["mail_subject"],
                text=TEXTS["mail_text"], html=TEXTS["mail_html"])  # fmt: skip
    assert sorted(r["to"] for r in mail["recipients"]) == sorted(EMAILS)
    post(send, other, to=OTHER_MEMBER, text=TEXTS["other_church"])
    drain_and_settle(sandbox)

    sandbox.configure(rules={MEMBERS[4]: "invalid"})  # the carrier refuses the number: failed, dead-lettered
    dead = post(send, church, to=MEMBERS[4], text=TEXTS["dead"])
    drain_and_settle(sandbox)
    sandbox.configure(rules={})

    member_texts(sandbox, MEMBERS[1], SENDER, TEXTS["inbound"])
    member_texts(sandbox, MEMBERS[2], SENDER, "STOP")
    drain_and_settle(sandbox)  # the STOP confirmation goes out

    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    scheduled = post(send, church, to=MEMBERS[3], text=TEXTS["scheduled"], send_at=later)
    queued = post(send, church, to=MEMBERS[1], text=TEXTS["queued"])  # left on the queue: Redis holds it
    return {
        "church": church, "single": single, "dead": dead, "scheduled": scheduled, "queued": queued,
        "statuses": statuses(pool),
    }  # fmt: skip


# -- the test ------------------------------------------------------------------------------------------------------


def test_no_member_number_email_name_or_text_is_stored_readable(history, pool, redis_gate):
    church: Tenant = history["church"]
    # The flow really happened: delivered texts, a dead letter, a conversation, an opt-out, pending work.
    assert history["statuses"].get("delivered", 0) >= len(MEMBERS) + 2, history["statuses"]
    assert history["statuses"].get("failed") == 1, history["statuses"]
    assert history["statuses"].get("scheduled") == 1 and history["statuses"].get("queued") == 1, history["statuses"]
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 1
    assert pool.run("SELECT count(*) FROM webhook_events")[0][0] >= 2 * (len(MEMBERS) + 2)
    assert pool.run("SELECT count(*) FROM carrier_receipts")[0][0] >= len(MEMBERS)
    assert pool.run("SELECT count(*) FROM message_attempts")[0][0] >= len(MEMBERS) + 3
    assert pool.run("SELECT count(*) FROM opt_outs")[0][0] == 1

    # Every sealed column holds values, and they open to what the flow wrote: the search below looks for
    # things that really were stored.
    for table in SEALED_TABLES:
        for column in table.columns:
            count = pool.run(f"SELECT count(*) FROM {table.name} WHERE {column.name} IS NOT NULL")[0][0]
            assert count > 0, f"{table.name}.{column.name} is empty: the flow wrote nothing there"
    bodies = set(opened(pool, "messages", "body_enc", "text"))
    assert {TEXTS[k] for k in ("single", "broadcast", "dead", "scheduled", "queued", "unicode", "other_church")} <= bodies
    assert set(opened(pool, "messages", "to_enc", "address")) >= {*MEMBERS, GUEST, OTHER_MEMBER, *EMAILS}
    assert set(opened(pool, "messages", "subject_enc", "text")) == {TEXTS["mail_subject"]}
    assert set(opened(pool, "messages", "html_body_enc", "text")) == {TEXTS["mail_html"]}
    assert pool.run("SELECT status, count(*) FROM messages WHERE channel = 'mail' GROUP BY 1") == [["sent", len(EMAILS)]]
    assert {TEXTS["inbound"], "STOP"} <= set(opened(pool, "conversation_messages", "body_enc", "text"))
    assert set(opened(pool, "conversations", "contact_enc", "address")) >= {MEMBERS[1], MEMBERS[2]}
    assert opened(pool, "opt_outs", "address_enc", "address") == [MEMBERS[2]]
    assert opened(pool, "opt_out_events", "address_enc", "address") == [MEMBERS[2]]
    assert set(opened(pool, "contacts", "first_name_enc", "name")) == {first for first, _ in NAMES}
    assert set(opened(pool, "contacts", "email_enc", "address")) == set(EMAILS)
    assert any(MISTYPED in answer for answer in opened(pool, "broadcasts", "response_enc", "answer"))
    [[to_hash]] = pool.run("SELECT to_hash FROM messages WHERE id = CAST(:id AS uuid)",
                           id=history["dead"]["recipients"][0]["message_id"])  # fmt: skip
    assert bytes(to_hash) == crypto.lookup_hash(church.church_id, MEMBERS[4])

    database = dump_database(pool)
    # The scanner sees plaintext where plaintext is meant to be (the church's own number and name), and
    # the sealed bytes as hex: it would see a member's number or a text if one were stored.
    everything = "\n".join(v for values in database.values() for v in values)
    assert SENDER in everything and CHURCH_NAME in everything
    [[sealed]] = pool.run("SELECT encode(body_enc, 'hex') FROM conversation_messages ORDER BY id LIMIT 1")
    assert sealed in database[("conversation_messages", "body_enc:hex")]
    assert {t for t, _ in database} >= {t.name for t in SEALED_TABLES} | {"dead_letters", "carrier_receipts",
                                                                          "webhook_events", "audit_log"}  # fmt: skip

    found = [hit for (table, column), values in database.items() for value in values
             for hit in find(f"{table}.{column}", value, digits=not column.endswith((":hex", ":escape")))]  # fmt: skip
    assert found == [], "\n".join(found[:50])

    redis = dump_redis(redis_gate.client, redis_gate.prefix)
    assert redis, "nothing under the test's Redis prefix: the queue was not used"
    queued_id = history["queued"]["recipients"][0]["message_id"]
    assert any(queued_id in key or any(queued_id in part for part in parts) for key, parts in redis.items())
    found = [hit for key, parts in redis.items() for text in (key, *parts)
             for hit in find(f"redis {key}", text, digits=True)]  # fmt: skip
    assert found == [], "\n".join(found[:50])
