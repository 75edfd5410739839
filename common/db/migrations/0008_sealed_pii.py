"""0008: phone numbers, email addresses, names and bodies leave PostgreSQL's plaintext (issue #6).

Each becomes a sealed ``bytea`` (AES-256-GCM, key id inside; common/privacy/crypto.py); what is looked up
by number or address gets a ``*_hash`` column beside it (HMAC-SHA256 under ``LOOKUP_KEY`` of
"<church id>:<address>"), which takes the plaintext's place in every unique index, key and join.

A Python migration because the values already stored are sealed here, in the same transaction as the
schema change, with the configured keys; then the plaintext columns are dropped. An empty database (a
new install, the test template) needs no key at all. Erased values (``'erased'``, ``''``) become NULL:
after this migration, a NULL ``messages.to_enc`` is what "erased" means.

Church sender numbers (``sender_numbers.phone``, ``messages.from_address``, ``conversations.church_number``)
stay plaintext: they are the church's published business numbers, routed on for every inbound text and
every rate limit, not a member's data. ``media_urls`` stays too (links to the church's own media).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ADD = """
ALTER TABLE contacts
    ADD COLUMN phone_enc bytea, ADD COLUMN phone_hash bytea,
    ADD COLUMN email_enc bytea, ADD COLUMN email_hash bytea,
    ADD COLUMN first_name_enc bytea, ADD COLUMN last_name_enc bytea;
ALTER TABLE opt_outs ADD COLUMN address_enc bytea, ADD COLUMN address_hash bytea;
ALTER TABLE opt_out_events ADD COLUMN address_enc bytea, ADD COLUMN address_hash bytea;
ALTER TABLE messages
    ADD COLUMN to_enc bytea, ADD COLUMN to_hash bytea, ADD COLUMN body_enc bytea,
    ADD COLUMN subject_enc bytea, ADD COLUMN html_body_enc bytea;
ALTER TABLE broadcasts
    ADD COLUMN response_enc bytea,
    -- the stored answer lists invalid recipients as typed: a person's erasure opens only these answers
    ADD COLUMN response_has_invalid boolean NOT NULL DEFAULT false;
ALTER TABLE conversations ADD COLUMN contact_enc bytea, ADD COLUMN contact_hash bytea;
ALTER TABLE conversation_messages ADD COLUMN body_enc bytea;
"""

DROP = """
ALTER TABLE contacts DROP COLUMN phone, DROP COLUMN email, DROP COLUMN first_name, DROP COLUMN last_name;
ALTER TABLE contacts ADD CONSTRAINT contacts_phone_or_email CHECK (phone_hash IS NOT NULL OR email_hash IS NOT NULL),
    ADD CONSTRAINT contacts_phone_pair CHECK ((phone_enc IS NULL) = (phone_hash IS NULL)),
    ADD CONSTRAINT contacts_email_pair CHECK ((email_enc IS NULL) = (email_hash IS NULL));
CREATE UNIQUE INDEX contacts_church_phone ON contacts (church_id, phone_hash) WHERE phone_hash IS NOT NULL;
CREATE UNIQUE INDEX contacts_church_email ON contacts (church_id, email_hash) WHERE email_hash IS NOT NULL;

ALTER TABLE opt_outs DROP CONSTRAINT opt_outs_pkey, DROP COLUMN address;
ALTER TABLE opt_outs ALTER COLUMN address_enc SET NOT NULL, ALTER COLUMN address_hash SET NOT NULL,
    ADD PRIMARY KEY (church_id, channel, address_hash);
ALTER TABLE opt_out_events DROP COLUMN address;
ALTER TABLE opt_out_events ALTER COLUMN address_enc SET NOT NULL, ALTER COLUMN address_hash SET NOT NULL;

-- NULL to_enc/to_hash/body_enc: the recipient was erased (common/privacy/deletion.py).
ALTER TABLE messages DROP COLUMN to_address, DROP COLUMN body, DROP COLUMN subject, DROP COLUMN html_body;
ALTER TABLE messages ADD CONSTRAINT messages_to_pair CHECK ((to_enc IS NULL) = (to_hash IS NULL));

ALTER TABLE broadcasts DROP COLUMN response;

ALTER TABLE conversations DROP COLUMN contact_address;
ALTER TABLE conversations ALTER COLUMN contact_enc SET NOT NULL, ALTER COLUMN contact_hash SET NOT NULL,
    ADD CONSTRAINT conversations_church_number_contact UNIQUE (church_id, church_number, contact_hash);

ALTER TABLE conversation_messages DROP COLUMN body;
ALTER TABLE conversation_messages ALTER COLUMN body_enc SET NOT NULL;
"""

ERASED = "erased"

# table, row key ("id", or "ctid" where the key was the plaintext), church id,
# [(plaintext column, sealed column, hash column, kind)]
_TABLES: list[tuple[str, str, str, list[tuple[str, str, str | None, str]]]] = [
    ("contacts", "id", "church_id::text", [
        ("phone", "phone_enc", "phone_hash", "address"), ("email", "email_enc", "email_hash", "address"),
        ("first_name", "first_name_enc", None, "name"), ("last_name", "last_name_enc", None, "name"),
    ]),
    ("opt_outs", "ctid", "church_id::text", [("address", "address_enc", "address_hash", "address")]),
    ("opt_out_events", "ctid", "church_id::text", [("address", "address_enc", "address_hash", "address")]),
    ("messages", "id", "church_id::text", [
        ("to_address", "to_enc", "to_hash", "address"), ("body", "body_enc", None, "text"),
        ("subject", "subject_enc", None, "text"), ("html_body", "html_body_enc", None, "text"),
    ]),
    ("broadcasts", "id", "church_id::text", [("response::text", "response_enc", None, "answer")]),
    ("conversations", "id", "church_id::text", [("contact_address", "contact_enc", "contact_hash", "address")]),
    ("conversation_messages", "id", "NULL", [("body", "body_enc", None, "text")]),
]


def _erased(table: str, column: str, value: str) -> bool:
    return table == "messages" and (value == ERASED if column == "to_address" else column == "body" and value == "")


def apply(conn: Any, say: Callable[[str], None]) -> None:
    conn.execute_simple(ADD)
    ring = None
    for table, pk, church, columns in _TABLES:
        total = conn.run(f"SELECT count(*) FROM {table}")[0][0]
        if not total:
            continue
        if ring is None:
            from common.privacy.crypto import keyring  # the configured keys; an empty database needs none

            ring = keyring()
        say(f"  sealing {total} {table} rows")
        plain = ", ".join(c for c, *_ in columns)
        rows = conn.run(f"SELECT {pk}::text, {church}, {plain} FROM {table}")
        where = f"{pk} = CAST(:pk AS {'tid' if pk == 'ctid' else 'uuid'})"
        for done, row in enumerate(rows, 1):
            sets, params = [], {"pk": row[0]}
            for i, (column, sealed, hashed, kind) in enumerate(columns):
                value = row[2 + i]
                if value is None or _erased(table, column, value):
                    continue
                params[sealed] = ring.seal(value, kind)  # type: ignore[arg-type]
                sets.append(f"{sealed} = :{sealed}")
                if hashed:
                    params[hashed] = ring.lookup_hash(row[1], value)
                    sets.append(f"{hashed} = :{hashed}")
            if table == "broadcasts" and row[2] is not None:
                sets.append("response_has_invalid = response ? 'invalid'")
            if sets:
                conn.run(f"UPDATE {table} SET {', '.join(sets)} WHERE {where}", **params)
            if done % 10_000 == 0:
                say(f"    {done}/{total}")
    conn.execute_simple(DROP)
