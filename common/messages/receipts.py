"""Delivery receipts: keep the carrier's best-known state per message, and move messages forward by it.

A receipt row (``carrier_receipts``, migration 0004) is upserted per webhook event, keeping only the
highest-ranked state (``RECEIPT_RANK``: sent < delivery_unconfirmed < delivered | delivery_failed).
So a duplicate event, or a late ``sent`` after ``delivered``, changes nothing.

Applying a receipt (``APPLY_*`` below, one statement) moves its message forward when the message ranks
lower, and marks the receipt applied. It skips a message that is still ``sending``: our own outcome write
has not landed, and that write applies the receipt itself right after (``apply_for_messages``). The
race between the two is closed by the webhook locking the message row first (``lock_message``): either
the webhook sees our write, or our write waits for the webhook's commit and then sees the receipt. A
receipt without our message id (a profile-level webhook) waits for the scheduler's sweep
(``apply_pending``), which matches on the provider id.

A message still ``queued`` or ``retrying`` takes the receipt too: the carrier accepted an earlier
attempt whose answer we never got, so the pending retry is dropped instead of sending twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.db.pool import Connection, Pool
from common.messages.states import RECEIPT_RANK
from common.webhooks.events import Receipt

_CURRENT_RANK = "CASE m.status " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in RECEIPT_RANK.items()) + " END"
_RECEIVES = "(" + ", ".join(f"'{s}'" for s, r in RECEIPT_RANK.items() if r < max(RECEIPT_RANK.values())) + ")"

UPSERT_SQL = """
INSERT INTO carrier_receipts (provider_message_id, message_id, status, rank, carrier_status, carrier, cost_amount,
                              cost_currency, error_code, error_detail, occurred_at)
VALUES (:pid, CAST(:mid AS uuid), :status, :rank, :carrier_status, :carrier, CAST(:cost AS numeric), :currency,
        :code, :detail, :occurred_at)
ON CONFLICT (provider_message_id) DO UPDATE SET
    message_id = coalesce(carrier_receipts.message_id, EXCLUDED.message_id),
    status = EXCLUDED.status, rank = EXCLUDED.rank, carrier_status = EXCLUDED.carrier_status,
    carrier = coalesce(EXCLUDED.carrier, carrier_receipts.carrier),
    cost_amount = coalesce(EXCLUDED.cost_amount, carrier_receipts.cost_amount),
    cost_currency = coalesce(EXCLUDED.cost_currency, carrier_receipts.cost_currency),
    error_code = EXCLUDED.error_code, error_detail = EXCLUDED.error_detail,
    occurred_at = EXCLUDED.occurred_at, applied_at = NULL
WHERE EXCLUDED.rank > carrier_receipts.rank
RETURNING provider_message_id
"""

_APPLY_TEMPLATE = f"""
WITH r AS (
    SELECT r.provider_message_id,
           coalesce(r.message_id, (SELECT id FROM messages WHERE provider_message_id = r.provider_message_id)) AS mid
    FROM carrier_receipts r
    WHERE r.applied_at IS NULL AND {{filter}}
    ORDER BY r.received_at
    LIMIT :limit
    FOR UPDATE OF r SKIP LOCKED
), target AS (
    SELECT r.provider_message_id, m.id AS mid
    FROM r JOIN messages m ON m.id = r.mid
    WHERE m.status <> 'sending'
    FOR UPDATE OF m SKIP LOCKED
), moved AS (
    UPDATE messages m SET
        status = c.status,
        provider_message_id = coalesce(m.provider_message_id, c.provider_message_id),
        carrier = coalesce(c.carrier, m.carrier),
        cost_amount = coalesce(c.cost_amount, m.cost_amount),
        cost_currency = coalesce(c.cost_currency, m.cost_currency),
        last_error_code = CASE WHEN c.status = 'delivery_failed' THEN c.error_code ELSE m.last_error_code END,
        last_error_detail = CASE WHEN c.status = 'delivery_failed' THEN c.error_detail ELSE m.last_error_detail END,
        sent_at = coalesce(m.sent_at, c.occurred_at, now()),
        finalized_at = CASE WHEN c.rank = 3 THEN coalesce(c.occurred_at, now()) ELSE m.finalized_at END,
        next_attempt_at = NULL, lease_until = NULL, updated_at = now()
    FROM target t JOIN carrier_receipts c ON c.provider_message_id = t.provider_message_id
    WHERE m.id = t.mid AND m.status IN {_RECEIVES} AND {_CURRENT_RANK} < c.rank
      AND m.to_enc IS NOT NULL  -- NULL: a person's data was deleted (common/privacy): nothing comes back
    RETURNING m.id, m.correlation_id
)
UPDATE carrier_receipts c SET applied_at = now(), message_id = coalesce(c.message_id, t.mid)
FROM target t
WHERE c.provider_message_id = t.provider_message_id
RETURNING (SELECT count(*) FROM moved), (SELECT array_agg(id::text) FROM moved),
          (SELECT jsonb_object_agg(id::text, correlation_id) FROM moved)
"""

APPLY_ONE_SQL = _APPLY_TEMPLATE.format(filter="r.provider_message_id = :pid")
APPLY_FOR_MESSAGES_SQL = _APPLY_TEMPLATE.format(filter="r.message_id = ANY(CAST(:ids AS uuid[]))")
APPLY_PENDING_SQL = _APPLY_TEMPLATE.format(filter="true")


def lock_message(conn: Connection, message_id: str | None) -> None:
    """Hold our message's row for the rest of the webhook's transaction (see the module docstring)."""
    if message_id is not None:
        conn.run("SELECT 1 FROM messages WHERE id = CAST(:id AS uuid) FOR UPDATE", id=message_id)


def record(conn: Connection, receipt: Receipt) -> bool:
    """Merge one event into its receipt; ``False`` if it says nothing newer than what we have."""
    rows = conn.run(
        UPSERT_SQL,
        pid=receipt.provider_message_id, mid=receipt.message_id, status=str(receipt.status), rank=receipt.rank,
        carrier_status=receipt.carrier_status, carrier=receipt.carrier, cost=receipt.cost_amount,
        currency=receipt.cost_currency, code=receipt.error_code, detail=receipt.error_detail,
        occurred_at=receipt.occurred_at,
    )  # fmt: skip
    return bool(rows)


def apply_one(conn: Connection, provider_message_id: str) -> int:
    return len(apply_one_moved(conn, provider_message_id))


def apply_one_moved(conn: Connection, provider_message_id: str) -> dict[str, str | None]:
    """``apply_one``, answering which message moved and its correlation id (the webhook logs them): read from
    the updated row by the same statement, no other query."""
    rows = conn.run(APPLY_ONE_SQL, pid=provider_message_id, limit=1)
    moved = rows[0][2] if rows else None
    return dict(moved) if isinstance(moved, dict) else {}


def apply_for_messages(conn: Connection | Pool, message_ids: Sequence[str]) -> int:
    """After our outcome write: receipts that arrived while these messages were still ``sending``."""
    if not message_ids:
        return 0
    return _moved(conn.run(APPLY_FOR_MESSAGES_SQL, ids=list(message_ids), limit=len(message_ids)))


def apply_pending(pool: Pool, *, limit: int = 1000) -> int:
    """The scheduler's sweep: any receipt not yet applied whose message is ready for it."""
    return len(apply_pending_ids(pool, limit=limit))


def apply_pending_ids(pool: Pool, *, limit: int = 1000) -> list[str]:
    """``apply_pending``, answering which messages moved (the scheduler names them to common/analytics)."""
    rows = pool.run(APPLY_PENDING_SQL, limit=limit)
    return list(rows[0][1] or []) if rows else []


_PRUNE_EVENTS_SQL = """
DELETE FROM webhook_events WHERE event_id IN (
    SELECT event_id FROM webhook_events WHERE received_at < now() - CAST(:keep_s AS double precision) * interval '1 second'
    LIMIT :batch)
"""
# A receipt still unapplied after this long has no message to apply to (deleted, or not ours).
_PRUNE_RECEIPTS_SQL = """
DELETE FROM carrier_receipts WHERE provider_message_id IN (
    SELECT provider_message_id FROM carrier_receipts
    WHERE received_at < now() - CAST(:keep_s AS double precision) * interval '1 second'
    LIMIT :batch)
"""

keep_events_s = 7 * 86400  # Telnyx redelivers for hours at most; a week is ample for de-duplication


def prune(pool: Pool, *, keep_s: float = keep_events_s, batch: int = 5000) -> int:
    """Delete webhook event ids and receipts older than ``keep_s`` (one bounded batch of each)."""
    events = pool.run(_PRUNE_EVENTS_SQL + " RETURNING 1", keep_s=keep_s, batch=batch)
    gone = pool.run(_PRUNE_RECEIPTS_SQL + " RETURNING 1", keep_s=keep_s, batch=batch)
    return len(events) + len(gone)


def _moved(rows: list[list[object]]) -> int:
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]
