"""The hot reads on ``messages``: a church's message list, and the scheduler's two work queries.

Each query is a module constant so that the test suite can ``EXPLAIN`` exactly the SQL that runs here
(tests/test_hot_queries.py asserts every one is answered from an index on realistic statistics). A list
has two constants, first page and next page, instead of one with ``:before IS NULL OR ...``: an ``OR``
on a parameter cannot become an index condition, so one statement would read from the newest row on
every page.

Pagination is keyset, newest first on ``(created_at, id)``: the cursor is the last row of the previous
page, so a page costs the same at any depth and rows inserted meanwhile neither repeat nor vanish.
``id`` breaks ties (a broadcast's rows share one ``created_at``: ``now()`` is the transaction time); the
index ``messages_church_created (church_id, created_at, id)`` serves the whole order (migration 0002).
Pass timezone-aware datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from common.db.pool import Pool
from common.privacy import crypto

ERASED = "erased"  # what a message list shows as the number of an erased recipient

# The columns a list shows; body and error detail are there (sealed: ``MessageRow`` opens them when
# read), the carrier bookkeeping is not.
_LIST_COLUMNS = """
    id, church_id, broadcast_id, channel, lane, to_enc, from_address, subject_enc, body_enc, segments,
    status, attempts, last_error_code, created_at, sent_at, finalized_at, next_attempt_at, carrier,
    cost_amount, cost_currency, correlation_id
"""

LIST_FIRST_PAGE_SQL = f"""
SELECT {_LIST_COLUMNS}
FROM messages
WHERE church_id = :church_id
ORDER BY created_at DESC, id DESC
LIMIT :limit
"""

LIST_NEXT_PAGE_SQL = f"""
SELECT {_LIST_COLUMNS}
FROM messages
WHERE church_id = :church_id
  AND (created_at, id) < (:before_at, :before_id)
ORDER BY created_at DESC, id DESC
LIMIT :limit
"""

# The scheduler's "what is due": the predicate repeats messages_due's WHERE literally (a parameter
# there could not prove the partial index applies). Cross-church on purpose: the scheduler serves
# every church; fair share between churches is decided after this read, not in it. No `id`
# tie-breaker: a broadcast queues thousands of rows with one next_attempt_at, and ordering those by id
# would need a sort of the whole tie group before the first row; the order among equals is irrelevant
# to a work queue, so a scan of messages_due in order can stop after `limit` rows. (On today's
# statistics the planner prefers a bitmap scan of messages_due plus a top-N sort: it underestimates the
# due rows, multiplying the status and next_attempt_at selectivities although one implies the other.
# Either plan reads only the partial index's in-flight rows.)
DUE_FOR_ATTEMPT_SQL = """
SELECT id, church_id, channel, lane, status, attempts, max_attempts, next_attempt_at, deadline_at
FROM messages
WHERE status IN ('scheduled', 'queued', 'retrying')
  AND next_attempt_at <= :now
ORDER BY next_attempt_at
LIMIT :limit
"""

# Claims whose consumer died: status 'sending' past its lease (partial index messages_lease); no
# tie-breaker, as above.
EXPIRED_LEASES_SQL = """
SELECT id, church_id, claim_token, attempts, max_attempts, lease_until, deadline_at
FROM messages
WHERE status = 'sending'
  AND lease_until < :now
ORDER BY lease_until
LIMIT :limit
"""


@dataclass(frozen=True)
class MessageRow:
    """One row of a church's message list (number, subject and body sealed; opened on first read)."""

    id: UUID
    church_id: UUID
    broadcast_id: UUID | None
    channel: str
    lane: str
    to_enc: bytes | None  # NULL: the recipient was erased (common/privacy/deletion.py)
    from_address: str | None
    subject_enc: bytes | None
    body_enc: bytes | None
    segments: int
    status: str
    attempts: int
    last_error_code: str | None
    created_at: datetime
    sent_at: datetime | None
    finalized_at: datetime | None
    next_attempt_at: datetime | None  # while scheduled (send_at, quiet hours) or waiting to retry
    carrier: str | None  # the recipient's carrier, from the delivery receipt
    cost_amount: Decimal | None
    cost_currency: str | None
    correlation_id: str | None = None  # the request that accepted it (common/log_context.py)

    @property
    def cursor(self) -> tuple[datetime, UUID]:
        """What to pass as ``before`` to get the page after the one this row ends."""
        return (self.created_at, self.id)

    @property
    def to_address(self) -> str:
        """The recipient's number, or ``'erased'``."""
        return ERASED if self.to_enc is None else crypto.unseal(self.to_enc, "address")

    @property
    def subject(self) -> str | None:
        return crypto.unseal_optional(self.subject_enc, "text")

    @property
    def body(self) -> str:
        return "" if self.body_enc is None else crypto.unseal(self.body_enc, "text")


@dataclass(frozen=True)
class DueMessage:
    """A message whose next carrier attempt (or scheduled first send) is due."""

    id: UUID
    church_id: UUID
    channel: str
    lane: str
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    deadline_at: datetime


@dataclass(frozen=True)
class ExpiredLease:
    """A message left in 'sending' by a consumer that never reported back."""

    id: UUID
    church_id: UUID
    claim_token: UUID | None
    attempts: int
    max_attempts: int
    lease_until: datetime
    deadline_at: datetime


def list_church_messages(
    pool: Pool,
    church_id: UUID,
    *,
    limit: int,
    before: tuple[datetime, UUID] | None = None,
) -> list[MessageRow]:
    """One page of a church's messages, newest first; ``before`` is the previous page's last cursor."""
    if before is None:
        rows = pool.run(LIST_FIRST_PAGE_SQL, church_id=church_id, limit=limit)
    else:
        rows = pool.run(LIST_NEXT_PAGE_SQL, church_id=church_id, limit=limit, before_at=before[0], before_id=before[1])
    return [MessageRow(*row) for row in rows]


def due_for_attempt(pool: Pool, *, now: datetime, limit: int) -> list[DueMessage]:
    """Messages due for a (re)send at ``now``, oldest due first, across all churches.

    A read, not a claim: the caller moves each one on with a fenced status update, which is what keeps
    two schedulers from sending the same message.
    """
    return [DueMessage(*row) for row in pool.run(DUE_FOR_ATTEMPT_SQL, now=now, limit=limit)]


def expired_leases(pool: Pool, *, now: datetime, limit: int) -> list[ExpiredLease]:
    """Messages still 'sending' whose lease ran out before ``now``, longest expired first."""
    return [ExpiredLease(*row) for row in pool.run(EXPIRED_LEASES_SQL, now=now, limit=limit)]


GET_MESSAGE_SQL = f"""
SELECT {_LIST_COLUMNS}
FROM messages
WHERE id = :id AND church_id = :church_id
"""

# A broadcast's recipients, in id order (UUIDv7: creation order); messages_broadcast serves it and the
# church_id filter keeps another church's broadcast id from showing anything.
LIST_BROADCAST_FIRST_PAGE_SQL = f"""
SELECT {_LIST_COLUMNS}
FROM messages
WHERE broadcast_id = :broadcast_id AND church_id = :church_id
ORDER BY id
LIMIT :limit
"""

LIST_BROADCAST_NEXT_PAGE_SQL = f"""
SELECT {_LIST_COLUMNS}
FROM messages
WHERE broadcast_id = :broadcast_id AND church_id = :church_id AND id > :after_id
ORDER BY id
LIMIT :limit
"""


def get_message(pool: Pool, church_id: UUID, message_id: UUID) -> MessageRow | None:
    """One message, only if it is this church's (another church's id looks like a missing one)."""
    rows = pool.run(GET_MESSAGE_SQL, id=message_id, church_id=church_id)
    return MessageRow(*rows[0]) if rows else None


def list_broadcast_messages(
    pool: Pool, church_id: UUID, broadcast_id: UUID, *, limit: int, after: UUID | None = None
) -> list[MessageRow]:
    if after is None:
        rows = pool.run(LIST_BROADCAST_FIRST_PAGE_SQL, broadcast_id=broadcast_id, church_id=church_id, limit=limit)
    else:
        rows = pool.run(
            LIST_BROADCAST_NEXT_PAGE_SQL, broadcast_id=broadcast_id, church_id=church_id, limit=limit, after_id=after
        )
    return [MessageRow(*row) for row in rows]
