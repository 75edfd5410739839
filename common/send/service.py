"""Accepting a send: validate, expand, suppress, persist in one transaction, then enqueue (or send inline).

Order matters for the contract "accepted means never lost":

1. Everything that can refuse the request runs first and writes nothing: the body (pydantic), every
   number (each invalid one reported by index), the groups (ours, and known), the text (at most 10
   segments), the sender (one of the church's numbers), an MMS's media (common/media.py: https, at most
   10, type and size probed where reachable; before the transaction, and never for a replay).
2. One transaction writes the broadcast (with its idempotency key and its answer) and every message
   row. After COMMIT the request is accepted: PostgreSQL holds it whatever happens next. Numbers, the
   text and the answer are sealed (common/privacy/crypto.py): the text once for the whole request, a
   group member's number copied sealed from the contact; lookups (opt-outs, time zones, members) go
   by keyed hash, never by number.
3. Then the rows go to Redis (pipelined). If Redis is disabled or does not answer, the rows are sent
   inline within the request's budget; whatever is left stays ``queued`` for the retry-scheduler.

Mail (``channel: mail``) takes the same steps with email addresses (common/emails.py; a group's members
by ``contacts.email_enc``/``email_hash``; opt-outs of channel ``mail``), sealed subject and HTML beside the
text, from ``MAIL_FROM`` (``503 mail_not_configured`` without it), whose queue bucket runs at
``SES_MAX_SEND_RATE``. It counts no segment, has no encoding, and is never held for quiet hours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from common import log_context
from common.api_errors import Conflict, ServiceUnavailable, Unprocessable
from common.compliance.quiet_hours import SendWindow, next_opening, zone
from common.config import get_settings
from common.db.pool import Connection, Pool
from common.emails import InvalidEmail, normalize_email
from common.ids import uuid7
from common.limits.sends import Admit, SendCharge
from common.media import MediaReport
from common.messages import store
from common.messages.store import Purpose
from common.phones import InvalidPhone, normalize
from common.privacy import crypto
from common.queue import Channel, Lane
from common.segments import PreparedText, max_segments, prepare
from common.send.models import SendRequest

logger = logging.getLogger("koinonia.send")

max_listed_recipients = 1_000  # a larger broadcast is paged through GET /messages?broadcast_id=...
_IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9_:.-]{1,255}")
MediaCheck = Callable[[Sequence[str]], MediaReport]
"""Checks an MMS's ``media_urls``: ``common.media.check_media_with_settings`` bound to the settings."""


@dataclass(frozen=True)
class Sender:
    """Who sends, and at what rate. ``phone`` is the queue's sender key and ``messages.from_address``: the
    church's number, or for mail the ``MAIL_FROM`` address, whose rate is ``SES_MAX_SEND_RATE`` (both fields)."""

    phone: str
    sms_per_second: float
    mms_per_second: float


@dataclass(frozen=True)
class Accepted:
    """A request written to PostgreSQL; what to hand to the queue, and the answer so far."""

    broadcast_id: str
    church_id: str
    lane: Lane
    channel: Channel
    sender: Sender
    queued_ids: list[str]  # ready now
    scheduled: list[tuple[str, datetime]]  # (id, due): send_at in the future, or held for quiet hours
    response: dict[str, Any]
    replayed: bool = False

    @property
    def scheduled_ids(self) -> list[str]:
        return [message_id for message_id, _ in self.scheduled]


@dataclass(frozen=True)
class _Church:
    timezone: str
    window: SendWindow | None


def accept(
    pool: Pool,
    church_id: str,
    request: SendRequest,
    *,
    raw_payload: Any,
    idempotency_key: str | None,
    media_check: MediaCheck,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    admit: Admit | None = None,
) -> Accepted:
    """Validate and persist in one transaction; raise ``ApiError`` (4xx, nothing written) if refused.

    An MMS's media are probed first (``media_check``: :func:`_checked_media`), outside the transaction: the
    probe waits on other people's servers (up to ``MEDIA_CHECK_TIMEOUT_S``), which must not hold a pooled
    connection or an open transaction.
    """
    _check_idempotency_key(idempotency_key)
    media_warnings = _checked_media(pool, church_id, request, idempotency_key, media_check)
    with pool.transaction() as conn:
        return accept_in(
            conn, church_id, request, raw_payload=raw_payload, idempotency_key=idempotency_key, now=now, admit=admit,
            media_warnings=media_warnings,
        )  # fmt: skip


def _checked_media(
    pool: Pool, church_id: str, request: SendRequest, idempotency_key: str | None, media_check: MediaCheck
) -> list[dict[str, str]]:
    """An MMS's media check (common/media.py): any error refuses the send (422 with the code and field of the
    most specific error, every error in ``details``); the warnings are returned for the 202 answer.

    Not run when the Idempotency-Key already has an answer: ``accept_in`` answers the replay from what was
    stored, warnings included (or 409 for another body), and nothing is fetched again.
    """
    if request.channel != "mms" or not request.media_urls:
        return []
    if idempotency_key is not None and pool.run(
        "SELECT 1 FROM broadcasts WHERE church_id = CAST(:c AS uuid) AND idempotency_key = :k", c=church_id, k=idempotency_key
    ):
        return []
    report = media_check([str(url) for url in request.media_urls])
    if report.errors:
        # The most specific first: a URL at fault before the list as a whole (a file of 1 MB also makes the
        # total too large; the fix is that file).
        first = next((error for error in report.errors if error.field != "media_urls"), report.errors[0])
        more = f" ({len(report.errors) - 1} more in details)" if len(report.errors) > 1 else ""
        raise Unprocessable(
            first.code, first.message + more, field=first.field, details=[error.as_dict() for error in report.errors]
        )
    return [warning.as_dict() for warning in report.warnings]


def _check_idempotency_key(idempotency_key: str | None) -> None:
    if idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
        raise Unprocessable(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 characters of letters, digits and _ : . -",
            field="Idempotency-Key",
        )


def accept_in(
    conn: Connection,
    church_id: str,
    request: SendRequest,
    *,
    raw_payload: Any,
    idempotency_key: str | None,
    purpose: Purpose = "normal",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    admit: Admit | None = None,
    media_warnings: Sequence[dict[str, str]] = (),
) -> Accepted:
    """``accept`` inside the caller's transaction (a keyword reply commits with the inbound text).

    ``media_warnings``: what the media check found worth knowing (``accept``), answered as ``warnings``.

    ``admit`` (``common.limits.sends``) charges the church's rate limits and quota, or raises the 429/402
    that refuses the send: the last check before anything is written. Replays and compliance replies
    are never charged.

    ``purpose="compliance"`` is a STOP/START confirmation or a HELP answer: it reaches a person who
    has opted out (the confirmation of their own opt-out) and is never held for quiet hours.
    """
    _check_idempotency_key(idempotency_key)
    mail = request.channel == "mail"
    if mail:
        # Mail is neither smart-encoded nor split: the text goes as typed (UTF-8) and counts no segment.
        text = dataclasses.replace(prepare(request.text, smart_encoding=False), segments=0)
    else:
        text = prepare(request.text, smart_encoding=request.smart_encoding)
    if request.channel == "mms":
        # An MMS is one message whatever its text (sent as UTF-8, never split): billed as one, times the
        # plan's MMS weight (common/billing/usage.py), media-only included.
        text = dataclasses.replace(text, segments=1)
    elif not mail and text.segments > max_segments:
        limit = "1,530 GSM-7 characters" if text.encoding == "GSM-7" else "670 UCS-2 characters"
        raise Unprocessable(
            "text_too_long",
            f"this text needs {text.segments} segments ({text.units} {text.encoding} units); the limit is "
            f"{max_segments} segments ({limit}). Shorten it or split it into two messages",
            field="text",
        )
    recipients, invalid, duplicates = _normalize_recipients(request.recipients, emails=mail)
    if invalid and not request.skip_invalid:
        raise Unprocessable(
            "invalid_recipients",
            f"{len(invalid)} recipient(s) are not valid {'email addresses' if mail else 'numbers'} (first: "
            f"to[{invalid[0]['index']}], "
            f"{invalid[0]['reason']}); fix them, or send with \"skip_invalid\": true",
            field=f"to[{invalid[0]['index']}]",
            details=invalid,
        )
    request_hash = hashlib.sha256(json.dumps(raw_payload, sort_keys=True, separators=(",", ":")).encode()).digest()
    at = now()
    # A replay answers with the first answer even if things changed since (a member opted out).
    if idempotency_key is not None:
        replay = _replay(conn, church_id, idempotency_key, request_hash)
        if replay is not None:
            return _replayed(replay, church_id, request)
    sender = _mail_sender() if mail else _sender(conn, church_id, request.from_)
    ring = crypto.keyring()
    hashes = [ring.lookup_hash(church_id, r) for r in recipients]
    sealed: list[bytes | None] = [None] * len(recipients)  # sealed at insert, except members' (copied)
    if request.groups:
        _add_group_members(conn, church_id, [str(g) for g in request.groups], recipients, hashes, sealed, emails=mail)
    if not recipients:
        raise Unprocessable("no_recipients", "no valid recipients to send to (the groups may be empty)", field="to")
    opt_out_channel = "mail" if mail else "sms"
    opted_out = _opted_out(conn, church_id, recipients, hashes, channel=opt_out_channel) if purpose == "normal" else set()
    if len(opted_out) == len(recipients):
        raise Unprocessable(
            "recipients_opted_out",
            "every recipient has opted out of this church's mail" if mail else
            "every recipient has opted out of this church's texts (they can text START to opt back in)",
            field="to" if request.recipients else "groups",
        )
    lane: Lane = "conv" if len(recipients) == 1 and not request.groups else "bulk"
    broadcast_id = str(uuid7())
    first_attempt = request.send_at if request.send_at is not None and request.send_at > at + timedelta(seconds=1) else at
    ids = [str(uuid7()) for _ in recipients]
    due = [first_attempt] * len(recipients)
    zones: list[str | None] = [None] * len(recipients)
    # Quiet hours are for texts, which buzz a phone; a mail waits in the inbox until its reader looks.
    if lane == "bulk" and purpose == "normal" and not mail:
        zones, due = _quiet_hours(conn, church_id, hashes, first_attempt)
    statuses = [
        "suppressed" if r in opted_out else ("scheduled" if d > at + timedelta(seconds=1) else "queued")
        for r, d in zip(recipients, due, strict=True)
    ]
    held = sum(1 for d, s in zip(due, statuses, strict=True) if d > first_attempt and s != "suppressed")
    # The answer is known before anything is written (ids are ours): it goes in with the broadcast.
    response = _response(
        broadcast_id, request, text, recipients, ids, statuses, invalid, duplicates,
        mode="scheduled" if first_attempt > at else "queued",
    )  # fmt: skip
    # The id of the request accepting this (common/log_context.py) is every row's correlation id; the answer says
    # it (stored with it, so a replay names the request that sent the messages).
    correlation_id = log_context.request_id()
    response["correlation_id"] = correlation_id
    if held:
        response["quiet_hours"] = {
            "held": held,
            "first_opening": min(d for d, s in zip(due, statuses, strict=True) if s == "scheduled").isoformat(),
        }
    if media_warnings:
        response["warnings"] = list(media_warnings)  # stored with the answer: a replay repeats them
    if admit is not None and purpose == "normal":
        admit(conn, SendCharge(church_id, lane, request.channel, text.segments, len(recipients) - len(opted_out), at))
    if not _insert_broadcast(
        conn, church_id, broadcast_id, idempotency_key, request_hash, request, lane, response, len(opted_out)
    ):
        # The same key committed by a concurrent request after our first look: its answer is ours.
        replay = _replay(conn, church_id, idempotency_key or "", request_hash)
        assert replay is not None
        return _replayed(replay, church_id, request)
    deadline = timedelta(seconds=request.deadline_s)
    store.insert_messages(
        conn,
        store.NewMessages(
            church_id=church_id, broadcast_id=broadcast_id, channel=request.channel, lane=lane, purpose=purpose,
            from_address=sender.phone, subject=request.subject, body=text.text, html_body=request.html,
            media_urls=[str(u) for u in request.media_urls] if request.media_urls else None,
            encoding=None if mail else text.encoding, segments=text.segments, max_attempts=request.max_attempts,
            ids=ids, to_addresses=recipients, statuses=statuses, next_attempt_at=due,
            deadline_at=[d + deadline for d in due], recipient_tz=zones, to_hashes=hashes, to_sealed=sealed,
            correlation_id=correlation_id,
        ),
    )  # fmt: skip
    queued = [i for i, s in zip(ids, statuses, strict=True) if s == "queued"]
    scheduled = [(i, d) for i, s, d in zip(ids, statuses, due, strict=True) if s == "scheduled"]
    return Accepted(
        broadcast_id=broadcast_id, church_id=church_id, lane=lane, channel=request.channel, sender=sender,
        queued_ids=queued, scheduled=scheduled, response=response,
    )  # fmt: skip


def _quiet_hours(
    conn: Connection, church_id: str, hashes: list[bytes], first_attempt: datetime
) -> tuple[list[str | None], list[datetime]]:
    """Each recipient's time zone (contact's, else the church's) and when their send window next opens."""
    church = _church(conn, church_id)
    rows = conn.run(
        "SELECT phone_hash, timezone FROM contacts WHERE church_id = CAST(:c AS uuid)"
        " AND phone_hash = ANY(CAST(:h AS bytea[])) AND timezone IS NOT NULL AND deleted_at IS NULL",
        c=church_id, h=hashes,
    )  # fmt: skip
    contact_zones: dict[bytes, str] = {bytes(phone_hash): tz for phone_hash, tz in rows}
    resolved: dict[str | None, tuple[str, datetime]] = {}
    zones: list[str | None] = []
    due: list[datetime] = []
    for phone_hash in hashes:
        name = contact_zones.get(phone_hash)
        if name not in resolved:
            tz = zone(name, church.timezone)
            opening = next_opening(first_attempt, tz, church.window) if church.window else None
            resolved[name] = (tz.key, opening or first_attempt)
        tz_name, at = resolved[name]
        zones.append(tz_name)
        due.append(at)
    return zones, due


def _church(conn: Connection, church_id: str) -> _Church:
    rows = conn.run(
        "SELECT timezone, send_window_start, send_window_end FROM churches WHERE id = CAST(:c AS uuid)", c=church_id
    )
    timezone, start, end = rows[0]
    window = SendWindow(start, end) if start is not None and end is not None and start != end else None
    return _Church(timezone, window)


def store_final_response(pool: Pool, broadcast_id: str, response: dict[str, Any]) -> None:
    """After an inline send: the answer a replay of this request returns."""
    pool.run(
        "UPDATE broadcasts SET response_enc = :r, response_has_invalid = :inv WHERE id = CAST(:id AS uuid)",
        r=_seal_answer(response), inv="invalid" in response, id=broadcast_id,
    )  # fmt: skip


def _seal_answer(response: dict[str, Any]) -> bytes:
    """A stored answer (it lists the recipients' numbers): sealed JSON, kind ``answer``."""
    return crypto.seal(json.dumps(response, separators=(",", ":")), "answer")


def _normalize_recipients(raw: Sequence[str], *, emails: bool = False) -> tuple[list[str], list[dict[str, Any]], int]:
    """Numbers as E.164 (or, ``emails``, addresses in their normal form: common/emails.py), duplicates removed."""
    seen: set[str] = set()
    valid: list[str] = []
    invalid: list[dict[str, Any]] = []
    duplicates = 0
    for index, value in enumerate(raw):
        try:
            e164 = normalize_email(value) if emails else normalize(value)
        except (InvalidPhone, InvalidEmail) as exc:
            invalid.append({"index": index, "field": f"to[{index}]", "value": value, "reason": exc.reason})
            continue
        if e164 in seen:
            duplicates += 1
            continue
        seen.add(e164)
        valid.append(e164)
    return valid, invalid, duplicates


def _sender(conn: Connection, church_id: str, requested: str | None) -> Sender:
    if requested is not None:
        try:
            phone = normalize(requested)
        except InvalidPhone as exc:
            raise Unprocessable("invalid_from", f"'from' is not a valid number: {exc.reason}", field="from") from None
        rows = conn.run(
            "SELECT phone, sms_per_second, mms_per_second FROM sender_numbers"
            " WHERE church_id = CAST(:c AS uuid) AND phone = :p",
            c=church_id, p=phone,
        )  # fmt: skip
        if not rows:
            raise Unprocessable(
                "unknown_sender", "'from' is not one of this church's numbers; use one of them or leave 'from' out",
                field="from",
            )  # fmt: skip
    else:
        rows = conn.run(
            "SELECT phone, sms_per_second, mms_per_second FROM sender_numbers"
            " WHERE church_id = CAST(:c AS uuid) AND is_default",
            c=church_id,
        )
        if not rows:
            raise Unprocessable(
                "no_sender", "this church has no default sending number; add one or pass 'from'", field="from"
            )
    phone, sms_rate, mms_rate = rows[0]
    return Sender(phone=phone, sms_per_second=float(sms_rate), mms_per_second=float(mms_rate))


def _mail_sender() -> Sender:
    """Mail goes out from ``MAIL_FROM`` at the SES account's rate; without it mail cannot be sent at all."""
    settings = get_settings()
    if not settings.mail_from:
        raise ServiceUnavailable(
            "mail_not_configured",
            "mail is not set up on this server: MAIL_FROM (the SES-verified From address) is not configured;"
            " ask the operator to set it, or send sms",
            field="channel",
        )
    rate = settings.ses_max_send_rate
    return Sender(phone=settings.mail_from, sms_per_second=rate, mms_per_second=rate)


# A group's members with a number (texts) or with an email address (mail): sealed value and lookup hash.
_MEMBER_PHONES_SQL = (
    "SELECT DISTINCT c.phone_hash, c.phone_enc FROM group_members gm JOIN contacts c ON c.id = gm.contact_id"
    " WHERE gm.group_id = ANY(CAST(:ids AS uuid[])) AND c.church_id = CAST(:c AS uuid)"
    " AND c.deleted_at IS NULL AND c.phone_hash IS NOT NULL"
)
_MEMBER_EMAILS_SQL = (
    "SELECT DISTINCT c.email_hash, c.email_enc FROM group_members gm JOIN contacts c ON c.id = gm.contact_id"
    " WHERE gm.group_id = ANY(CAST(:ids AS uuid[])) AND c.church_id = CAST(:c AS uuid)"
    " AND c.deleted_at IS NULL AND c.email_hash IS NOT NULL"
)


def _add_group_members(
    conn: Connection, church_id: str, group_ids: list[str], recipients: list[str], hashes: list[bytes],
    sealed: list[bytes | None], *, emails: bool = False,
) -> None:  # fmt: skip
    """Append the groups' members not already listed (in number order) to the three parallel lists.

    A member's sealed number and hash are the contact's own (same kind, same church): copied, not redone.
    ``emails``: their email addresses instead (members without one are left out, as members without a
    number are for texts).
    """
    known = {
        row[0]
        for row in conn.run(
            "SELECT id::text FROM groups WHERE church_id = CAST(:c AS uuid) AND id = ANY(CAST(:ids AS uuid[]))",
            c=church_id,
            ids=group_ids,
        )
    }
    for index, group_id in enumerate(group_ids):
        if group_id not in known:  # another church's group looks exactly like a missing one
            raise Unprocessable("unknown_group", f"group {group_id} does not exist", field=f"groups[{index}]")
    rows = conn.run(_MEMBER_EMAILS_SQL if emails else _MEMBER_PHONES_SQL, ids=group_ids, c=church_id)
    seen = set(hashes)
    ring = crypto.keyring()
    members = sorted(
        (ring.open(phone_enc, "address"), bytes(phone_hash), bytes(phone_enc))
        for phone_hash, phone_enc in rows
        if bytes(phone_hash) not in seen
    )
    for phone, phone_hash, phone_enc in members:
        recipients.append(phone)
        hashes.append(phone_hash)
        sealed.append(phone_enc)


def _opted_out(conn: Connection, church_id: str, recipients: list[str], hashes: list[bytes], *, channel: str = "sms") -> set[str]:
    # The NULL row says the church erased people who had opted out (common/privacy/suppression.py): only
    # then are the recipients' erasure hashes computed and matched. Otherwise this stays one round trip.
    rows = conn.run(
        "SELECT address_hash FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND channel = :channel"
        " AND address_hash = ANY(CAST(:h AS bytea[]))"
        " UNION ALL SELECT NULL WHERE EXISTS (SELECT 1 FROM erasure_suppressions WHERE church_id = CAST(:c AS uuid))",
        c=church_id, h=hashes, channel=channel,
    )  # fmt: skip
    found = {bytes(row[0]) for row in rows if row[0] is not None}
    opted_out = {r for r, h in zip(recipients, hashes, strict=True) if h in found}
    if len(found) < len(rows):
        from common.privacy import suppression

        opted_out |= suppression.matching(conn, church_id, [r for r in recipients if r not in opted_out], channel=channel)
    return opted_out


def _insert_broadcast(
    conn: Connection, church_id: str, broadcast_id: str, key: str | None, request_hash: bytes | None,
    request: SendRequest, lane: str, response: dict[str, Any], suppressed: int,
) -> bool:  # fmt: skip
    rows = conn.run(
        "INSERT INTO broadcasts (id, church_id, channel, lane, idempotency_key, request_hash, send_at, response_enc,"
        " response_has_invalid, recipient_count, suppressed_count)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :channel, :lane, :key, :hash, :send_at, :r, :inv, :n, :s)"
        " ON CONFLICT (church_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
        id=broadcast_id, c=church_id, channel=request.channel, lane=lane, key=key, hash=request_hash,
        send_at=request.send_at, r=_seal_answer(response), inv="invalid" in response,
        n=response["counts"]["accepted"] + suppressed, s=suppressed,
    )  # fmt: skip
    return bool(rows)


def _replay(conn: Connection, church_id: str, key: str, request_hash: bytes) -> dict[str, Any] | None:
    """The stored answer for ``key`` (same body), ``Conflict`` (different body), or ``None`` (new key).

    A concurrent request with the same key blocks on the unique index at INSERT until the first commits,
    then finds its row here: two requests with one key never both write messages.
    """
    rows = conn.run(
        "SELECT request_hash, response_enc FROM broadcasts WHERE church_id = CAST(:c AS uuid) AND idempotency_key = :k",
        c=church_id, k=key,
    )  # fmt: skip
    if not rows:
        return None
    stored_hash, response = rows[0]
    if bytes(stored_hash) != request_hash:
        raise Conflict(
            "idempotency_conflict",
            "this Idempotency-Key was used with a different request body; use a new key for a new request",
            field="Idempotency-Key",
        )
    return dict(json.loads(crypto.unseal(response, "answer")))


def _replayed(response: dict[str, Any], church_id: str, request: SendRequest) -> Accepted:
    return Accepted(
        broadcast_id=response["broadcast_id"], church_id=church_id, lane="bulk", channel=request.channel,
        sender=Sender("", 0.0, 0.0), queued_ids=[], scheduled=[], response=response, replayed=True,
    )  # fmt: skip


def _response(
    broadcast_id: str, request: SendRequest, text: PreparedText, recipients: list[str], ids: list[str],
    statuses: list[str], invalid: list[dict[str, Any]], duplicates: int, *, mode: str,
) -> dict[str, Any]:  # fmt: skip
    listed = [
        {"to": to, "message_id": mid, "status": status}
        for to, mid, status in zip(recipients[:max_listed_recipients], ids, statuses, strict=False)
    ]
    suppressed = statuses.count("suppressed")
    body: dict[str, Any] = {
        "broadcast_id": broadcast_id,
        "mode": mode,
        "channel": request.channel,
        "encoding": None if request.channel == "mail" else text.encoding,  # mail: sent as UTF-8, never split
        "segments": text.segments,
        "smart_encoding": {"applied": text.smart_encoded, "replaced": text.replaced},
        "counts": {
            "accepted": len(recipients) - suppressed,
            "suppressed": suppressed,
            "invalid": len(invalid),
            "duplicates_removed": duplicates,
        },
        "recipients": listed,
        "recipients_truncated": len(recipients) > max_listed_recipients,
    }
    if request.send_at is not None:
        body["send_at"] = request.send_at.isoformat()
    if invalid:
        body["invalid"] = invalid
    if body["recipients_truncated"]:
        body["recipients_next"] = f"/messages?broadcast_id={broadcast_id}"
    return body
