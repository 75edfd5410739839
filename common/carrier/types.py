"""What goes to the carrier and what comes back: plain frozen records, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["OUTCOMES", "CarrierResult", "ClientStats", "OutboundMessage", "Outcome"]

# sent          Telnyx accepted the message (HTTP 2xx); ``provider_message_id`` is its id.
# retry         transient: 5xx, timeouts, connection problems, transient carrier codes. Send again later.
# rate_limited  slow down: 429 / 10011 / 40318 / 40333; wait ``retry_after_s`` when given.
# failed        permanent for this message: validation, auth, account. Do not send it again as is.
# opted_out     the recipient texted STOP (40300). Never retry; record the opt-out.
Outcome = Literal["sent", "retry", "rate_limited", "failed", "opted_out"]
OUTCOMES: tuple[Outcome, ...] = ("sent", "retry", "rate_limited", "failed", "opted_out")


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One text to send.

    ``message_id`` is ours. When the client has a webhook base URL it goes into the per-message
    ``webhook_url`` as ``?mid=<id>``, which correlates delivery webhooks and lets the sandbox
    ledger tell a real duplicate (same id twice) from two intended sends of the same text.
    A non-empty ``media_urls`` or ``mms`` makes the message an MMS (``type: MMS``); an SMS never carries
    ``media_urls`` (Telnyx treats the mere presence of the field, even empty, as MMS).
    """

    message_id: str
    to: str
    from_: str
    text: str
    media_urls: tuple[str, ...] = ()
    subject: str | None = None  # MMS only; ignored for SMS
    mms: bool = False
    """Sent as an MMS even without media (channel ``mms``, text only): one part, as billed, never split into SMS."""

    @property
    def is_mms(self) -> bool:
        return self.mms or bool(self.media_urls)


@dataclass(frozen=True, slots=True)
class CarrierResult:
    """The classified answer to one send attempt. ``send()`` returns this; it never raises for
    carrier or network problems.

    ``error_code`` is the Telnyx code as a string (``"40300"``), or one of ours:
    ``"timeout"`` (no answer within the read timeout after the request was written),
    ``"connect_error"`` (refused, unreachable, DNS, TLS or connect timeout: nothing was sent),
    ``"connection_dropped"`` (the connection closed or reset before a complete answer),
    ``"bad_response"`` (an answer we could not parse).

    ``maybe_accepted`` marks the duplicate window: the request may have reached the carrier (it
    was written and no answer came back), so a retry may send the text twice.

    ``config_error`` marks answers that mean *our* setup is wrong or needs an operator (bad API
    key 10009, unassigned sender 40305, spend limit 40333, ...), so ops can alert on it.

    ``detail`` is safe to log: a fixed phrase or the Telnyx error title, with anything that
    looks like a phone number removed; never a body, never a number.
    """

    outcome: Outcome
    provider_message_id: str | None = None
    http_status: int | None = None
    error_code: str | None = None
    retry_after_s: float | None = None
    parts: int | None = None
    cost_amount: str | None = None
    cost_currency: str | None = None
    maybe_accepted: bool = False
    config_error: bool = False
    detail: str | None = None

    @property
    def retryable(self) -> bool:
        """True for ``retry`` and ``rate_limited``: the same message may be sent again later."""
        return self.outcome == "retry" or self.outcome == "rate_limited"


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters kept by ``TelnyxClient`` (cheap: plain integer updates on the hot path)."""

    max_connections: int
    connections_open: int  # TCP connections open right now
    peak_connections_open: int  # the most ever open at once; never exceeds max_connections
    connections_opened: int  # connections established since start (replacements included)
    connect_failures: int
    connections_discarded: int  # closed because broken, timed out, stale or told to close
    in_flight: int  # send() calls holding a connection slot right now
    peak_in_flight: int
    requests: int  # requests written to a connection
