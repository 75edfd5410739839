"""The hot reads on conversations: a church's inbox, and one conversation's thread.

Same shape as common/messages/queries.py: SQL as module constants (the test suite ``EXPLAIN``\\ s exactly
these), a first-page and a next-page statement per list (an ``OR`` on a NULL cursor would defeat the
index), keyset pagination newest first with ``id`` as tie-breaker. The tie-breaker matters here: one
broadcast sets ``last_message_at`` of every conversation it reaches to the same ``now()``. Both indexes
end with ``id`` (migration 0002), so a page is one bounded index range.

``conversation_messages`` has no ``church_id``: the thread query reaches the church through its
conversation, in the same statement, so a conversation id of another church returns no rows rather than
that church's messages.

The member's number (``contact_enc``) and every text (``body_enc``) are sealed (common/privacy/crypto.py):
the statements read the sealed bytes, and the rows they become hold them opened, as they were written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from common.db.pool import Pool
from common.privacy import crypto

_CONVERSATION_COLUMNS = """
    id, church_id, church_number, contact_enc, contact_id, last_message_at, unread_count,
    needs_review, created_at
"""

LIST_CONVERSATIONS_FIRST_PAGE_SQL = f"""
SELECT {_CONVERSATION_COLUMNS}
FROM conversations
WHERE church_id = :church_id
ORDER BY last_message_at DESC, id DESC
LIMIT :limit
"""

LIST_CONVERSATIONS_NEXT_PAGE_SQL = f"""
SELECT {_CONVERSATION_COLUMNS}
FROM conversations
WHERE church_id = :church_id
  AND (last_message_at, id) < (:before_at, :before_id)
ORDER BY last_message_at DESC, id DESC
LIMIT :limit
"""

# The EXISTS does not refer to the outer row, so PostgreSQL checks it once (a primary-key lookup) and
# then reads the thread from conversation_messages_conv_created, or reads nothing at all.
_THREAD_COLUMNS = """
    cm.id, cm.conversation_id, cm.direction, cm.body_enc, cm.media, cm.message_id, cm.provider_message_id,
    cm.created_at
"""

_OWNED_BY_CHURCH = """
  AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = :conversation_id AND c.church_id = :church_id)
"""

LIST_CONVERSATION_MESSAGES_FIRST_PAGE_SQL = f"""
SELECT {_THREAD_COLUMNS}
FROM conversation_messages cm
WHERE cm.conversation_id = :conversation_id
{_OWNED_BY_CHURCH}
ORDER BY cm.created_at DESC, cm.id DESC
LIMIT :limit
"""

LIST_CONVERSATION_MESSAGES_NEXT_PAGE_SQL = f"""
SELECT {_THREAD_COLUMNS}
FROM conversation_messages cm
WHERE cm.conversation_id = :conversation_id
  AND (cm.created_at, cm.id) < (:before_at, :before_id)
{_OWNED_BY_CHURCH}
ORDER BY cm.created_at DESC, cm.id DESC
LIMIT :limit
"""


@dataclass(frozen=True)
class ConversationRow:
    """One line of a church's inbox."""

    id: UUID
    church_id: UUID
    church_number: str
    contact_address: str
    contact_id: UUID | None
    last_message_at: datetime
    unread_count: int
    needs_review: bool
    created_at: datetime

    @property
    def cursor(self) -> tuple[datetime, UUID]:
        """What to pass as ``before`` to get the page after the one this row ends."""
        return (self.last_message_at, self.id)


@dataclass(frozen=True)
class ConversationMessageRow:
    """One message of a conversation thread, in either direction."""

    id: UUID
    conversation_id: UUID
    direction: str
    body: str
    media: Any  # the jsonb as pg8000 decodes it (a list of media descriptions), or None
    message_id: UUID | None
    provider_message_id: str | None
    created_at: datetime

    @property
    def cursor(self) -> tuple[datetime, UUID]:
        """What to pass as ``before`` to get the page after the one this row ends."""
        return (self.created_at, self.id)


def list_conversations(
    pool: Pool,
    church_id: UUID,
    *,
    limit: int,
    before: tuple[datetime, UUID] | None = None,
) -> list[ConversationRow]:
    """One page of a church's conversations, most recently active first."""
    if before is None:
        rows = pool.run(LIST_CONVERSATIONS_FIRST_PAGE_SQL, church_id=church_id, limit=limit)
    else:
        rows = pool.run(
            LIST_CONVERSATIONS_NEXT_PAGE_SQL, church_id=church_id, limit=limit, before_at=before[0], before_id=before[1]
        )
    return [_conversation(row) for row in rows]


def list_conversation_messages(
    pool: Pool,
    church_id: UUID,
    conversation_id: UUID,
    *,
    limit: int,
    before: tuple[datetime, UUID] | None = None,
) -> list[ConversationMessageRow]:
    """One page of a conversation's messages, newest first; empty if the conversation is not the church's."""
    params: dict[str, Any] = {"church_id": church_id, "conversation_id": conversation_id, "limit": limit}
    if before is None:
        rows = pool.run(LIST_CONVERSATION_MESSAGES_FIRST_PAGE_SQL, **params)
    else:
        rows = pool.run(LIST_CONVERSATION_MESSAGES_NEXT_PAGE_SQL, before_at=before[0], before_id=before[1], **params)
    return [_thread_message(row) for row in rows]


def _conversation(row: list[Any]) -> ConversationRow:
    conv_id, church_id, church_number, contact_enc, contact_id, last_message_at, unread, review, created_at = row
    return ConversationRow(
        conv_id, church_id, church_number, crypto.unseal(contact_enc, "address"), contact_id, last_message_at, unread,
        review, created_at,
    )  # fmt: skip


def _thread_message(row: list[Any]) -> ConversationMessageRow:
    message_id, conversation_id, direction, body_enc, media, sent_id, provider_id, created_at = row
    return ConversationMessageRow(
        message_id, conversation_id, direction, crypto.unseal(body_enc, "text"), media, sent_id, provider_id, created_at
    )


def conversation_exists(pool: Pool, church_id: UUID, conversation_id: UUID) -> bool:
    rows = pool.run(
        "SELECT 1 FROM conversations WHERE id = :conversation_id AND church_id = :church_id",
        conversation_id=conversation_id, church_id=church_id,
    )  # fmt: skip
    return bool(rows)
