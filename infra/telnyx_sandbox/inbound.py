"""``POST /_sandbox/inbound``: a member texts the church.

Body: ``{"from": member_e164, "to": church_e164, "text": "...", "media_urls": [optional]}``. The
answer's ``data`` and the ``message.received`` webhook's ``payload`` are the same inbound message
object (SDK ``messaging_inbound_message_payload.py`` plus the ``is_spam`` / ``autoresponse_type``
fields of a real capture; shared/reference/telnyx.md section 3).
"""

from __future__ import annotations

import json
import mimetypes
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .encoding import segment
from .errors import ApiError
from .payload import FROM_CARRIER, LINE_TYPE, TO_CARRIER, costs, format_timestamp
from .validation import E164, MAX_MEDIA_URLS

__all__ = ["InboundRequest", "build_inbound_payload", "parse_inbound_request"]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    from_: str  # the member
    to: str  # the church number
    text: str
    media_urls: tuple[str, ...]


def parse_inbound_request(body: bytes) -> InboundRequest | ApiError:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return ApiError.bad_request("The request body is not valid JSON.")
    if not isinstance(data, dict):
        return ApiError.bad_request("The request body must be a JSON object.")
    numbers: dict[str, str] = {}
    for name in ("from", "to"):
        value = data.get(name)
        if value is None:
            return ApiError.missing_parameter(name)
        if not isinstance(value, str) or not E164.fullmatch(value):
            return ApiError.invalid_number(name)
        numbers[name] = value
    text = data.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        return ApiError.bad_request("'text' must be a string.", "/text")
    media = data.get("media_urls")
    if media is None:
        media = []
    if not isinstance(media, list) or not all(isinstance(u, str) and u for u in media):
        return ApiError.bad_request("'media_urls' must be a list of URLs.", "/media_urls")
    if len(media) > MAX_MEDIA_URLS:
        return ApiError.invalid_mms_content(f"At most {MAX_MEDIA_URLS} media URLs are allowed.")
    if not text and not media:
        return ApiError.no_content()
    return InboundRequest(numbers["from"], numbers["to"], text, tuple(media))


def build_inbound_payload(
    request: InboundRequest,
    *,
    received_at: datetime,
    messaging_profile_id: str,
    cost_per_part_usd: str,
    webhook_url: str,
    autoresponse_type: str | None,
) -> dict[str, Any]:
    seg = segment(request.text)
    msg_type = "MMS" if request.media_urls else "SMS"
    parts = 1 if msg_type == "MMS" else seg.parts
    cost, _, _ = costs(cost_per_part_usd, parts)
    return {
        "record_type": "message",
        "direction": "inbound",
        "id": str(uuid.uuid4()),
        "type": msg_type,
        "messaging_profile_id": messaging_profile_id,
        "from": {
            "phone_number": request.from_,
            "carrier": TO_CARRIER,  # the member's carrier
            "line_type": LINE_TYPE,
            "status": "webhook_delivered",
        },
        "to": [
            {
                "phone_number": request.to,
                "status": "webhook_delivered",
                "carrier": FROM_CARRIER,  # the church number is on Telnyx
                "line_type": LINE_TYPE,
            }
        ],
        "cc": [],
        "text": request.text,
        "media": [
            {"url": url, "content_type": mimetypes.guess_type(url)[0], "size": None, "hash_sha256": None}
            for url in request.media_urls
        ],
        "webhook_url": webhook_url,
        "webhook_failover_url": "",
        "encoding": seg.encoding,
        "parts": parts,
        "tags": [],
        "cost": {"amount": cost, "currency": "USD"},
        "received_at": format_timestamp(received_at),
        "sent_at": None,
        "completed_at": None,
        "valid_until": None,
        "errors": [],
        "is_spam": False,
        "autoresponse_type": autoresponse_type,
    }
