"""The ``OutboundMessagePayload`` returned in ``{"data": ...}`` for an accepted send.

Field set and formats follow the SDK type and the real capture in shared/reference/telnyx.md §1:
string costs, ISO-8601 timestamps with milliseconds and ``+00:00``, ``valid_until`` one hour after
``received_at``, ``to[].status`` "queued".
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from .validation import SendRequest

__all__ = ["VALIDITY", "build_payload", "costs", "format_timestamp", "status_payload"]

VALIDITY = timedelta(hours=1)
FROM_CARRIER = "Telnyx"
TO_CARRIER = "SANDBOX WIRELESS"
LINE_TYPE = "Wireless"


def format_timestamp(moment: datetime) -> str:
    """``2025-03-22T11:28:39.401+00:00``."""
    return moment.isoformat(timespec="milliseconds")


@lru_cache(maxsize=256)
def costs(cost_per_part_usd: str, parts: int) -> tuple[str, str, str]:
    """(cost.amount, rate.amount, carrier_fee.amount) for ``parts`` parts."""
    rate = Decimal(cost_per_part_usd) * parts
    return f"{rate:.4f}", f"{rate:.5f}", "0.00000"


def build_payload(
    request: SendRequest,
    *,
    message_id: uuid.UUID | None = None,
    received_at: datetime | None = None,
    messaging_profile_id: str,
    organization_id: str,
    cost_per_part_usd: str,
) -> dict[str, Any]:
    received = received_at or datetime.now(UTC)
    seg = request.segmentation
    cost, rate, carrier_fee = costs(cost_per_part_usd, seg.parts)
    return {
        "record_type": "message",
        "direction": "outbound",
        "id": str(message_id or uuid.uuid4()),
        "type": request.type,
        "messaging_profile_id": request.messaging_profile_id or messaging_profile_id,
        "organization_id": organization_id,
        "from": {"phone_number": request.from_, "carrier": FROM_CARRIER, "line_type": LINE_TYPE},
        "to": [{"phone_number": request.to, "status": "queued", "carrier": TO_CARRIER, "line_type": LINE_TYPE}],
        "cc": [],
        "text": request.text or "",
        "subject": request.subject,
        "media": [{"url": url, "content_type": None, "sha256": None, "size": None} for url in request.media_urls or ()],
        "webhook_url": request.webhook_url or "",
        "webhook_failover_url": request.webhook_failover_url or "",
        "encoding": seg.encoding,
        "parts": seg.parts,
        "num_chars": seg.num_chars,
        "tags": [],
        "cost": {"amount": cost, "currency": "USD"},
        "cost_breakdown": {
            "rate": {"amount": rate, "currency": "USD"},
            "carrier_fee": {"amount": carrier_fee, "currency": "USD"},
        },
        "tcr_campaign_id": None,
        "tcr_campaign_billable": False,
        "tcr_campaign_registered": None,
        "received_at": format_timestamp(received),
        "sent_at": None,
        "completed_at": None,
        "valid_until": format_timestamp(received + VALIDITY),
        "errors": [],
        "smart_encoding_applied": False,
        "wait_seconds": 0.0,
    }


def status_payload(
    payload: dict[str, Any],
    *,
    status: str,
    sent_at: str | None,
    completed_at: str | None,
    errors: list[dict[str, object]],
) -> dict[str, Any]:
    """The send answer's message object as a delivery webhook carries it: same id, cost and
    carrier, ``to[0].status`` = ``status``, and the given timestamps and ``errors[]``."""
    out = dict(payload)
    out["to"] = [{**payload["to"][0], "status": status}]
    out["sent_at"] = sent_at
    out["completed_at"] = completed_at
    out["errors"] = errors
    return out
