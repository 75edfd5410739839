"""How much of its segment allowance a church used in its current billing period, in one query.

The current period is the church's ``active`` or ``trialing`` subscription whose
``[period_start, period_end)`` contains ``now`` (index ``subscriptions_church_status``); if two overlap
(a plan change), the one that started last wins. No such subscription: ``None``.

What counts as used, per message of that church created in the period:

* channel: ``sms`` counts its ``segments``; ``mms`` counts ``segments * subscriptions.mms_weight``
  (the carrier charges an MMS several times an SMS); ``mail`` counts nothing (email is not a segment).
* status: a message counts once the carrier has been asked to send it, since from then on it may be
  charged for it. So it counts in ``sending``, ``retrying``, ``sent``, ``delivered``,
  ``delivery_failed``, ``delivery_unconfirmed``, and ``failed`` when ``attempts > 0``. It does not
  count in ``suppressed`` (opted out, never sent), ``scheduled`` and ``queued`` (not sent yet), ``failed``
  with ``attempts = 0`` (given up before any carrier attempt) and ``expired`` (its deadline passed
  before the carrier accepted it).

  Counting ``sending`` and ``retrying`` before the carrier's answer makes ``remaining`` err low, not
  high: an allowance check made while a burst is in flight does not let the burst overshoot.

"Created in the period" follows ``messages.created_at``; a message scheduled in one period and sent in
the next counts in neither. That is the rule this query implements; invoicing from the carrier's own
records is a separate matter.

The sum is read from ``messages_church_created (church_id, created_at, id) INCLUDE (channel, segments,
status, attempts)``: every column the rule reads is in the index, so PostgreSQL can answer with an
index-only scan of the church's period instead of visiting the table (migration 0002 added
``attempts``). A change to the rule that reads another column makes this a heap scan again; the test
suite's EXPLAIN test checks for the index-only scan. The same scan also answers the billed segments per
channel (``GET /usage``'s ``by_channel``), and ``BILLED_CONDITION_SQL`` is this rule for any other query
that must agree with it (the daily aggregates' ``billed_segments``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from common.db.pool import Pool
from common.messages.states import MessageStatus

# Never billed, whatever the attempts (see the module docstring). 'failed' is billed only with attempts.
UNBILLED_STATUSES: frozenset[MessageStatus] = frozenset(
    {MessageStatus.suppressed, MessageStatus.scheduled, MessageStatus.queued, MessageStatus.expired}
)
BILLED_CHANNELS: tuple[str, ...] = ("sms", "mms")
CURRENT_SUBSCRIPTION_STATUSES: tuple[str, ...] = ("active", "trialing")


def _sql_list(values: Iterable[str]) -> str:
    # Literals, not parameters: fixed values the planner can see. Only ever fed this module's constants.
    return ", ".join(f"'{v}'" for v in sorted(str(v) for v in values))


# The rule above as a SQL condition on a ``messages`` row named ``m``: the one definition of "billed" (this
# module's usage, and the daily aggregates of common/analytics/aggregates.py).
BILLED_CONDITION_SQL = (
    f"m.channel IN ({_sql_list(BILLED_CHANNELS)})"
    f" AND m.status NOT IN ({_sql_list(UNBILLED_STATUSES)})"
    f" AND NOT (m.status = '{MessageStatus.failed}' AND m.attempts = 0)"
)
# A billed message's share of the allowance: its segments, an MMS's times the plan's weight (``s``: the subscription).
WEIGHTED_SEGMENTS_SQL = "CASE WHEN m.channel = 'mms' THEN m.segments * s.mms_weight ELSE m.segments END"


# One scan of the period (index-only): the weighted total, and the segments per billed channel beside it.
USAGE_FOR_CURRENT_PERIOD_SQL = f"""
SELECT s.period_start,
       s.period_end,
       s.segment_allowance,
       u.used,
       s.plan,
       s.mms_weight,
       u.sms_segments,
       u.mms_segments
FROM subscriptions s
CROSS JOIN LATERAL (
    SELECT COALESCE(sum({WEIGHTED_SEGMENTS_SQL}), 0) AS used,
           COALESCE(sum(m.segments) FILTER (WHERE m.channel = 'sms'), 0) AS sms_segments,
           COALESCE(sum(m.segments) FILTER (WHERE m.channel = 'mms'), 0) AS mms_segments
    FROM messages m
    WHERE m.church_id = :church_id
      AND m.created_at >= s.period_start
      AND m.created_at < s.period_end
      AND {BILLED_CONDITION_SQL}
) u
WHERE s.church_id = :church_id
  AND s.status IN ({_sql_list(CURRENT_SUBSCRIPTION_STATUSES)})
  AND s.period_start <= :now
  AND s.period_end > :now
ORDER BY s.period_start DESC, s.id DESC
LIMIT 1
"""


@dataclass(frozen=True)
class PeriodUsage:
    """A church's segment allowance in its current period and what it used of it."""

    period_start: datetime
    period_end: datetime
    allowance: int
    used: int
    remaining: int  # allowance - used, never below 0 (``used`` may exceed ``allowance``)
    plan: str = ""
    mms_weight: int = 1
    sms_segments: int = 0  # billed SMS segments (each counts 1 toward ``used``)
    mms_segments: int = 0  # billed MMS segments (each counts ``mms_weight``)


def usage_for_current_period(pool: Pool, church_id: UUID, *, now: datetime) -> PeriodUsage | None:
    """The church's usage in the subscription period containing ``now``; ``None`` without a current one."""
    rows = pool.run(USAGE_FOR_CURRENT_PERIOD_SQL, church_id=church_id, now=now)
    if not rows:
        return None
    period_start, period_end, allowance, used, plan, mms_weight, sms_segments, mms_segments = rows[0]
    used = int(used)
    return PeriodUsage(
        period_start=period_start,
        period_end=period_end,
        allowance=allowance,
        used=used,
        remaining=max(allowance - used, 0),
        plan=plan,
        mms_weight=int(mms_weight),
        sms_segments=int(sms_segments),
        mms_segments=int(mms_segments),
    )
