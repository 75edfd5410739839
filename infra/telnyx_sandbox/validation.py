"""Turn a ``POST /v2/messages`` JSON body into a ``SendRequest`` or the ``ApiError`` Telnyx gives.

Checks run in a fixed order so a request with several problems always gets the same answer:
body shape -> ``to`` -> ``from`` -> types of the optional fields -> content -> size.
Unknown fields are ignored, as the Telnyx API does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .encoding import MAX_PARTS, Segmentation, segment
from .errors import ApiError

__all__ = ["SendRequest", "parse_send_request"]

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
MAX_MEDIA_URLS = 10
_ENCODINGS = ("auto", "gsm7", "ucs2")
_STRING_FIELDS = ("text", "subject", "messaging_profile_id", "webhook_url", "webhook_failover_url", "send_at")
_BOOL_FIELDS = ("use_profile_webhooks", "auto_detect")


@dataclass(frozen=True, slots=True)
class SendRequest:
    to: str
    from_: str
    text: str | None
    media_urls: tuple[str, ...] | None  # None when the field was absent
    subject: str | None
    type: str  # "SMS" | "MMS"
    messaging_profile_id: str | None
    webhook_url: str | None
    webhook_failover_url: str | None
    use_profile_webhooks: bool
    encoding: str  # requested mode: auto | gsm7 | ucs2
    auto_detect: bool
    send_at: str | None
    segmentation: Segmentation


def parse_send_request(body: bytes, allowed_from: tuple[str, ...]) -> SendRequest | ApiError:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ApiError.bad_request("The request body is not valid JSON.")
    if not isinstance(data, dict):
        return ApiError.bad_request("The request body must be a JSON object.")

    to = data.get("to")
    if to is None:
        return ApiError.missing_parameter("to")
    if not isinstance(to, str) or not E164.fullmatch(to):
        return ApiError.invalid_to()

    from_ = data.get("from")
    if from_ is None:
        return ApiError.missing_parameter("from")
    if not isinstance(from_, str) or not from_ or (allowed_from and from_ not in allowed_from):
        return ApiError.invalid_from()

    for name in _STRING_FIELDS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            return ApiError.bad_request(f"'{name}' must be a string.", f"/{name}")
    for name in _BOOL_FIELDS:
        value = data.get(name)
        if value is not None and not isinstance(value, bool):
            return ApiError.bad_request(f"'{name}' must be a boolean.", f"/{name}")

    send_at = data.get("send_at")
    if send_at is not None and _parse_datetime(send_at) is None:
        return ApiError.bad_request("'send_at' must be an ISO-8601 datetime.", "/send_at")

    encoding = data.get("encoding", "auto")
    if encoding not in _ENCODINGS:
        return ApiError.bad_request("'encoding' must be one of auto, gsm7, ucs2.", "/encoding")

    media = data.get("media_urls")
    media_urls: tuple[str, ...] | None = None
    if media is not None:
        if not isinstance(media, list) or not all(isinstance(u, str) for u in media):
            return ApiError.bad_request("'media_urls' must be a list of strings.", "/media_urls")
        if len(media) > MAX_MEDIA_URLS:
            return ApiError.invalid_mms_content(f"At most {MAX_MEDIA_URLS} media URLs are allowed.")
        media_urls = tuple(media)

    # Telnyx treats a request as MMS as soon as media_urls is present, even empty; an explicit
    # type wins, except that media cannot ride on an SMS.
    requested_type = data.get("type")
    if requested_type is None:
        msg_type = "MMS" if media_urls is not None else "SMS"
    elif requested_type in ("SMS", "MMS"):
        msg_type = requested_type
    else:
        return ApiError.bad_request("'type' must be SMS or MMS.", "/type")
    if msg_type == "SMS" and media_urls:
        return ApiError.invalid_content_combination("An SMS cannot carry media_urls; use type MMS.")

    text: str | None = data.get("text")
    if not text and not media_urls:
        return ApiError.no_content()

    try:
        segmentation = segment(text or "", encoding)
    except ValueError as exc:
        return ApiError.bad_request(str(exc), "/text")
    if msg_type == "SMS" and segmentation.parts > MAX_PARTS:
        return ApiError.too_large(segmentation.parts)
    if msg_type == "MMS":
        # MMS text travels as UTF-8 in one message; it is not split into SMS parts.
        segmentation = Segmentation(segmentation.encoding, 1, segmentation.units, segmentation.num_chars)

    use_profile_webhooks = data.get("use_profile_webhooks")
    return SendRequest(
        to=to,
        from_=from_,
        text=text,
        media_urls=media_urls,
        subject=data.get("subject"),
        type=msg_type,
        messaging_profile_id=data.get("messaging_profile_id"),
        webhook_url=data.get("webhook_url"),
        webhook_failover_url=data.get("webhook_failover_url"),
        use_profile_webhooks=True if use_profile_webhooks is None else use_profile_webhooks,
        encoding=encoding,
        auto_detect=bool(data.get("auto_detect", False)),
        send_at=send_at,
        segmentation=segmentation,
    )


def _parse_datetime(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
