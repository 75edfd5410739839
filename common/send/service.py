"""Accepting a send: validate, expand, suppress, persist in one transaction, then enqueue (or send inline).

Order matters for the contract "accepted means never lost":

1. Everything that can refuse the request runs first and writes nothing: the body (pydantic), every
   number (each invalid one reported by index), the groups (ours, and known), the text (at most 10
   segments), the sender (one of the church's numbers).
2. One transaction writes the broadcast (with its idempotency key and its answer) and every message
   row. After COMMIT the request is accepted: PostgreSQL holds it whatever happens next.
3. Then the rows go to Redis (pipelined). If Redis is disabled or does not answer, the rows are sent
   inline within the request's budget; whatever is left stays ``queued`` for the retry-scheduler.
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

from common.api_errors import Conflict, Unprocessable
from common.compliance.quiet_hours import SendWindow, next_opening, zone
from common.db.pool import Connection, Pool
from common.ids import uuid7
from common.limits.sends import Admit, SendCharge
from common.messages import store
from common.messages.store import Purpose
from common.phones import InvalidPhone, normalize
from common.queue import Channel, Lane
from common.segments import PreparedText, max_segments, prepare
from common.send.models import SendRequest

logger = logging.getLogger("koinonia.send")

max_listed_recipients = 1_000  # a larger broadcast is paged through GET /messages?broadcast_id=...
_IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9_:.-]{1,255}")


@dataclass(frozen=True)
class Sender:
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
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    admit: Admit | None = None,
) -> Accepted:
    """Validate and persist in one transaction; raise ``ApiError`` (4xx, nothing written) if refused."""
    with pool.transaction() as conn:
        return accept_in(
            conn, church_id, request, raw_payload=raw_payload, idempotency_key=idempotency_key, now=now, admit=admit
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
) -> Accepted:
    """``accept`` inside the caller's transaction (a keyword reply commits with the inbound text).

    ``admit`` (``common.limits.sends``) charges the church's rate limits and quota, or raises the 429/402
    that refuses the send: the last check before anything is written. Replays and compliance replies
    are never charged.

    ``purpose="compliance"`` is a STOP/START confirmation or a HELP answer: it reaches a person who
    has opted out (the confirmation of their own opt-out) and is never held for quiet hours.
    """
    if idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
        raise Unprocessable(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 characters of letters, digits and _ : . -",
            field="Idempotency-Key",
        )
    text = prepare(request.text, smart_encoding=request.smart_encoding)
    if request.channel == "mms":
        # An MMS is one message whatever its text (sent as UTF-8, never split): billed as one, times the
        # plan's MMS weight (common/billing/usage.py), media-only included.
        text = dataclasses.replace(text, segments=1)
    elif text.segments > max_segments:
        limit = "1,530 GSM-7 characters" if text.encoding == "GSM-7" else "670 UCS-2 characters"
        raise Unprocessable(
            "text_too_long",
            f"this text needs {text.segments} segments ({text.units} {text.encoding} units); the limit is "
            f"{max_segments} segments ({limit}). Shorten it or split it into two messages",
            field="text",
        )
    recipients, invalid, duplicates = _normalize_recipients(request.recipients)
    if invalid and not request.skip_invalid:
        raise Unprocessable(
            "invalid_recipients",
            f"{len(invalid)} recipient(s) are not valid numbers (first: to[{invalid[0]['index']}], "
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
    sender = _sender(conn, church_id, request.from_)
    if request.groups:
        recipients = _with_group_members(conn, church_id, [str(g) for g in request.groups], recipients)
    if not recipients:
        raise Unprocessable("no_recipients", "no valid recipients to send to (the groups may be empty)", field="to")
    opted_out = _opted_out(conn, church_id, recipients) if purpose == "normal" else set()
    if len(opted_out) == len(recipients):
        raise Unprocessable(
            "recipients_opted_out",
            "every recipient has opted out of this church's texts (they can text START to opt back in)",
            field="to" if request.recipients else "groups",
        )
    lane: Lane = "conv" if len(recipients) == 1 and not request.groups else "bulk"
    broadcast_id = str(uuid7())
    first_attempt = request.send_at if request.send_at is not None and request.send_at > at + timedelta(seconds=1) else at
    ids = [str(uuid7()) for _ in recipients]
    due = [first_attempt] * len(recipients)
    zones: list[str | None] = [None] * len(recipients)
    if lane == "bulk" and purpose == "normal":
        zones, due = _quiet_hours(conn, church_id, recipients, first_attempt)
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
    if held:
        response["quiet_hours"] = {
            "held": held,
            "first_opening": min(d for d, s in zip(due, statuses, strict=True) if s == "scheduled").isoformat(),
        }
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
            from_address=sender.phone, subject=None, body=text.text,
            media_urls=[str(u) for u in request.media_urls] if request.media_urls else None,
            encoding=text.encoding, segments=text.segments, max_attempts=request.max_attempts,
            ids=ids, to_addresses=recipients, statuses=statuses, next_attempt_at=due,
            deadline_at=[d + deadline for d in due], recipient_tz=zones,
        ),
    )  # fmt: skip
    queued = [i for i, s in zip(ids, statuses, strict=True) if s == "queued"]
    scheduled = [(i, d) for i, s, d in zip(ids, statuses, due, strict=True) if s == "scheduled"]
    return Accepted(
        broadcast_id=broadcast_id, church_id=church_id, lane=lane, channel=request.channel, sender=sender,
        queued_ids=queued, scheduled=scheduled, response=response,
    )  # fmt: skip


def _quiet_hours(
    conn: Connection, church_id: str, recipients: list[str], first_attempt: datetime
) -> tuple[list[str | None], list[datetime]]:
    """Each recipient's time zone (contact's, else the church's) and when their send window next opens."""
    church = _church(conn, church_id)
    rows = conn.run(
        "SELECT phone, timezone FROM contacts WHERE church_id = CAST(:c AS uuid) AND phone = ANY(CAST(:p AS text[]))"
        " AND timezone IS NOT NULL AND deleted_at IS NULL",
        c=church_id, p=recipients,
    )  # fmt: skip
    contact_zones: dict[str, str] = {phone: tz for phone, tz in rows}
    resolved: dict[str | None, tuple[str, datetime]] = {}
    zones: list[str | None] = []
    due: list[datetime] = []
    for phone in recipients:
        name = contact_zones.get(phone)
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
        "UPDATE broadcasts SET response = CAST(:r AS jsonb) WHERE id = CAST(:id AS uuid)",
        r=json.dumps(response), id=broadcast_id,
    )  # fmt: skip


def _normalize_recipients(raw: Sequence[str]) -> tuple[list[str], list[dict[str, Any]], int]:
    seen: set[str] = set()
    valid: list[str] = []
    invalid: list[dict[str, Any]] = []
    duplicates = 0
    for index, value in enumerate(raw):
        try:
            e164 = normalize(value)
        except InvalidPhone as exc:
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


def _with_group_members(conn: Connection, church_id: str, group_ids: list[str], recipients: list[str]) -> list[str]:
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
    members = conn.run(
        "SELECT DISTINCT c.phone FROM group_members gm JOIN contacts c ON c.id = gm.contact_id"
        " WHERE gm.group_id = ANY(CAST(:ids AS uuid[])) AND c.church_id = CAST(:c AS uuid)"
        " AND c.deleted_at IS NULL AND c.phone IS NOT NULL ORDER BY c.phone",
        ids=group_ids, c=church_id,
    )  # fmt: skip
    seen = set(recipients)
    merged = list(recipients)
    for (phone,) in members:
        if phone not in seen:
            seen.add(phone)
            merged.append(phone)
    return merged


def _opted_out(conn: Connection, church_id: str, recipients: list[str]) -> set[str]:
    # The NULL row says the church erased people who had opted out (common/privacy/suppression.py): only
    # then are the recipients' keyed hashes computed and matched. Otherwise this stays one round trip.
    rows = conn.run(
        "SELECT address FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND channel = 'sms'"
        " AND address = ANY(CAST(:a AS text[]))"
        " UNION ALL SELECT NULL WHERE EXISTS (SELECT 1 FROM erasure_suppressions WHERE church_id = CAST(:c AS uuid))",
        c=church_id, a=recipients,
    )  # fmt: skip
    opted_out = {row[0] for row in rows if row[0] is not None}
    if len(opted_out) < len(rows):
        from common.privacy import suppression

        opted_out |= suppression.matching(conn, church_id, [r for r in recipients if r not in opted_out])
    return opted_out


def _insert_broadcast(
    conn: Connection, church_id: str, broadcast_id: str, key: str | None, request_hash: bytes | None,
    request: SendRequest, lane: str, response: dict[str, Any], suppressed: int,
) -> bool:  # fmt: skip
    rows = conn.run(
        "INSERT INTO broadcasts (id, church_id, channel, lane, idempotency_key, request_hash, send_at, response,"
        " recipient_count, suppressed_count)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :channel, :lane, :key, :hash, :send_at, CAST(:r AS jsonb),"
        " :n, :s)"
        " ON CONFLICT (church_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
        id=broadcast_id, c=church_id, channel=request.channel, lane=lane, key=key, hash=request_hash,
        send_at=request.send_at, r=json.dumps(response), n=response["counts"]["accepted"] + suppressed, s=suppressed,
    )  # fmt: skip
    return bool(rows)


def _replay(conn: Connection, church_id: str, key: str, request_hash: bytes) -> dict[str, Any] | None:
    """The stored answer for ``key`` (same body), ``Conflict`` (different body), or ``None`` (new key).

    A concurrent request with the same key blocks on the unique index at INSERT until the first commits,
    then finds its row here: two requests with one key never both write messages.
    """
    rows = conn.run(
        "SELECT request_hash, response FROM broadcasts WHERE church_id = CAST(:c AS uuid) AND idempotency_key = :k",
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
    return dict(response) if isinstance(response, dict) else dict(json.loads(response))


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
        "encoding": text.encoding,
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
