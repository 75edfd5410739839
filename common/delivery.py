"""From a claimed row to a carrier request, and from the carrier's answer to the row's next status.

Every path that sends (the queue consumer, the inline fallback, the scheduler) goes through here, so a
message's fate after an attempt is decided in one place:

=================  ==========================================================================
carrier outcome    next status
=================  ==========================================================================
sent               ``sent`` (the carrier has it; delivery receipts move it on)
opted_out (40300)  ``suppressed``, and the recipient is recorded as opted out
failed             ``failed`` (permanent: the carrier refused this message as it is)
retry,             ``retrying`` at the policy's next time, unless attempts are used up
rate_limited       (``failed``) or that time is past the deadline (``expired``)
=================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from common.carrier import CarrierResult, OutboundMessage
from common.messages.store import ClaimedMessage, Outcome
from common.retry_policy import RetryPolicy, default_policy


def outbound(message: ClaimedMessage) -> OutboundMessage:
    return OutboundMessage(
        message_id=message.id,
        to=message.to_address,
        from_=message.from_address or "",
        text=message.body,
        media_urls=tuple(message.media_urls or ()),
        subject=message.subject,
    )


def decide(
    message: ClaimedMessage, result: CarrierResult, now: datetime, policy: RetryPolicy = default_policy
) -> Outcome:
    base = Outcome(
        message_id=message.id, status="failed", outcome="failed",
        error_code=result.error_code, http_status=result.http_status,
    )  # fmt: skip
    if result.outcome == "sent":
        return replace(
            base, status="sent", outcome="sent", provider_message_id=result.provider_message_id,
            cost_amount=result.cost_amount, cost_currency=result.cost_currency,
        )  # fmt: skip
    if result.outcome == "opted_out":
        return replace(base, status="suppressed", outcome="opted_out")
    if result.outcome == "failed":
        return base
    # retry or rate_limited
    if message.attempts >= message.max_attempts:
        return replace(base, outcome=result.outcome)
    next_at = policy.next_attempt_at(now, message.attempts, hint_s=result.retry_after_s)
    if next_at >= message.deadline_at:
        return replace(base, status="expired", outcome=result.outcome)
    return replace(base, status="retrying", outcome=result.outcome, next_attempt_at=next_at)
