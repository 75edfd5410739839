"""The subscription quota: a send must fit in what is left of the church's segment allowance.

What is left = ``segment_allowance`` - used (``common/billing/usage.py``'s one indexed query, unchanged:
the billing rule lives there) - pending: segments of messages accepted but not sent yet (``queued`` and
``scheduled``), which the usage rule does not count until the carrier is asked. Without the pending
term, a church could schedule its whole allowance for next week, wait for the cache to expire, and
schedule it again. Both come from one statement (the usage query as a CTE, and the pending sum from
the same ``messages_church_created`` index, index-only), run on a cache miss only.

A request needs ``segments x recipients`` (recipients who opted out are not sent, so not counted), MMS
segments weighted by the subscription's ``mms_weight``. The remaining allowance is cached in Redis for
``QUOTA_CACHE_TTL_S`` (default 30 s, never past the period's end) and decremented by every admitted send
in the same Lua call as the rate limits (``common.limits.limiter.Limiter.admit``); with Redis down it is
read from PostgreSQL on every send. Cached, it can be stale in one direction only for up to the TTL:
messages suppressed or expired after acceptance are given back on the next read.

Refusals are 402: ``quota_exceeded`` (naming what remains and what the send needs) and
``no_subscription``. A church's allowance is its current ``active``/``trialing`` subscription (usage.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from common.api_errors import ApiError
from common.billing.usage import CURRENT_SUBSCRIPTION_STATUSES, USAGE_FOR_CURRENT_PERIOD_SQL
from common.db.pool import Connection
from common.limits.limiter import Allowance, Draw
from common.messages.states import MessageStatus

# Accepted, not sent yet: not billed by usage.py's rule, but reserved against the allowance.
PENDING_STATUSES = (MessageStatus.queued, MessageStatus.scheduled)


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(str(v) for v in values))  # this module's constants only

QUOTA_SQL = f"""
WITH usage AS ({USAGE_FOR_CURRENT_PERIOD_SQL})
SELECT u.period_end, u.segment_allowance, u.used, w.mms_weight, p.sms, p.mms
FROM usage u
CROSS JOIN LATERAL (
    -- the subscription usage.py chose (same period, latest id): its MMS weight
    SELECT s.mms_weight FROM subscriptions s
    WHERE s.church_id = :church_id AND s.status IN ({_sql_list(CURRENT_SUBSCRIPTION_STATUSES)})
      AND s.period_start = u.period_start AND s.period_end = u.period_end
    ORDER BY s.id DESC LIMIT 1
) w
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(m.segments) FILTER (WHERE m.channel = 'sms'), 0) AS sms,
           COALESCE(sum(m.segments) FILTER (WHERE m.channel = 'mms'), 0) AS mms
    FROM messages m
    WHERE m.church_id = :church_id
      AND m.created_at >= u.period_start AND m.created_at < u.period_end
      AND m.status IN ({_sql_list(PENDING_STATUSES)})
) p
"""


class PaymentRequired(ApiError):
    status = 402


def remaining_allowance(conn: Connection, church_id: str, *, now: datetime) -> Allowance | None:
    """What the church may still send this period (one statement); ``None`` without a current subscription."""
    rows = conn.run(QUOTA_SQL, church_id=UUID(church_id), now=now)
    if not rows:
        return None
    period_end, allowance, used, mms_weight, pending_sms, pending_mms = rows[0]
    pending = int(pending_sms) + int(pending_mms) * int(mms_weight)
    return Allowance(
        remaining=max(0, int(allowance) - int(used) - pending),
        weight=int(mms_weight),
        renews_at=int(period_end.timestamp()),
    )


def draw(
    conn: Connection, church_id: str, *, channel: str, segments: int, recipients: int, now: datetime, ttl_s: float
) -> Draw:
    """What a send of ``segments`` to ``recipients`` draws on the church's cached allowance."""
    amount = segments * recipients
    return Draw(
        key=f"quota:{church_id}",
        units=amount if channel == "sms" else 0,
        weighted_units=amount if channel == "mms" else 0,
        ttl_s=ttl_s,
        load=lambda: remaining_allowance(conn, church_id, now=now),
    )


def no_subscription() -> PaymentRequired:
    return PaymentRequired(
        "no_subscription",
        "this church has no active subscription, so it cannot send; start or renew its plan, then send again",
    )


def exceeded(allowance: Allowance, need: int, *, channel: str, segments: int, recipients: int) -> PaymentRequired:
    weighting = f" x MMS weight {allowance.weight}" if channel == "mms" else ""
    renews = datetime.fromtimestamp(allowance.renews_at, UTC).date().isoformat() if allowance.renews_at else "?"
    return PaymentRequired(
        "quota_exceeded",
        f"this send needs {need:,} segments of the plan's allowance ({recipients:,} recipient(s) x {segments} "
        f"segment(s){weighting}), but only {allowance.remaining:,} remain in this billing period (it renews on "
        f"{renews}); send to fewer recipients or a shorter text, or upgrade the plan",
    )
