"""The read API over conversations: a church's inbox and one thread, newest first, keyset pages.

``GET /conversations`` and ``GET /conversations/{id}/messages`` (on the ``send`` function, beside
``/messages``). Another church's conversation id answers 404, the same as a missing one.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from common.api_errors import NotFound
from common.conversations import queries
from common.conversations.queries import ConversationMessageRow, ConversationRow
from common.db.pool import Pool
from common.messages.read_api import encode_cursor, page_limit, time_cursor


def conversation_json(row: ConversationRow) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "church_number": row.church_number,
        "contact_address": row.contact_address,
        "contact_id": str(row.contact_id) if row.contact_id else None,
        "last_message_at": row.last_message_at.isoformat(),
        "unread_count": row.unread_count,
        "needs_review": row.needs_review,
        "created_at": row.created_at.isoformat(),
    }


def thread_message_json(row: ConversationMessageRow) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "direction": row.direction,
        "body": row.body,
        "media": row.media,
        "message_id": str(row.message_id) if row.message_id else None,
        "created_at": row.created_at.isoformat(),
    }


def list_page(pool: Pool, church_id: str, args: dict[str, str]) -> dict[str, Any]:
    limit = page_limit(args.get("limit"))
    before = time_cursor(args["cursor"]) if args.get("cursor") else None
    rows = queries.list_conversations(pool, UUID(church_id), limit=limit, before=before)
    return {"data": [conversation_json(r) for r in rows], "next_cursor": _next(rows, limit)}


def thread_page(pool: Pool, church_id: str, conversation_id: str, args: dict[str, str]) -> dict[str, Any]:
    try:
        conversation = UUID(conversation_id)
    except ValueError:
        raise NotFound("not_found", f"no conversation {conversation_id}") from None
    limit = page_limit(args.get("limit"))
    before = time_cursor(args["cursor"]) if args.get("cursor") else None
    rows = queries.list_conversation_messages(pool, UUID(church_id), conversation, limit=limit, before=before)
    if not rows and before is None and not queries.conversation_exists(pool, UUID(church_id), conversation):
        raise NotFound("not_found", f"no conversation {conversation_id}")
    return {"data": [thread_message_json(r) for r in rows], "next_cursor": _next(rows, limit)}


def _next(rows: list[ConversationRow] | list[ConversationMessageRow], limit: int) -> str | None:
    if len(rows) < limit:
        return None
    at, row_id = rows[-1].cursor
    return encode_cursor(f"{at.isoformat()}|{row_id}")
