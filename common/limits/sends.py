"""Limits on sending, per church: requests per minute, bulk recipients per day, and the plan's quota.

``accept_in`` (``common/send/service.py``) calls the ``Admit`` that ``submit`` hands it as the last step
before writing: after validation (a request refused for its input is never charged), after group
expansion and opt-outs (the recipient count is known), after an idempotent replay has already answered
(a replay is never refused or charged). Compliance replies (STOP/START/HELP answers, accepted by the
webhooks function) are given no ``Admit``: never limited, never refused by the quota.

One Lua call (``Limiter.admit``) charges all of it or nothing:

- ``send:<church>``  1 token per request, ``CHURCH_SEND_LIMIT`` per ``CHURCH_SEND_PERIOD_S`` (600/minute);
- ``bulk:<church>``  1 token per recipient of a bulk send (groups, or more than one number; opted-out
  recipients are not sent, so not counted), ``CHURCH_BULK_RECIPIENTS_LIMIT`` per
  ``CHURCH_BULK_RECIPIENTS_PERIOD_S`` (50,000/day); a one-to-one text does not draw on it;
- ``quota:<church>`` the cached remaining allowance (``common.billing.quota``).

Refusals: 429 ``send_rate_limited`` / ``bulk_recipients_limited`` with ``Retry-After``; 402
``quota_exceeded`` / ``no_subscription``. Nothing is written by a refused request.

Known imprecision, on the safe side: two requests with one new Idempotency-Key racing past the replay
check are both charged, though the second is answered as the first's replay; a request whose
transaction fails after admission stays charged (the quota entry is re-read within its TTL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from common.billing import quota
from common.config import Settings
from common.db.pool import Connection
from common.limits.errors import TooManyRequests, per, too_many
from common.limits.limiter import ALLOWANCE_SHORT, NO_ALLOWANCE, Limiter, Rate, Take, limiter_for
from common.redis_client import RedisGate

logger = logging.getLogger("koinonia.limits")


@dataclass(frozen=True)
class SendCharge:
    """What one accepted request would cost its church."""

    church_id: str
    lane: str  # "bulk" draws on the daily recipients bucket; "conv" (one-to-one) does not
    channel: str
    segments: int
    recipients: int  # messages that will be sent (opted-out recipients excluded)
    at: datetime  # the request's time (the quota's billing period is the one containing it)


Admit = Callable[[Connection, SendCharge], None]


def send_limits(gate: RedisGate, settings: Settings) -> Admit:
    """The ``Admit`` for ``accept``: raise the 429/402 ``ApiError`` that refuses ``charge``, else charge it."""
    limiter = limiter_for(gate, use_redis=settings.enable_queues)

    def admit(conn: Connection, charge: SendCharge) -> None:
        check(limiter, settings, conn, charge)

    return admit


def check(limiter: Limiter, settings: Settings, conn: Connection, charge: SendCharge) -> None:
    send_rate = Rate(settings.church_send_limit, settings.church_send_period_s)
    bulk_rate = Rate(settings.church_bulk_recipients_limit, settings.church_bulk_recipients_period_s)
    bulk = charge.recipients if charge.lane == "bulk" else 0
    if bulk > bulk_rate.capacity:
        raise too_many(
            "bulk_recipients_limited",
            f"this send has {bulk:,} recipients; a church may send to at most {bulk_rate.limit:,} recipients per "
            f"{per(bulk_rate.period_s)} in bulk. Split it into smaller sends spread over time",
            bulk_rate.period_s,
        )
    takes = [Take(f"send:{charge.church_id}", send_rate), Take(f"bulk:{charge.church_id}", bulk_rate, bulk)]
    draw = quota.draw(
        conn, charge.church_id, channel=charge.channel, segments=charge.segments, recipients=charge.recipients,
        now=charge.at, ttl_s=settings.quota_cache_ttl_s,
    )  # fmt: skip
    admission = limiter.admit(takes, draw)
    if admission.allowed:
        return
    error: quota.PaymentRequired | TooManyRequests
    if admission.refused_by == NO_ALLOWANCE:
        error = quota.no_subscription()
    elif admission.refused_by == ALLOWANCE_SHORT and admission.allowance is not None:
        error = quota.exceeded(
            admission.allowance, admission.need, channel=charge.channel, segments=charge.segments,
            recipients=charge.recipients,
        )  # fmt: skip
    elif admission.refused_by == takes[0].bucket:
        error = too_many(
            "send_rate_limited",
            f"this church may make {send_rate.limit:,} send requests per {per(send_rate.period_s)}; "
            "wait {wait} s and send again",
            admission.retry_after_s,
        )
    else:
        error = too_many(
            "bulk_recipients_limited",
            f"this church may send to {bulk_rate.limit:,} recipients per {per(bulk_rate.period_s)} in bulk; "
            f"{admission.bucket_left:,} are available now and this send has {bulk:,}. "
            "Wait {wait} s, or send to fewer recipients",
            admission.retry_after_s,
        )
    logger.info("send refused", extra={"fields": {"church_id": charge.church_id, "code": error.code}})
    raise error
