"""A member texted a church: thread it into their conversation, act on keywords, answer when due.

All of it happens in the webhook's transaction, including accepting the reply (a message row, like any
other send): so a STOP is recorded, confirmed and threaded together, or not at all and Telnyx retries.

- The church is the owner of the number that was texted; the conversation is (church, that number, the
  member), created on the first text.
- STOP-family keywords opt the member out of that church at once (the claim suppresses anything still
  queued for them, on every path); START/UNSTOP/YES opt them back in; HELP/INFO get the church's help text.
- One confirmation: STOP and START are confirmed only when they change something (a second STOP gets no
  second reply), and not at all when the carrier already answered the keyword itself
  (``autoresponse_type``, Telnyx's default opt-out handling) so the member never gets two.
- A reply that reads like an opt-out but is no keyword marks the conversation ``needs_review`` and is
  logged as ``flagged``.
- The member's number is stored sealed (``contact_enc``) and found by its lookup hash (``contact_hash``,
  the same hash as ``contacts.phone_hash``); every text is sealed (``body_enc``). common/privacy/crypto.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from common.compliance import opt_outs
from common.compliance.keywords import classify
from common.db.pool import Connection
from common.phones import InvalidPhone, normalize
from common.privacy import crypto
from common.send.models import SendRequest
from common.send.service import Accepted, accept_in
from common.webhooks.events import Inbound

confirmation_deadline_s = 300  # a confirmation more than 5 minutes late is worse than none (FCC 2024 rule)

_UPSERT_CONVERSATION_SQL = """
INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash, contact_id, last_message_at,
                           unread_count, needs_review)
VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :church_number, :member_enc, :member_hash,
        (SELECT id FROM contacts WHERE church_id = CAST(:c AS uuid) AND phone_hash = :member_hash AND deleted_at IS NULL),
        coalesce(CAST(:at AS timestamptz), now()), 1, :flagged)
ON CONFLICT (church_id, church_number, contact_hash) DO UPDATE SET
    last_message_at = greatest(conversations.last_message_at, EXCLUDED.last_message_at),
    unread_count = conversations.unread_count + 1,
    needs_review = conversations.needs_review OR EXCLUDED.needs_review,
    contact_id = coalesce(conversations.contact_id, EXCLUDED.contact_id)
RETURNING id::text
"""

_APPEND_SQL = """
INSERT INTO conversation_messages (id, conversation_id, direction, body_enc, media, message_id, provider_message_id,
                                   created_at)
VALUES (CAST(:id AS uuid), CAST(:conv AS uuid), :direction, :body, CAST(:media AS jsonb), CAST(:mid AS uuid), :pid,
        coalesce(CAST(:at AS timestamptz), now()))
"""


@dataclass(frozen=True)
class InboundResult:
    church_id: str | None  # None: nobody owns the number that was texted
    conversation_id: str | None = None
    kind: str = "none"  # opt_out | opt_in | help | none
    flagged: bool = False
    changed: bool = False  # the opt-out state moved
    reply: Accepted | None = None
    text_id: str | None = None  # the member's text's conversation_messages row (the analytics event names it)


def record_inbound(conn: Connection, event: Inbound, *, new_id: Any) -> InboundResult:
    """Everything a member's text causes, in ``conn``'s transaction. ``new_id()`` makes row ids."""
    church_number = _e164(event.to_number)
    member = _e164(event.from_number)
    rows = conn.run(
        "SELECT s.church_id::text, c.name, c.help_text FROM sender_numbers s JOIN churches c ON c.id = s.church_id"
        " WHERE s.phone = :p AND c.deleted_at IS NULL ORDER BY s.created_at LIMIT 1",
        p=church_number,
    )
    if not rows:
        return InboundResult(church_id=None)
    church_id, church_name, help_text = rows[0]
    meaning = classify(event.text)
    at = event.received_at or event.occurred_at
    ring = crypto.keyring()
    conversation_id = conn.run(
        _UPSERT_CONVERSATION_SQL, id=str(new_id()), c=church_id, church_number=church_number,
        member_enc=ring.seal(member, "address"), member_hash=ring.lookup_hash(church_id, member), at=at,
        flagged=meaning.flagged,
    )[0][0]  # fmt: skip
    text_id = str(new_id())
    conn.run(
        _APPEND_SQL, id=text_id, conv=conversation_id, direction="inbound", body=ring.seal(event.text, "text"),
        media=json.dumps(event.media) if event.media else None, mid=None, pid=event.provider_message_id, at=at,
    )  # fmt: skip
    changed = False
    reply_text: str | None = None
    if meaning.kind == "opt_out":
        changed = opt_outs.opt_out(conn, church_id, member, source="keyword", keyword=meaning.keyword)
        if changed and event.autoresponse_type != "STOP":
            reply_text = (
                f"{church_name}: you are unsubscribed and will receive no more texts from us. Reply START to resubscribe."
            )
    elif meaning.kind == "opt_in":
        changed = opt_outs.opt_in(conn, church_id, member, source="keyword", keyword=meaning.keyword)
        if changed and event.autoresponse_type != "START":
            reply_text = (
                f"{church_name}: you are subscribed again. Reply HELP for help, STOP to opt out. "
                "Msg & data rates may apply."
            )
    elif meaning.kind == "help":
        if event.autoresponse_type != "HELP":
            reply_text = help_text or f"{church_name}: reply STOP to opt out, START to opt back in. Msg & data rates may apply."
    elif meaning.flagged:
        opt_outs.flag(conn, church_id, member, reason=meaning.reason)
    reply = None
    if reply_text is not None:
        reply = _reply(conn, church_id, church_number, member, reply_text, event.event_id)
        conn.run(
            _APPEND_SQL, id=str(new_id()), conv=conversation_id, direction="outbound", body=ring.seal(reply_text, "text"),
            media=None, mid=reply.queued_ids[0] if reply.queued_ids else None, pid=None, at=None,
        )  # fmt: skip
    return InboundResult(church_id, conversation_id, meaning.kind, meaning.flagged, changed, reply, text_id)


def _reply(conn: Connection, church_id: str, church_number: str, member: str, text: str, event_id: str) -> Accepted:
    payload = {"channel": "sms", "to": member, "from": church_number, "text": text, "deadline_s": confirmation_deadline_s}
    return accept_in(
        conn, church_id, SendRequest.model_validate(payload), raw_payload=payload,
        idempotency_key="inbound:" + hashlib.sha256(event_id.encode()).hexdigest(), purpose="compliance",
    )  # fmt: skip


def _e164(number: str) -> str:
    try:
        return normalize(number)
    except InvalidPhone:
        return number
