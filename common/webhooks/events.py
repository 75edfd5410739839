"""Telnyx webhook bodies → typed events. Only what we act on is read; anything else is kept as ``Other``.

Envelope (shared/reference/telnyx.md §3): ``{"data": {"event_type", "id", "occurred_at", "payload",
"record_type": "event"}, "meta": {"attempt", "delivered_to"}}``. ``data.id`` is the event's idempotency
key. Outbound payloads carry our message id in their ``webhook_url`` (``?mid=``): it is inside the
signed body, so a replayed body cannot be pointed at another message.

Carrier statuses map onto ours (common/messages/states.py): ``sent`` → sent; ``delivered`` → delivered;
``delivery_unconfirmed`` → delivery_unconfirmed; ``delivery_failed``, ``sending_failed`` and ``expired``
→ delivery_failed, with the carrier's word kept in ``carrier_status`` and its first error code in
``error_code`` (``expired`` without one gets ``carrier_expired``). Telnyx's own ``queued``/``sending``
say nothing new and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from common.api_errors import BadRequest
from common.messages.states import RECEIPT_RANK, MessageStatus

_STATUS_MAP: dict[str, MessageStatus] = {
    "sent": MessageStatus.sent,
    "delivered": MessageStatus.delivered,
    "delivery_unconfirmed": MessageStatus.delivery_unconfirmed,
    "delivery_failed": MessageStatus.delivery_failed,
    "sending_failed": MessageStatus.delivery_failed,
    "expired": MessageStatus.delivery_failed,
}
DELIVERY_EVENTS = frozenset({"message.sent", "message.finalized"})


@dataclass(frozen=True)
class Receipt:
    event_id: str
    event_type: str
    occurred_at: datetime | None
    provider_message_id: str
    message_id: str | None  # ours, from the signed webhook_url
    carrier_status: str
    status: MessageStatus
    rank: int
    carrier: str | None
    cost_amount: str | None
    cost_currency: str | None
    error_code: str | None
    error_detail: str | None


@dataclass(frozen=True)
class Inbound:
    event_id: str
    occurred_at: datetime | None
    provider_message_id: str
    from_number: str
    to_number: str
    text: str
    media: list[dict[str, Any]]
    autoresponse_type: str | None  # the carrier already answered this keyword (STOP, START, HELP)
    received_at: datetime | None


@dataclass(frozen=True)
class Other:
    event_id: str
    event_type: str
    occurred_at: datetime | None


Event = Receipt | Inbound | Other


class TelnyxEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    event_type: str = Field(min_length=1, description="message.sent, message.finalized, message.received, ...")
    id: str = Field(min_length=1, description="the event's id: its idempotency key")
    # Read only when useful and ignored when not: an unreadable occurred_at is no time, a payload is read only
    # for message.* events (where parse_event requires an object with a non-empty id and a 'to' list).
    occurred_at: Any = Field(default=None, description="ISO-8601 time")
    record_type: Any = None
    payload: Any = Field(default=None, description="the message: an object (required for message.* events)")


class TelnyxWebhook(BaseModel):
    """The envelope Telnyx signs and sends, as documented in our OpenAPI document. Telnyx owns the format and
    adds fields, so unknown ones are allowed; ``parse_event`` reads only what we act on and is the validation."""

    model_config = ConfigDict(extra="allow")

    data: TelnyxEventData
    meta: Any = None


def parse_event(body: Any) -> Event | None:
    """The event in a verified body; ``None`` for an outbound status we ignore; 400 if malformed."""
    data = _obj(body, "data") if isinstance(body, dict) else None
    if data is None:
        raise BadRequest("invalid_event", "a Telnyx webhook body is a JSON object with a 'data' object", field="data")
    event_id = _text(data, "id", "data.id")
    event_type = _text(data, "event_type", "data.event_type")
    occurred_at = _when(data.get("occurred_at"))
    if event_type not in DELIVERY_EVENTS and event_type != "message.received":
        return Other(event_id, event_type, occurred_at)
    payload = _obj(data, "payload")
    if payload is None:
        raise BadRequest("invalid_event", "data.payload must be an object", field="data.payload")
    provider_id = _text(payload, "id", "data.payload.id")
    to = payload.get("to")
    first_to = to[0] if isinstance(to, list) and to and isinstance(to[0], dict) else None
    if first_to is None:
        raise BadRequest("invalid_event", "data.payload.to must be a non-empty list", field="data.payload.to")
    if event_type == "message.received":
        sender = _obj(payload, "from") or {}
        media = payload.get("media")
        return Inbound(
            event_id=event_id,
            occurred_at=occurred_at,
            provider_message_id=provider_id,
            from_number=_text(sender, "phone_number", "data.payload.from.phone_number"),
            to_number=_text(first_to, "phone_number", "data.payload.to[0].phone_number"),
            text=_optional_text(payload.get("text")) or "",
            media=[m for m in media if isinstance(m, dict)] if isinstance(media, list) else [],
            autoresponse_type=_optional_text(payload.get("autoresponse_type")),
            received_at=_when(payload.get("received_at")),
        )
    carrier_status = _text(first_to, "status", "data.payload.to[0].status")
    status = _STATUS_MAP.get(carrier_status)
    if status is None:
        return None
    cost = _obj(payload, "cost") or {}
    errors = payload.get("errors")
    first_error = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    error_code = _optional_text(first_error.get("code"))
    if carrier_status == "expired" and error_code is None:
        error_code = "carrier_expired"
    return Receipt(
        event_id=event_id,
        event_type=event_type,
        occurred_at=occurred_at,
        provider_message_id=provider_id,
        message_id=our_message_id(payload.get("webhook_url")),
        carrier_status=carrier_status,
        status=status,
        rank=RECEIPT_RANK[status],
        carrier=_optional_text(first_to.get("carrier")),
        cost_amount=_amount(cost.get("amount")),
        cost_currency=_optional_text(cost.get("currency")),
        error_code=error_code if status is MessageStatus.delivery_failed else None,
        error_detail=(_optional_text(first_error.get("title")) or carrier_status)
        if status is MessageStatus.delivery_failed
        else None,
    )


def our_message_id(webhook_url: Any) -> str | None:
    """The ``mid`` our carrier client put in the message's webhook_url, if it looks like one of our ids."""
    if not isinstance(webhook_url, str) or "mid=" not in webhook_url:
        return None
    values = parse_qs(urlsplit(webhook_url).query).get("mid")
    if not values:
        return None
    mid = values[-1]
    try:  # the shape alone ("zzzzzzzz-zzzz-...") let a non-UUID reach CAST(... AS uuid): a 500 Telnyx redelivers forever
        return str(UUID(mid)) if len(mid) == 36 else None
    except ValueError:
        return None


def _obj(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    return value if isinstance(value, dict) else None


def _text(data: dict[str, Any], key: str, field: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest("invalid_event", f"{field} must be a non-empty string", field=field)
    return value


def _optional_text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _amount(value: Any) -> str | None:
    """A cost that fits ``numeric(12, 5)``; anything else ("abc", "1e400") is no cost, not a failed receipt."""
    text = _optional_text(value)
    if text is None:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        return None
    return text if amount.is_finite() and abs(amount) < 10**7 else None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
