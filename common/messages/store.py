"""Writes on ``messages``: insert a request's rows, claim a batch, record outcomes. Plain SQL.

Numbers, bodies and subjects are sealed (common/privacy/crypto.py): ``insert_messages`` seals the body
once per request and each number once; the claim returns the sealed values and opens them here (a
batch's shared body once); opt-outs match on ``to_hash``, never on a number.

The claim is the fence against double sends (every path, consumer or inline, claims the same way):
one statement turns ids into rows this claimant owns, with a fresh ``claim_token`` and a lease, and
only rows it got back may go to the carrier. Outcomes are written ``WHERE claim_token = :token AND
status = 'sending'``, so a claimant whose lease was taken over cannot overwrite the newer owner.

The claim also applies the last-moment rules, in the same round trip: a recipient who opted out since
the send was accepted is ``suppressed`` (unless the text is the confirmation of that opt-out), a
message past its deadline is ``expired``, and a bulk text (never a mail) outside its recipient's send window is
``scheduled`` again for the window's opening (``send_window_opens_at``, migration 0004); none of them
is returned for sending. Because every path (consumer, retry, replay, reclaim, inline) claims, these
rules hold on all of them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from common import metrics
from common.db.arrays import pg_array
from common.db.pool import Connection, Pool
from common.ids import uuid7
from common.messages import receipts
from common.privacy import crypto

# A claimed row may be taken over by another claimant once its lease has run out.
CLAIM_SQL = """
WITH candidates AS (
    SELECT m.id,
           m.purpose = 'normal' AND EXISTS (
               SELECT 1 FROM opt_outs o
               WHERE o.church_id = m.church_id AND o.address_hash = m.to_hash
                 AND o.channel = CASE WHEN m.channel = 'mail' THEN 'mail' ELSE 'sms' END) AS opted_out,
           m.deadline_at <= now() AS past_deadline,
           CASE WHEN m.lane = 'bulk' AND m.purpose = 'normal' AND m.channel <> 'mail' THEN
               send_window_opens_at(now(), coalesce(m.recipient_tz, ch.timezone),
                                    ch.send_window_start, ch.send_window_end) END AS opens_at
    FROM messages m JOIN churches ch ON ch.id = m.church_id
    WHERE m.id = ANY(CAST(:ids AS uuid[]))
      AND (   (m.status IN ('queued', 'retrying', 'scheduled')
               AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now() + interval '1 second'))
           OR (m.status = 'sending' AND m.lease_until < now()))
    FOR UPDATE OF m SKIP LOCKED
), decided AS (
    SELECT id, opens_at,
           CASE WHEN opted_out THEN 'suppressed' WHEN past_deadline THEN 'expired'
                WHEN opens_at IS NOT NULL THEN 'scheduled' ELSE 'sending' END AS status
    FROM candidates
)
UPDATE messages m SET
    status = d.status,
    attempts = m.attempts + CASE WHEN d.status = 'sending' THEN 1 ELSE 0 END,
    last_error_code = CASE d.status WHEN 'suppressed' THEN 'opted_out' WHEN 'expired' THEN 'deadline_passed'
                                    ELSE m.last_error_code END,
    claim_token = CAST(:token AS uuid),
    lease_until = CASE WHEN d.status = 'sending'
                       THEN now() + CAST(:lease_s AS double precision) * interval '1 second' END,
    -- Held for quiet hours: due when the window opens, with as much time left to go out as it had now.
    next_attempt_at = CASE WHEN d.status = 'scheduled' THEN d.opens_at ELSE m.next_attempt_at END,
    deadline_at = CASE WHEN d.status = 'scheduled' THEN m.deadline_at + (d.opens_at - now()) ELSE m.deadline_at END,
    finalized_at = CASE WHEN d.status IN ('suppressed', 'expired') THEN now() ELSE m.finalized_at END,
    updated_at = now()
FROM decided d
WHERE m.id = d.id
RETURNING m.id::text, m.status, m.church_id::text, m.channel, m.lane, m.to_enc, m.from_address, m.subject_enc,
          m.body_enc, m.media_urls, m.attempts, m.max_attempts, m.deadline_at, m.html_body_enc, m.correlation_id
"""

# One statement for a batch of outcomes: update the fenced rows and append their attempt history.
RECORD_OUTCOMES_SQL = """
WITH o AS (
    SELECT * FROM unnest(
        CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:provider_ids AS text[]),
        CAST(:codes AS text[]), CAST(:next_at AS timestamptz[]), CAST(:http AS int[]),
        CAST(:costs AS numeric[]), CAST(:currencies AS text[]), CAST(:outcomes AS text[])
    ) AS t(id, status, provider_id, code, next_at, http, cost, currency, outcome)
), updated AS (
    UPDATE messages m SET
        status = o.status,
        provider_message_id = coalesce(o.provider_id, m.provider_message_id),
        last_error_code = o.code,
        next_attempt_at = o.next_at,
        lease_until = NULL,
        cost_amount = coalesce(o.cost, m.cost_amount),
        cost_currency = coalesce(o.currency, m.cost_currency),
        sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END,
        finalized_at = CASE WHEN o.status IN ('failed', 'expired', 'suppressed') THEN now() ELSE m.finalized_at END,
        updated_at = now()
    FROM o
    WHERE m.id = o.id AND m.claim_token = CAST(:token AS uuid) AND m.status = 'sending'
    RETURNING m.id, m.attempts
)
INSERT INTO message_attempts (message_id, attempt, claim_token, finished_at, outcome, error_code, http_status,
                              next_attempt_at)
SELECT u.id, u.attempts, CAST(:token AS uuid), now(), o.outcome, o.code, o.http, o.next_at
FROM updated u JOIN o ON o.id = u.id
ON CONFLICT (message_id, attempt) DO UPDATE
    SET finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
        error_code = EXCLUDED.error_code, http_status = EXCLUDED.http_status,
        next_attempt_at = EXCLUDED.next_attempt_at,
        claim_token = EXCLUDED.claim_token, started_at = EXCLUDED.started_at
RETURNING message_id::text
"""

# A message that failed for good becomes a dead letter, once (a replay that fails again refreshes it),
# with its reason and attempt history.
RECORD_DEAD_LETTERS_SQL = """
INSERT INTO dead_letters (id, message_id, church_id, reason, error_code, attempts)
SELECT CAST(d.dl_id AS uuid), m.id, m.church_id, d.reason, m.last_error_code,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'attempt', a.attempt, 'finished_at', a.finished_at, 'outcome', a.outcome,
                    'error_code', a.error_code, 'http_status', a.http_status) ORDER BY a.attempt)
                 FROM message_attempts a WHERE a.message_id = m.id AND a.attempt <= m.attempts), '[]'::jsonb)
FROM unnest(CAST(:ids AS uuid[]), CAST(:dl_ids AS text[]), CAST(:reasons AS text[])) AS d(id, dl_id, reason)
JOIN messages m ON m.id = d.id AND m.status = 'failed'
ON CONFLICT (message_id) DO UPDATE
    SET reason = EXCLUDED.reason, error_code = EXCLUDED.error_code, attempts = EXCLUDED.attempts,
        created_at = now(), replayed_at = NULL
RETURNING error_code
"""

# Opt-outs the carrier told us about (40300): recorded at once, so no other path sends again. The
# message's sealed number and its hash are copied as they are (same kind, same church): nothing is opened.
RECORD_CARRIER_OPT_OUTS_SQL = """
WITH m AS (
    SELECT DISTINCT ON (church_id, to_hash) church_id, to_enc, to_hash
    FROM messages WHERE id = ANY(CAST(:ids AS uuid[])) AND to_hash IS NOT NULL
), inserted AS (
    INSERT INTO opt_outs (church_id, address_enc, address_hash, channel, source)
    SELECT church_id, to_enc, to_hash, 'sms', 'carrier_40300' FROM m
    ON CONFLICT DO NOTHING
    RETURNING church_id, address_enc, address_hash
)
INSERT INTO opt_out_events (church_id, address_enc, address_hash, channel, action, source)
SELECT church_id, address_enc, address_hash, 'sms', 'opt_out', 'carrier_40300' FROM inserted
"""

RENEW_LEASES_SQL = """
UPDATE messages SET lease_until = now() + CAST(:lease_s AS double precision) * interval '1 second'
WHERE id = ANY(CAST(:ids AS uuid[])) AND claim_token = CAST(:token AS uuid) AND status = 'sending'
"""

# The body, subject and HTML body are sealed once per request: every row stores the same sealed bytes.
INSERT_MESSAGES_SQL = """
INSERT INTO messages (id, church_id, broadcast_id, channel, lane, purpose, to_enc, to_hash, from_address, subject_enc,
                      body_enc, html_body_enc, media_urls, encoding, segments, status, max_attempts, next_attempt_at,
                      deadline_at, recipient_tz, last_error_code, finalized_at, correlation_id)
SELECT t.id, CAST(:church_id AS uuid), CAST(:broadcast_id AS uuid), :channel, :lane, :purpose, t.to_enc, t.to_hash,
       :from_address, CAST(:subject AS bytea), CAST(:body AS bytea), CAST(:html AS bytea), CAST(:media_urls AS jsonb),
       :encoding, :segments,
       t.status, :max_attempts,
       CASE WHEN t.status = 'suppressed' THEN NULL ELSE t.next_at END, t.deadline_at, t.tz,
       CASE WHEN t.status = 'suppressed' THEN 'opted_out' END,
       CASE WHEN t.status = 'suppressed' THEN now() END, CAST(:correlation_id AS text)
FROM unnest(CAST(:ids AS uuid[]), CAST(:to_enc AS bytea[]), CAST(:to_hash AS bytea[]), CAST(:statuses AS text[]),
            CAST(:next_at AS timestamptz[]), CAST(:deadlines AS timestamptz[]), CAST(:zones AS text[]))
     AS t(id, to_enc, to_hash, status, next_at, deadline_at, tz)
"""


@dataclass(frozen=True)
class ClaimedMessage:
    id: str
    status: str  # 'sending' (yours to send), or 'suppressed' / 'expired' (settled at claim time)
    church_id: str
    channel: str
    lane: str
    to_address: str
    from_address: str | None
    subject: str | None
    body: str
    media_urls: list[str] | None
    attempts: int
    max_attempts: int
    deadline_at: datetime
    html: str | None = None  # mail's HTML part
    correlation_id: str | None = None  # the request that accepted it (common/log_context.py); None before 0011


@dataclass(frozen=True)
class Claim:
    token: str
    sendable: list[ClaimedMessage]
    settled: list[ClaimedMessage]  # suppressed or expired by the claim itself
    held: list[ClaimedMessage] = field(default_factory=list)  # bulk outside quiet hours: 'scheduled' again

    @property
    def ids(self) -> set[str]:
        return {m.id for m in self.sendable} | {m.id for m in self.settled} | {m.id for m in self.held}


@dataclass(frozen=True)
class Outcome:
    """What one carrier attempt decided for one message (see common.delivery for the rules)."""

    message_id: str
    status: str  # sent | retrying | failed | suppressed | expired
    outcome: str  # attempt history label: sent, retry, rate_limited, failed, opted_out, expired
    error_code: str | None = None
    provider_message_id: str | None = None
    next_attempt_at: datetime | None = None
    http_status: int | None = None
    cost_amount: str | None = None
    cost_currency: str | None = None


Purpose = Literal["normal", "compliance"]


@dataclass(frozen=True)
class NewMessages:
    """The rows of one accepted request: shared content, and per row the recipient, status and times.

    Rows differ in time when quiet hours hold some recipients until their own morning. ``to_addresses``
    are E.164 numbers (mail: email addresses) in the clear; ``insert_messages`` seals them (kind ``address``) unless ``to_sealed``
    already holds a sealed value for that row (a contact's ``phone_enc``, copied as it is), and hashes
    them (``lookup_hash``) unless ``to_hashes`` is given.
    """

    church_id: str
    broadcast_id: str
    channel: str
    lane: str
    from_address: str | None
    subject: str | None
    body: str
    media_urls: list[str] | None
    encoding: str | None  # None for mail (UTF-8, never split)
    segments: int
    max_attempts: int
    ids: Sequence[str]
    to_addresses: Sequence[str]
    statuses: Sequence[str]
    next_attempt_at: Sequence[datetime]
    deadline_at: Sequence[datetime]
    recipient_tz: Sequence[str | None]
    purpose: Purpose = "normal"
    to_hashes: Sequence[bytes] | None = None
    to_sealed: Sequence[bytes | None] | None = None
    html_body: str | None = None  # mail only, beside ``body`` (its plain-text part)
    correlation_id: str | None = None  # the accepting request's id (common/log_context.py), on every row


def insert_messages(conn: Connection, rows: NewMessages, *, chunk: int = 5000) -> None:
    """Insert a request's rows in a few statements (call inside the request's transaction)."""
    ring = crypto.keyring()
    body = ring.seal(rows.body, "text")  # once for the whole request: every row stores these bytes
    subject = None if rows.subject is None else ring.seal(rows.subject, "text")
    html = None if rows.html_body is None else ring.seal(rows.html_body, "text")
    for start in range(0, len(rows.ids), chunk):
        end = start + chunk
        addresses = rows.to_addresses[start:end]
        if rows.to_sealed is None:
            to_enc = [ring.seal(a, "address") for a in addresses]
        else:
            to_enc = [s if s is not None else ring.seal(a, "address")
                      for a, s in zip(addresses, rows.to_sealed[start:end], strict=True)]  # fmt: skip
        if rows.to_hashes is None:
            to_hash = [ring.lookup_hash(rows.church_id, a) for a in addresses]
        else:
            to_hash = list(rows.to_hashes[start:end])
        conn.run(  # the per-row columns as array literals made in one pass (common/db/arrays.py)
            INSERT_MESSAGES_SQL,
            ids=pg_array(rows.ids[start:end]),
            to_enc=pg_array(to_enc),
            to_hash=pg_array(to_hash),
            statuses=pg_array(rows.statuses[start:end]),
            next_at=pg_array(rows.next_attempt_at[start:end]),
            deadlines=pg_array(rows.deadline_at[start:end]),
            zones=pg_array(rows.recipient_tz[start:end]),
            church_id=rows.church_id,
            broadcast_id=rows.broadcast_id,
            channel=rows.channel,
            lane=rows.lane,
            purpose=rows.purpose,
            from_address=rows.from_address,
            subject=subject,
            body=body,
            html=html,
            media_urls=json.dumps(rows.media_urls) if rows.media_urls else None,
            encoding=rows.encoding,
            segments=rows.segments,
            max_attempts=rows.max_attempts,
            correlation_id=rows.correlation_id,
        )


def claim(pool: Pool, ids: Sequence[str], *, lease_s: float) -> Claim:
    """Take ownership of whichever of ``ids`` are claimable now; see the module docstring."""
    token = str(uuid.uuid4())
    if not ids:
        return Claim(token, [], [])
    rows = pool.run(CLAIM_SQL, ids=list(ids), token=token, lease_s=lease_s)
    ring = crypto.keyring()
    texts: dict[bytes, str] = {}  # a broadcast's rows share one sealed body: opened once per claim
    claimed = [_claimed(row, ring, texts) for row in rows]
    return Claim(
        token,
        sendable=[m for m in claimed if m.status == "sending"],
        settled=[m for m in claimed if m.status in ("suppressed", "expired")],
        held=[m for m in claimed if m.status == "scheduled"],
    )


def record_outcomes(pool: Pool, token: str, outcomes: Sequence[Outcome]) -> set[str]:
    """Write outcomes fenced by ``token``; return the ids actually written (others lost their claim)."""
    if not outcomes:
        return set()
    with pool.connection() as conn:
        rows = conn.run(
            RECORD_OUTCOMES_SQL,
            token=token,
            ids=[o.message_id for o in outcomes],
            statuses=[o.status for o in outcomes],
            provider_ids=[o.provider_message_id for o in outcomes],
            codes=[o.error_code for o in outcomes],
            next_at=[o.next_attempt_at for o in outcomes],
            http=[o.http_status for o in outcomes],
            costs=[o.cost_amount for o in outcomes],
            currencies=[o.cost_currency for o in outcomes],
            outcomes=[o.outcome for o in outcomes],
        )
        written = {row[0] for row in rows}
        # Delivery receipts that raced ahead of this write (the carrier's webhook came first).
        receipts.apply_for_messages(conn, [o.message_id for o in outcomes if o.status == "sent" and o.message_id in written])
        opted_out = [o.message_id for o in outcomes if o.outcome == "opted_out" and o.message_id in written]
        if opted_out:
            conn.run(RECORD_CARRIER_OPT_OUTS_SQL, ids=opted_out)
        dead = [o for o in outcomes if o.status == "failed" and o.message_id in written]
        if dead:
            conn.run(
                RECORD_DEAD_LETTERS_SQL,
                ids=[o.message_id for o in dead],
                dl_ids=[str(uuid7()) for _ in dead],
                reasons=[dead_letter_reason(o) for o in dead],
            )
    metrics.count_outcomes(o.status for o in outcomes if o.message_id in written)  # sent, retried, failed and dead
    return written


def dead_letter_reason(outcome: Outcome) -> str:
    code = outcome.error_code or "unknown"
    if outcome.outcome in ("retry", "rate_limited"):
        return f"attempts exhausted (last error {code})"
    return f"permanent carrier error {code}"


def renew_leases(pool: Pool, token: str, ids: Sequence[str], *, lease_s: float) -> None:
    if ids:
        pool.run(RENEW_LEASES_SQL, token=token, ids=list(ids), lease_s=lease_s)


def _claimed(row: list[Any], ring: crypto.Keyring, texts: dict[bytes, str]) -> ClaimedMessage:
    media = row[9]
    if isinstance(media, str):
        media = json.loads(media)
    return ClaimedMessage(
        id=row[0], status=row[1], church_id=row[2], channel=row[3], lane=row[4],
        to_address="" if row[5] is None else ring.open(row[5], "address"),  # NULL: erased (never claimable)
        from_address=row[6], subject=_text(row[7], ring, texts), body=_text(row[8], ring, texts) or "",
        media_urls=media, attempts=row[10], max_attempts=row[11], deadline_at=row[12], html=_text(row[13], ring, texts),
        correlation_id=row[14],
    )  # fmt: skip


def _text(sealed: bytes | None, ring: crypto.Keyring, texts: dict[bytes, str]) -> str | None:
    if sealed is None:
        return None
    key = bytes(sealed)
    text = texts.get(key)
    if text is None:
        text = texts[key] = ring.open(key, "text")
    return text


# For ids a claim did not return: settled, or not claimable yet (leased elsewhere, locked, not due).
STATE_SQL = """
SELECT id::text, status, lease_until, next_attempt_at
FROM messages WHERE id = ANY(CAST(:ids AS uuid[]))
"""

FINAL_STATUSES = frozenset(
    {"sent", "delivered", "delivery_failed", "delivery_unconfirmed", "failed", "expired", "suppressed"}
)


@dataclass(frozen=True)
class Unclaimed:
    """Why an id was not claimed: settled (forget it) or busy until ``retry_at`` (look again then)."""

    settled: set[str]
    retry_at: dict[str, datetime | None]  # None: look again soon (row locked or just released)


def unclaimed_state(pool: Pool, ids: Sequence[str]) -> Unclaimed:
    found = {row[0]: row for row in pool.run(STATE_SQL, ids=list(ids))} if ids else {}
    settled = {i for i in ids if i not in found or found[i][1] in FINAL_STATUSES}
    retry_at: dict[str, datetime | None] = {}
    for i in ids:
        if i in settled:
            continue
        _, status, lease_until, next_attempt_at = found[i]
        retry_at[i] = lease_until if status == "sending" else next_attempt_at
    return Unclaimed(settled, retry_at)


RELEASE_SQL = """
UPDATE messages SET status = CASE WHEN next_attempt_at > now() THEN 'retrying' ELSE 'queued' END,
                    attempts = attempts - 1, lease_until = NULL, updated_at = now()
WHERE id = ANY(CAST(:ids AS uuid[])) AND claim_token = CAST(:token AS uuid) AND status = 'sending'
"""


def release(pool: Pool, token: str, ids: Sequence[str]) -> None:
    """Give back claimed rows that were never sent (the attempt did not happen, so it is not counted)."""
    if ids:
        pool.run(RELEASE_SQL, token=token, ids=list(ids))
