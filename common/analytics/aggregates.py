"""``daily_aggregates``: per church, per local day, per channel, recomputed from the tables that hold the facts.

Every statement on ``daily_aggregates`` and ``analytics_dirty`` is here (one data-access module per aggregate).

**Recompute, never increment.** A bucket is one church's local day (all its channels): the processor learns
*which* buckets changed (``resolve``: events name ids, never amounts), and ``recompute`` rebuilds each of them
as a whole from ``messages`` with one grouped statement per batch, reading each church-day as one range of
``messages_church_created (church_id, created_at)``. So an event delivered twice costs a second recompute
and changes nothing, an event delivered late recomputes from the current truth, and a lost event is repaired
by any later recompute of its bucket (the sweep, ``koinonia analytics rebuild``). Counting per event instead
would double on every redelivery and drift on every loss, and neither could be told afterwards.

**The day** is the message's ``created_at`` in the church's zone (``churches.timezone``; an unknown zone is
read as UTC, see ``analytics_zone`` in migration 0010), so a church's Sunday is its own Sunday. A message
stays in the day it was accepted whatever happens later: a text scheduled on Friday for Sunday is
Friday's, pending until Sunday, then delivered. A church that changes its zone needs a rebuild.

**The columns** (per church, day and channel; status groups: common/analytics/status_groups.py):

- ``accepted``: every message created that day, whatever its status now; ``segments`` their segments.
- ``sent``: the carrier accepted it (``sent``, ``delivery_unconfirmed``, ``delivered``, ``delivery_failed``).
- ``delivered``; ``failed``: ``failed`` (never accepted: a permanent error or attempts exhausted) plus
  ``delivery_failed`` (accepted, never reached the phone); ``expired``; ``suppressed`` (opted out, never
  sent); ``pending``: ``scheduled``, ``queued``, ``sending``, ``retrying``.
- ``billed_segments``: segments of the messages that common/billing/usage.py bills (its own
  ``BILLED_CONDITION_SQL``, not a copy), before the plan's MMS weight (a plan property, applied by usage).
- ``cost_amount``: the carrier's reported cost, summed (``NULL`` when none reported); ``cost_currency``
  its currency (``NULL`` if the day mixes several).
- ``delivery_rate``: ``delivered / sent``, ``NULL`` when nothing was sent.
- ``median_delivery_s``: median over delivered messages of ``finalized_at - sent_at``: from the carrier's
  acceptance (our outcome write, or its ``message.sent`` if that came first) to its delivery receipt. The
  time a message waited before that (a schedule, quiet hours, retries) is not delivery time. The receipt's
  time is the carrier's clock and ``sent_at`` ours, written a few milliseconds after the carrier answered:
  a fast delivery can come out below zero, and counts as 0.
- ``replies``: members' texts to the church that day (``conversation_messages``, inbound), on the ``sms``
  row. Read through ``conversations_church_last``: a conversation's ``last_message_at`` is never earlier
  than its newest inbound text (common/conversations/inbound.py keeps the greatest), so conversations
  last touched before the day began hold none of that day's texts.
- ``opt_outs``: opt-outs recorded that day (``audit_log`` ``opt_out.recorded``: a STOP keyword or the
  carrier's 40300), on the row of their channel. The audit log rather than ``opt_out_events`` because a
  person's erasure deletes their events but never the append-only audit entry, so the count of a past day
  does not change when someone is erased.

A person's erasure deletes their texts, so a later recompute of those days counts fewer ``replies``; their
messages stay (billing facts), so every other column is unchanged by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from common.analytics.status_groups import CARRIER_ACCEPTED, StatusGroup, sql_list, statuses
from common.analytics.types import Bucket, Targets
from common.billing.usage import BILLED_CONDITION_SQL
from common.db.pool import Connection, Pool
from common.messages.states import MessageStatus

CHANNELS = ("sms", "mms", "mail")
commit_slack_s = 300  # a dated event is dated when it was emitted; the change it names committed before
recovery_lookback_s = 2 * 86_400  # after a lost stream: messages created this long before the loss are swept
advisory_lock_class = 0x616E61  # "ana": first key of the per-bucket advisory locks

# (church, local day) of every id an event batch names; see types.Kind.
RESOLVE_SQL = """
WITH hits AS MATERIALIZED (
    SELECT m.church_id, m.created_at AS at FROM messages m WHERE m.id = ANY(CAST(:message_ids AS uuid[]))
    UNION
    SELECT m.church_id, m.created_at FROM messages m
    WHERE m.provider_message_id = ANY(CAST(:provider_ids AS text[])) AND m.provider_message_id IS NOT NULL
    UNION
    SELECT b.church_id, b.created_at FROM broadcasts b WHERE b.id = ANY(CAST(:broadcast_ids AS uuid[]))
    UNION
    SELECT c.church_id, cm.created_at
    FROM conversation_messages cm JOIN conversations c ON c.id = cm.conversation_id
    WHERE cm.id = ANY(CAST(:reply_ids AS uuid[]))
    UNION
    SELECT c.church_id, e.at + s.back
    FROM unnest(CAST(:conversation_ids AS uuid[]), CAST(:conversation_at AS timestamptz[])) AS e(id, at)
    JOIN conversations c ON c.id = e.id
    CROSS JOIN (VALUES (interval '0 seconds'), (- CAST(:slack_s AS double precision) * interval '1 second')) AS s(back)
    UNION
    SELECT m.church_id, e.at + s.back
    FROM unnest(CAST(:dated_ids AS uuid[]), CAST(:dated_at AS timestamptz[])) AS e(id, at)
    JOIN messages m ON m.id = e.id
    CROSS JOIN (VALUES (interval '0 seconds'), (- CAST(:slack_s AS double precision) * interval '1 second')) AS s(back)
), zones AS MATERIALIZED (
    SELECT ch.id, analytics_zone(ch.timezone) AS tz FROM churches ch WHERE ch.id IN (SELECT church_id FROM hits)
)
SELECT DISTINCT h.church_id::text AS church_id, CAST(h.at AT TIME ZONE z.tz AS date) AS day
FROM hits h JOIN zones z ON z.id = h.church_id
"""

_PENDING = sql_list(statuses(StatusGroup.pending))
_FAILED = sql_list(statuses(StatusGroup.failed))
_CARRIER_ACCEPTED = sql_list(CARRIER_ACCEPTED)
_COUNTS = ("accepted", "sent", "delivered", "failed", "expired", "suppressed", "pending", "segments", "billed_segments")
COLUMNS = (
    "day", "channel", *_COUNTS, "cost_amount", "cost_currency", "delivery_rate", "median_delivery_s", "replies", "opt_outs",
    "computed_at",
)  # fmt: skip

# Rebuild these buckets as a whole: upsert the rows the facts give, delete the rows they no longer give.
RECOMPUTE_SQL = f"""
WITH dirty AS MATERIALIZED (
    SELECT d.church_id, d.day,
           CAST(d.day AS timestamp) AT TIME ZONE z.tz AS day_start,
           CAST(d.day + 1 AS timestamp) AT TIME ZONE z.tz AS day_end
    FROM (SELECT DISTINCT * FROM unnest(CAST(:church_ids AS uuid[]), CAST(:days AS date[]))) AS d(church_id, day)
    JOIN churches ch ON ch.id = d.church_id
    CROSS JOIN LATERAL (SELECT analytics_zone(ch.timezone) AS tz) z
), outbound AS (
    SELECT d.church_id, d.day, m.channel,
           count(*) AS accepted,
           count(*) FILTER (WHERE m.status IN ({_CARRIER_ACCEPTED})) AS sent,
           count(*) FILTER (WHERE m.status = '{MessageStatus.delivered}') AS delivered,
           count(*) FILTER (WHERE m.status IN ({_FAILED})) AS failed,
           count(*) FILTER (WHERE m.status = '{MessageStatus.expired}') AS expired,
           count(*) FILTER (WHERE m.status = '{MessageStatus.suppressed}') AS suppressed,
           count(*) FILTER (WHERE m.status IN ({_PENDING})) AS pending,
           sum(m.segments) AS segments,
           coalesce(sum(m.segments) FILTER (WHERE {BILLED_CONDITION_SQL}), 0) AS billed_segments,
           sum(m.cost_amount) AS cost_amount,
           CASE WHEN min(m.cost_currency) = max(m.cost_currency) THEN min(m.cost_currency) END AS cost_currency,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(extract(epoch FROM m.finalized_at - m.sent_at), 0))
               FILTER (WHERE m.status = '{MessageStatus.delivered}' AND m.sent_at IS NOT NULL
                       AND m.finalized_at IS NOT NULL) AS median_delivery_s
    FROM dirty d
    JOIN messages m ON m.church_id = d.church_id AND m.created_at >= d.day_start AND m.created_at < d.day_end
    GROUP BY d.church_id, d.day, m.channel
), replies AS (
    SELECT d.church_id, d.day, 'sms' AS channel, count(*) AS replies
    FROM dirty d
    JOIN conversations c ON c.church_id = d.church_id AND c.last_message_at >= d.day_start
    JOIN conversation_messages cm ON cm.conversation_id = c.id
         AND cm.created_at >= d.day_start AND cm.created_at < d.day_end
    WHERE cm.direction = 'inbound'
    GROUP BY d.church_id, d.day
), opt_outs AS (
    SELECT d.church_id, d.day, CASE WHEN a.details ->> 'channel' = 'mail' THEN 'mail' ELSE 'sms' END AS channel,
           count(*) AS opt_outs
    FROM dirty d
    JOIN audit_log a ON a.church_id = d.church_id AND a.created_at >= d.day_start AND a.created_at < d.day_end
    WHERE a.action = 'opt_out.recorded'
    GROUP BY 1, 2, 3
), keyed AS (
    SELECT church_id, day, channel FROM outbound
    UNION SELECT church_id, day, channel FROM replies
    UNION SELECT church_id, day, channel FROM opt_outs
), upserted AS (
    INSERT INTO daily_aggregates (church_id, day, channel, accepted, sent, delivered, failed, expired, suppressed, pending,
                                  segments, billed_segments, cost_amount, cost_currency, delivery_rate, median_delivery_s,
                                  replies, opt_outs, computed_at)
    SELECT k.church_id, k.day, k.channel,
           coalesce(o.accepted, 0), coalesce(o.sent, 0), coalesce(o.delivered, 0), coalesce(o.failed, 0),
           coalesce(o.expired, 0), coalesce(o.suppressed, 0), coalesce(o.pending, 0), coalesce(o.segments, 0),
           coalesce(o.billed_segments, 0), o.cost_amount, o.cost_currency,
           round(CAST(o.delivered AS numeric) / NULLIF(o.sent, 0), 5), o.median_delivery_s,
           coalesce(r.replies, 0), coalesce(x.opt_outs, 0), clock_timestamp()
    FROM keyed k
    LEFT JOIN outbound o ON o.church_id = k.church_id AND o.day = k.day AND o.channel = k.channel
    LEFT JOIN replies r ON r.church_id = k.church_id AND r.day = k.day AND r.channel = k.channel
    LEFT JOIN opt_outs x ON x.church_id = k.church_id AND x.day = k.day AND x.channel = k.channel
    ORDER BY k.church_id, k.day, k.channel
    ON CONFLICT (church_id, day, channel) DO UPDATE SET
        accepted = EXCLUDED.accepted, sent = EXCLUDED.sent, delivered = EXCLUDED.delivered, failed = EXCLUDED.failed,
        expired = EXCLUDED.expired, suppressed = EXCLUDED.suppressed, pending = EXCLUDED.pending,
        segments = EXCLUDED.segments, billed_segments = EXCLUDED.billed_segments, cost_amount = EXCLUDED.cost_amount,
        cost_currency = EXCLUDED.cost_currency, delivery_rate = EXCLUDED.delivery_rate,
        median_delivery_s = EXCLUDED.median_delivery_s, replies = EXCLUDED.replies, opt_outs = EXCLUDED.opt_outs,
        computed_at = EXCLUDED.computed_at
    RETURNING church_id, day, channel
), stale AS (
    -- Rows of these buckets the facts no longer give (their messages were deleted): gone. The upsert's rows
    -- are not visible to this statement's snapshot and are excluded by key, so no row is touched twice.
    DELETE FROM daily_aggregates a USING dirty d
    WHERE a.church_id = d.church_id AND a.day = d.day
      AND NOT EXISTS (SELECT 1 FROM upserted u WHERE u.church_id = a.church_id AND u.day = a.day AND u.channel = a.channel)
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted), (SELECT count(*) FROM stale)
"""

# Serializes recomputes of one bucket (taken in key order: no deadlock between processors or a rebuild).
LOCK_BUCKETS_SQL = """
SELECT count(pg_advisory_xact_lock(CAST(:lock_class AS integer), k)) FROM unnest(CAST(:keys AS integer[])) AS k
"""

TAKE_DIRTY_SQL = """
DELETE FROM analytics_dirty WHERE (church_id, day) IN (
    SELECT church_id, day FROM analytics_dirty ORDER BY marked_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING church_id::text, day
"""

MARK_DIRTY_SQL = """
INSERT INTO analytics_dirty (church_id, day)
SELECT DISTINCT * FROM unnest(CAST(:church_ids AS uuid[]), CAST(:days AS date[]))
ON CONFLICT DO NOTHING
"""

MARK_RESOLVED_SQL = f"""
WITH resolved AS ({RESOLVE_SQL})
INSERT INTO analytics_dirty (church_id, day)
SELECT CAST(church_id AS uuid), day FROM resolved
ON CONFLICT DO NOTHING
"""

NOTE_PROCESSED_SQL = """
UPDATE analytics_state SET processed_through = greatest(processed_through, CAST(:at AS timestamptz))
"""

# After the stream lost entries: every (church, day) from the sweep's start to today, for each church with
# anything since then that an aggregate counts. Per church three index probes (messages_church_created,
# conversations_church_last, audit_log_church_time), then one row per day.
MARK_RECENT_SQL = """
WITH since AS (
    SELECT coalesce(processed_through, now()) - CAST(:lookback_s AS double precision) * interval '1 second' AS at
    FROM analytics_state
), active AS (
    SELECT ch.id, analytics_zone(ch.timezone) AS tz
    FROM churches ch, since
    WHERE EXISTS (SELECT 1 FROM messages m WHERE m.church_id = ch.id AND m.created_at >= since.at)
       OR EXISTS (SELECT 1 FROM conversations c WHERE c.church_id = ch.id AND c.last_message_at >= since.at)
       OR EXISTS (SELECT 1 FROM audit_log a WHERE a.church_id = ch.id AND a.created_at >= since.at
                  AND a.action = 'opt_out.recorded')
), marked AS (
    INSERT INTO analytics_dirty (church_id, day)
    SELECT a.id, CAST(g.day AS date)
    FROM active a, since,
         generate_series(CAST(since.at AT TIME ZONE a.tz AS date), CAST(now() AT TIME ZONE a.tz AS date),
                         interval '1 day') AS g(day)
    ON CONFLICT DO NOTHING
    RETURNING 1
), noted AS (
    UPDATE analytics_state SET swept_at = now(), swept_from = (SELECT at FROM since)
)
SELECT count(*) FROM marked
"""

DAILY_SQL = """
SELECT day, channel, accepted, sent, delivered, failed, expired, suppressed, pending, segments, billed_segments,
       cost_amount, cost_currency, delivery_rate, median_delivery_s, replies, opt_outs, computed_at
FROM daily_aggregates
WHERE church_id = CAST(:church_id AS uuid) AND day >= :from_day AND day <= :to_day
  AND (CAST(:channel AS text) IS NULL OR channel = CAST(:channel AS text))
ORDER BY day, channel
"""

CHURCH_TODAY_SQL = """
SELECT analytics_zone(timezone), CAST(now() AT TIME ZONE analytics_zone(timezone) AS date)
FROM churches WHERE id = CAST(:church_id AS uuid)
"""

# For a rebuild: the church's first local day with anything an aggregate counts, and today.
CHURCH_SPAN_SQL = """
WITH z AS (SELECT analytics_zone(timezone) AS tz FROM churches WHERE id = CAST(:church_id AS uuid)),
earliest AS (
    SELECT least(
        (SELECT min(created_at) FROM messages WHERE church_id = CAST(:church_id AS uuid)),
        (SELECT min(cm.created_at) FROM conversations c JOIN conversation_messages cm ON cm.conversation_id = c.id
         WHERE c.church_id = CAST(:church_id AS uuid) AND cm.direction = 'inbound'),
        (SELECT min(created_at) FROM audit_log WHERE church_id = CAST(:church_id AS uuid) AND action = 'opt_out.recorded')
    ) AS at
)
SELECT CAST(earliest.at AT TIME ZONE z.tz AS date), CAST(now() AT TIME ZONE z.tz AS date) FROM z, earliest
"""

DELETE_BEFORE_SQL = """
DELETE FROM daily_aggregates WHERE church_id = CAST(:church_id AS uuid) AND (CAST(:first AS date) IS NULL OR day < :first)
RETURNING 1
"""


@dataclass(frozen=True)
class Recomputed:
    buckets: int
    rows: int  # rows written
    removed: int  # rows deleted (their facts are gone)


def resolve(conn: Connection | Pool, targets: Targets) -> set[Bucket]:
    """The buckets a batch of events touched: one statement, whatever the kinds."""
    if not targets:
        return set()
    rows = conn.run(RESOLVE_SQL, **_resolve_params(targets))
    return {Bucket(church_id, day) for church_id, day in rows}


def recompute(conn: Connection, buckets: Iterable[Bucket]) -> Recomputed:
    """Rebuild ``buckets`` from the facts (call inside a transaction: the locks last until its end)."""
    ordered = sorted(set(buckets))
    if not ordered:
        return Recomputed(0, 0, 0)
    conn.run(LOCK_BUCKETS_SQL, lock_class=advisory_lock_class, keys=sorted({_lock_key(b) for b in ordered}))
    written, removed = conn.run(
        RECOMPUTE_SQL, church_ids=[b.church_id for b in ordered], days=[b.day for b in ordered]
    )[0]
    return Recomputed(len(ordered), int(written), int(removed))


def take_dirty(conn: Connection, limit: int) -> set[Bucket]:
    """Up to ``limit`` marked buckets, removed from ``analytics_dirty`` in the caller's transaction (rolled
    back with it); rows another processor holds are skipped, not waited for."""
    if limit <= 0:
        return set()
    return {Bucket(church_id, day) for church_id, day in conn.run(TAKE_DIRTY_SQL, limit=limit)}


def mark_dirty(conn: Connection | Pool, buckets: Iterable[Bucket]) -> None:
    listed = list(buckets)
    if listed:
        conn.run(MARK_DIRTY_SQL, church_ids=[b.church_id for b in listed], days=[b.day for b in listed])


def mark_resolved(conn: Connection | Pool, targets: Targets) -> None:
    """Mark the buckets of events that could not go on the stream (one statement): the processor's next
    batch recomputes them, as if the events had arrived."""
    if targets:
        conn.run(MARK_RESOLVED_SQL, **_resolve_params(targets))


def mark_recent(conn: Connection | Pool, *, lookback_s: float = recovery_lookback_s) -> int:
    """After the stream lost entries, mark every bucket they can have named; returns how many were marked.

    Which buckets a lost entry named cannot be known, so this marks every day from ``lookback_s`` before
    the newest event the processor committed (``analytics_state.processed_through``: entries after it may
    be gone) to today, for every church with a message created, a text received or an opt-out recorded
    since then. A message changes status mostly within hours of its creation (its deadline, 4 h by
    default; receipts within minutes), so two days of lookback cover what a lost entry could name, except
    the rare change to an older message while the entry was lost (a scheduled send going out, a dead letter
    replayed days later): ``koinonia analytics rebuild --since`` repairs those.

    Cost: the ``churches`` table once with three index probes per church, and then one recompute per marked
    bucket (a church-day of messages read once from ``messages_church_created``), drained by the processor
    ``dirty_per_batch`` at a time. It runs only when loss is detected, not on a timer.
    """
    return int(conn.run(MARK_RECENT_SQL, lookback_s=lookback_s)[0][0])


def note_processed(conn: Connection, at: datetime) -> None:
    conn.run(NOTE_PROCESSED_SQL, at=at)


def daily_rows(pool: Pool, church_id: str, from_day: date, to_day: date, channel: str | None) -> list[list[Any]]:
    return pool.run(DAILY_SQL, church_id=church_id, from_day=from_day, to_day=to_day, channel=channel)


def church_today(pool: Pool, church_id: str) -> tuple[str, date] | None:
    rows = pool.run(CHURCH_TODAY_SQL, church_id=church_id)
    return (rows[0][0], rows[0][1]) if rows else None


def church_span(conn: Connection | Pool, church_id: str) -> tuple[date | None, date]:
    first, today = conn.run(CHURCH_SPAN_SQL, church_id=church_id)[0]
    return first, today


def delete_before(conn: Connection | Pool, church_id: str, first: date | None) -> int:
    return len(conn.run(DELETE_BEFORE_SQL, church_id=church_id, first=first))


def _resolve_params(targets: Targets) -> dict[str, Any]:
    return {
        "message_ids": targets.message_ids, "provider_ids": targets.provider_ids,
        "broadcast_ids": targets.broadcast_ids, "reply_ids": targets.reply_ids,
        "conversation_ids": targets.conversation_ids, "conversation_at": targets.conversation_at, "dated_ids": targets.dated_ids,
        "dated_at": targets.dated_at, "slack_s": commit_slack_s,
    }  # fmt: skip


def _lock_key(bucket: Bucket) -> int:
    digest = hashlib.blake2b(f"{bucket.church_id}:{bucket.day.isoformat()}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def buckets_of(rows: Sequence[tuple[str, date]]) -> list[Bucket]:
    return [Bucket(church_id, day) for church_id, day in rows]
