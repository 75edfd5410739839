"""The read API over messages: one message, a church's list, a broadcast's recipients (keyset pages)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from uuid import UUID

from common.api_errors import BadRequest, NotFound
from common.db.pool import Pool
from common.messages import queries
from common.messages.queries import MessageRow

_BAD_CURSOR = "cursor is not one this API returned; start again without it"
default_limit = 50
max_limit = 500


def message_json(row: MessageRow) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "broadcast_id": str(row.broadcast_id) if row.broadcast_id else None,
        "channel": row.channel,
        "lane": row.lane,
        "to": row.to_address,
        "from": row.from_address,
        "status": row.status,
        "attempts": row.attempts,
        "segments": row.segments,
        "error_code": row.last_error_code,
        "created_at": row.created_at.isoformat(),
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        "finalized_at": row.finalized_at.isoformat() if row.finalized_at else None,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "carrier": row.carrier,
        "cost": {"amount": str(row.cost_amount), "currency": row.cost_currency} if row.cost_amount is not None else None,
        "correlation_id": row.correlation_id,  # the X-Request-Id of the request that sent it: quote it to support
    }


def get_one(pool: Pool, church_id: str, message_id: str) -> dict[str, Any]:
    row = queries.get_message(pool, UUID(church_id), _uuid(message_id, "id", not_found=True))
    if row is None:
        raise NotFound("not_found", f"no message {message_id}")
    return message_json(row)


def list_page(pool: Pool, church_id: str, args: dict[str, str]) -> dict[str, Any]:
    limit = page_limit(args.get("limit"))
    church = UUID(church_id)
    if "broadcast_id" in args:
        broadcast = _uuid(args["broadcast_id"], "broadcast_id")
        after = _uuid(_decode(args["cursor"]), "cursor") if args.get("cursor") else None
        rows = queries.list_broadcast_messages(pool, church, broadcast, limit=limit, after=after)
        next_cursor = encode_cursor(str(rows[-1].id)) if len(rows) == limit else None
    else:
        before = time_cursor(args["cursor"]) if args.get("cursor") else None
        rows = queries.list_church_messages(pool, church, limit=limit, before=before)
        next_cursor = encode_cursor(f"{rows[-1].created_at.isoformat()}|{rows[-1].id}") if len(rows) == limit else None
    return {"data": [message_json(r) for r in rows], "next_cursor": next_cursor}


def page_limit(raw: str | None) -> int:
    if raw is None:
        return default_limit
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= max_limit:  # "²".isdigit(), but int("²") fails
        raise BadRequest("invalid_limit", f"limit must be a whole number from 1 to {max_limit}", field="limit")
    return int(raw)


def _uuid(raw: str, field: str, *, not_found: bool = False) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        if not_found:
            raise NotFound("not_found", f"no message {raw}") from None
        raise BadRequest("invalid_id", f"{field} is not a valid id", field=field) from None


def encode_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: a non-ASCII cursor ("%C2%80")
        raise BadRequest("invalid_cursor", _BAD_CURSOR, field="cursor") from None


def time_cursor(cursor: str) -> tuple[datetime, UUID]:
    at, _, mid = _decode(cursor).partition("|")
    try:
        return datetime.fromisoformat(at), UUID(mid)
    except ValueError:
        raise BadRequest("invalid_cursor", _BAD_CURSOR, field="cursor") from None
