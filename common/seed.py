"""The demo church the local stack starts with: a church, an API key, a sending number, a group.

Idempotent: running it again keeps the church and its data and issues a fresh API key (the old one is
revoked, since a key cannot be shown twice). The members' numbers and names are stored sealed, the
numbers with their lookup hashes (common/privacy/crypto.py), as every contact is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from common.auth.api_keys import issue_key
from common.db.pool import Pool
from common.ids import uuid7
from common.privacy import crypto

DEMO_CHURCH_NAME = "Grace Fellowship (demo)"
DEMO_SENDER = "+15005550006"
DEMO_MEMBERS = [
    ("Ruth", "Adeyemi", "+15005550101"),
    ("Samuel", "Okafor", "+15005550102"),
    ("Miriam", "Lee", "+15005550103"),
    ("Daniel", "Garcia", "+15005550104"),
    ("Esther", "Nguyen", "+15005550105"),
]


@dataclass(frozen=True)
class DemoChurch:
    church_id: str
    api_key: str
    sender: str
    group_id: str
    member_count: int


def seed_demo(pool: Pool) -> DemoChurch:
    now = datetime.now(UTC)
    with pool.transaction() as conn:
        rows = conn.run("SELECT id FROM churches WHERE name = :name", name=DEMO_CHURCH_NAME)
        if rows:
            church_id = rows[0][0]
        else:
            church_id = uuid7()
            conn.run(
                "INSERT INTO churches (id, name, help_text) VALUES (:id, :name, :help)",
                id=church_id,
                name=DEMO_CHURCH_NAME,
                help="Grace Fellowship texts: reply STOP to opt out. Questions? Call the office.",
            )
            conn.run(
                "INSERT INTO sender_numbers (id, church_id, phone, kind, sms_per_second, is_default)"
                " VALUES (:id, :church, :phone, 'toll_free', 20, true)",
                id=uuid7(),
                church=church_id,
                phone=DEMO_SENDER,
            )
        # A demo period that has run out is renewed on the next start (sends need a current subscription).
        current = conn.run(
            "SELECT 1 FROM subscriptions WHERE church_id = :church AND status IN ('active', 'trialing')"
            " AND period_start <= :now AND period_end > :now",
            church=church_id,
            now=now,
        )
        if not current:
            conn.run(
                "INSERT INTO subscriptions (id, church_id, plan, status, segment_allowance, period_start, period_end)"
                " VALUES (:id, :church, 'demo', 'active', 10000, :start, :end)",
                id=uuid7(),
                church=church_id,
                start=now - timedelta(days=1),
                end=now + timedelta(days=29),
            )
        group_rows = conn.run(
            "INSERT INTO groups (id, church_id, name) VALUES (:id, :church, 'Prayer chain')"
            " ON CONFLICT (church_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            id=uuid7(),
            church=church_id,
        )
        group_id = group_rows[0][0]
        ring = crypto.keyring()
        for first, last, phone in DEMO_MEMBERS:
            contact = conn.run(
                "INSERT INTO contacts (id, church_id, phone_enc, phone_hash, first_name_enc, last_name_enc)"
                " VALUES (:id, :church, :phone, :phone_hash, :first, :last)"
                " ON CONFLICT (church_id, phone_hash) WHERE phone_hash IS NOT NULL"
                " DO UPDATE SET first_name_enc = EXCLUDED.first_name_enc"
                " RETURNING id",
                id=uuid7(),
                church=church_id,
                phone=ring.seal(phone, "address"),
                phone_hash=ring.lookup_hash(str(church_id), phone),
                first=ring.seal(first, "name"),
                last=ring.seal(last, "name"),
            )
            conn.run(
                "INSERT INTO group_members (group_id, contact_id) VALUES (:g, :c) ON CONFLICT DO NOTHING",
                g=group_id,
                c=contact[0][0],
            )
        conn.run(
            "UPDATE api_keys SET revoked_at = now() WHERE church_id = :church AND revoked_at IS NULL",
            church=church_id,
        )
        issued = issue_key()
        conn.run(
            "INSERT INTO api_keys (id, church_id, prefix, key_hash, name) VALUES (:id, :church, :prefix, :hash, 'demo')",
            id=uuid7(),
            church=church_id,
            prefix=issued.prefix,
            hash=issued.key_hash,
        )
    return DemoChurch(
        church_id=str(church_id),
        api_key=issued.key,
        sender=DEMO_SENDER,
        group_id=str(group_id),
        member_count=len(DEMO_MEMBERS),
    )
