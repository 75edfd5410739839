"""Rows the tests need, made through plain SQL (the same tables the product uses).

Contacts' numbers are sealed with their lookup hashes (common/privacy/crypto.py), so the settings must be
loaded (the ``env`` fixture) before a church with members is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.auth.api_keys import issue_key
from common.db.pool import Connection, Pool
from common.ids import uuid7
from common.privacy import crypto


@dataclass
class Tenant:
    church_id: str
    api_key: str
    sender: str
    group_id: str
    members: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def make_church(
    pool: Pool,
    name: str = "First Church",
    *,
    sender: str = "+13125550100",
    sms_per_second: float = 1000.0,
    members: list[str] | None = None,
    allowance: int | None = 1_000_000_000,
    mms_weight: int = 3,
) -> Tenant:
    """A church that can send: API key, default number, a "Members" group, and an active subscription.

    Sends are refused without a current subscription (common/billing/quota.py), so every church gets one
    covering now with ``allowance`` segments (large by default: quota is not what most tests are about);
    ``allowance=None`` makes a church without one.
    """
    church_id = str(uuid7())
    issued = issue_key()
    group_id = str(uuid7())
    with pool.transaction() as conn:
        conn.run("INSERT INTO churches (id, name) VALUES (CAST(:id AS uuid), :n)", id=church_id, n=name)
        conn.run(
            "INSERT INTO api_keys (id, church_id, prefix, key_hash) VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :p, :h)",
            id=str(uuid7()), c=church_id, p=issued.prefix, h=issued.key_hash,
        )  # fmt: skip
        conn.run(
            "INSERT INTO sender_numbers (id, church_id, phone, kind, sms_per_second, mms_per_second, is_default)"
            " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :p, 'toll_free', :r, :r, true)",
            id=str(uuid7()), c=church_id, p=sender, r=sms_per_second,
        )  # fmt: skip
        conn.run(
            "INSERT INTO groups (id, church_id, name) VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'Members')",
            id=group_id, c=church_id,
        )  # fmt: skip
        if allowance is not None:
            conn.run(
                "INSERT INTO subscriptions (id, church_id, plan, status, segment_allowance, mms_weight, period_start,"
                " period_end) VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'test', 'active', :a, :w,"
                " now() - interval '1 day', now() + interval '30 days')",
                id=str(uuid7()), c=church_id, a=allowance, w=mms_weight,
            )  # fmt: skip
        for phone in members or []:
            contact = add_contact(conn, church_id, phone)
            conn.run(
                "INSERT INTO group_members (group_id, contact_id) VALUES (CAST(:g AS uuid), CAST(:c AS uuid))",
                g=group_id, c=contact,
            )  # fmt: skip
    return Tenant(church_id, issued.key, sender, group_id, list(members or []))


def add_contact(
    conn: Connection | Pool, church_id: str, phone: str | None, *, email: str | None = None,
    first_name: str | None = None, last_name: str | None = None,
) -> str:  # fmt: skip
    """One contact as the product stores it: number and email sealed with their lookup hashes, names sealed."""
    contact = str(uuid7())
    ring = crypto.keyring()
    conn.run(
        "INSERT INTO contacts (id, church_id, phone_enc, phone_hash, email_enc, email_hash, first_name_enc, last_name_enc)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :p, :ph, :e, :eh, :first, :last)",
        id=contact, c=church_id,
        p=crypto.seal_optional(phone, "address"), ph=None if phone is None else ring.lookup_hash(church_id, phone),
        e=crypto.seal_optional(email, "address"), eh=None if email is None else ring.lookup_hash(church_id, email),
        first=crypto.seal_optional(first_name, "name"), last=crypto.seal_optional(last_name, "name"),
    )  # fmt: skip
    return contact


def numbers(count: int, *, area: str = "312", start: int = 0) -> list[str]:
    """Valid, distinct US mobile-format numbers: +1 <area> 2xx-xxxx (no 555 fictional block needed)."""
    return [f"+1{area}{2000000 + start + i:07d}" for i in range(count)]
