"""From a claimed row to a carrier request, and from the carrier's answer to the row's next status.

Every path that sends (the queue consumer, the inline fallback, the scheduler) goes through here, so a
message's fate after an attempt is decided in one place. ``send_claimed`` picks the channel's carrier:
mail goes to Amazon SES (``MailCourier``: common/mail/), texts to Telnyx. SES answers come back as the
same ``CarrierResult`` (common/mail/ses.py classifies them: throttling is ``rate_limited``, 5xx and
timeouts ``retry``, rejections ``failed``), so retries, dead letters and the claim fence are the very
same for mail. Mail has no delivery receipts (SES events are not read): a mail ends at ``sent``.

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

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from common.carrier import CarrierResult, OutboundMessage, TelnyxClient
from common.config import ConfigurationError, Settings
from common.messages.store import ClaimedMessage, Outcome
from common.retry_policy import RetryPolicy, default_policy

if TYPE_CHECKING:
    from common.mail import OutgoingMail

logger = logging.getLogger("koinonia.delivery")

# A mail with no SES mailer to take it (MAIL_FROM unset where it is delivered): permanent until an operator
# sets it, as a paused SES account is (common/mail/ses.py); its dead letter replays once it is set.
MAIL_NOT_CONFIGURED = CarrierResult(
    "failed", error_code="mail_not_configured", config_error=True, detail="MAIL_FROM is not set: mail cannot be sent"
)


def outbound(message: ClaimedMessage) -> OutboundMessage:
    return OutboundMessage(
        message_id=message.id,
        to=message.to_address,
        from_=message.from_address or "",
        text=message.body,
        media_urls=tuple(message.media_urls or ()),
        subject=message.subject,
        mms=message.channel == "mms",  # type MMS even for a text-only MMS (billed as one MMS, never split)
    )


class Mailer(Protocol):
    """What ``MailCourier`` sends through: ``common.mail.SesMailer``."""

    async def send(self, mail: OutgoingMail) -> CarrierResult: ...

    async def aclose(self) -> None: ...


class MailCourier:
    """The mail of one sending run (a consumer invocation, an inline send): an ``SesMailer`` made at its first mail.

    boto3 takes a few hundred milliseconds to import and tens to make a client, so a run that sends only
    texts never pays for it. Without ``MAIL_FROM`` every mail gets ``MAIL_NOT_CONFIGURED`` at once.
    ``MailCourier.using(mailer)`` sends through a mailer the caller made and keeps (a test's fault injection
    on its boto3 client): ``aclose`` leaves that one open.
    """

    def __init__(self, make: Callable[[], Mailer], *, owned: bool = True) -> None:
        self._make = make
        self._owned = owned
        self._mailer: Mailer | None = None
        self._unavailable = False
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, max_concurrency: int = 32) -> MailCourier:
        def make() -> Mailer:
            from common.mail import SesMailer

            return SesMailer.from_settings(settings, max_concurrency=max_concurrency)

        return cls(make)

    @classmethod
    def using(cls, mailer: Mailer) -> MailCourier:
        return cls(lambda: mailer, owned=False)

    async def send(self, message: ClaimedMessage) -> CarrierResult:
        """One attempt of a claimed mail; never raises for SES or network problems."""
        mailer = self._mailer or await self._start()
        if mailer is None:
            return MAIL_NOT_CONFIGURED
        from common.mail import OutgoingMail  # loaded with the mailer: no cost by now

        mail = OutgoingMail(
            message_id=message.id, to=message.to_address, subject=message.subject or "", text=message.body, html=message.html
        )
        return await mailer.send(mail)

    async def _start(self) -> Mailer | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # many mails of one batch arrive at once: one mailer for all of them
            if self._mailer is None and not self._unavailable:
                try:
                    # In a thread: making the boto3 client blocks, and texts are in flight on this loop meanwhile.
                    self._mailer = await asyncio.to_thread(self._make)
                except ConfigurationError as exc:
                    self._unavailable = True
                    logger.error("mail cannot be sent", extra={"fields": {"error": str(exc)}})
        return self._mailer

    async def aclose(self) -> None:
        mailer, self._mailer = self._mailer, None
        if mailer is not None and self._owned:
            await mailer.aclose()

    async def __aenter__(self) -> MailCourier:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


async def send_claimed(message: ClaimedMessage, carrier: TelnyxClient, mail: MailCourier | None) -> CarrierResult:
    """One attempt for a claimed message through its channel's carrier: SES for mail, Telnyx for texts."""
    if message.channel == "mail":
        return MAIL_NOT_CONFIGURED if mail is None else await mail.send(message)
    return await carrier.send(outbound(message))


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
