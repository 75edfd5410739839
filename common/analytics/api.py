"""The read endpoints (send function, a church's API key; every query names the caller's church):

    GET /usage                      the current billing period: plan, period, allowance, used, remaining, by channel
    GET /broadcasts/{id}/report     one broadcast: delivered, sent, failed (per code), opted out, expired, pending
    GET /analytics/daily?from=&to=&channel=    the daily aggregates of the church's own days

``/usage`` is common/billing/usage.py's one index-only query (the numbers the quota enforces), never the
aggregates; the report counts the broadcast's messages when asked (reports.py); ``/analytics/daily`` reads
``daily_aggregates``, which the processor keeps recomputed (each row says when: ``computed_at``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from common.analytics import aggregates
from common.analytics.reports import broadcast_report
from common.api_errors import BadRequest, NotFound
from common.billing.usage import usage_for_current_period
from common.runtime import Runtime
from common.web import Reply

default_days = 30  # /analytics/daily without from/to: the church's last 30 days, today included
max_days = 366  # longest range one call may ask for
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DAILY_400 = ("invalid_parameter",)


def usage(rt: Runtime, church_id: str) -> Reply:
    found = usage_for_current_period(rt.pool, UUID(church_id), now=datetime.now(UTC))
    if found is None:
        raise NotFound("no_subscription", "this church has no current subscription, so it has no billing period to report")
    return Reply({
        "plan": found.plan,
        "period": {"start": found.period_start.isoformat(), "end": found.period_end.isoformat()},
        "allowance": found.allowance,
        "used": found.used,
        "remaining": found.remaining,
        "mms_weight": found.mms_weight,
        "by_channel": {
            "sms": {"segments": found.sms_segments, "used": found.sms_segments},
            "mms": {"segments": found.mms_segments, "used": found.mms_segments * found.mms_weight},
        },
    })  # fmt: skip


def report(rt: Runtime, church_id: str, broadcast_id: str) -> Reply:
    try:
        UUID(broadcast_id)
    except ValueError:
        raise NotFound("not_found", f"no broadcast {broadcast_id}") from None
    found = broadcast_report(rt.pool, church_id, broadcast_id)
    if found is None:
        raise NotFound("not_found", f"no broadcast {broadcast_id}")
    return Reply(found.as_json())


def daily(rt: Runtime, church_id: str, args: dict[str, str]) -> Reply:
    zone = aggregates.church_today(rt.pool, church_id)
    if zone is None:  # the key's church is gone (deleted meanwhile)
        raise NotFound("not_found", "no such church")
    tz, today = zone
    to_day = _day(args, "to") or today
    # The default range ends at the calendar's first day if ``to`` is that early (no overflow, no 500).
    from_day = _day(args, "from") or to_day - timedelta(days=min(default_days - 1, (to_day - date.min).days))
    if from_day > to_day:
        raise BadRequest("invalid_parameter", "from must not be after to", field="from")
    if (to_day - from_day).days + 1 > max_days:
        raise BadRequest("invalid_parameter", f"ask for at most {max_days} days at a time", field="from")
    channel = args.get("channel") or None
    if channel is not None and channel not in aggregates.CHANNELS:
        raise BadRequest("invalid_parameter", f"channel must be one of {', '.join(aggregates.CHANNELS)}", field="channel")
    rows = aggregates.daily_rows(rt.pool, church_id, from_day, to_day, channel)
    return Reply({
        "timezone": tz, "from": from_day.isoformat(), "to": to_day.isoformat(), "channel": channel,
        "data": [_row_json(row) for row in rows],
    })  # fmt: skip


def _day(args: dict[str, str], name: str) -> date | None:
    raw = args.get(name)
    if not raw:
        return None
    try:
        if not _DAY.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest("invalid_parameter", f"{name} must be a day, YYYY-MM-DD (the church's own calendar)",
                         field=name) from None  # fmt: skip


def _row_json(row: list[Any]) -> dict[str, Any]:
    values = dict(zip(aggregates.COLUMNS, row, strict=True))
    amount, currency = values.pop("cost_amount"), values.pop("cost_currency")
    rate, median = values.pop("delivery_rate"), values.pop("median_delivery_s")
    return {
        **values,
        "day": values["day"].isoformat(),
        "computed_at": values["computed_at"].isoformat(),
        "cost": {"amount": str(amount), "currency": currency} if amount is not None else None,
        "delivery_rate": float(rate) if rate is not None else None,
        "median_delivery_s": round(float(median), 3) if median is not None else None,
    }
