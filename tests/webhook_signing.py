"""Sign webhook bodies the way Telnyx does, with keys made in the test (never a real account's)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass
class Signer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes_raw()).decode()

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + b"|" + body)
        return {
            "telnyx-timestamp": stamp,
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }


def envelope(event_type: str, payload: dict[str, Any], *, event_id: str | None = None) -> bytes:
    return json.dumps({
        "data": {"event_type": event_type, "id": event_id or str(uuid.uuid4()),
                 "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "payload": payload, "record_type": "event"},
        "meta": {"attempt": 1, "delivered_to": "http://127.0.0.1/webhooks/telnyx"},
    }).encode()  # fmt: skip


def outbound_payload(provider_id: str, message_id: str | None, status: str, *, to: str = "+13125550142",
                     errors: list[dict[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "record_type": "message", "direction": "outbound", "id": provider_id, "type": "SMS",
        "from": {"phone_number": "+13125550100", "carrier": "Telnyx", "line_type": "Wireless"},
        "to": [{"phone_number": to, "status": status, "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"}],
        "text": "See you Sunday", "parts": 1, "encoding": "GSM-7",
        "cost": {"amount": "0.0040", "currency": "USD"},
        "webhook_url": f"http://127.0.0.1/webhooks/telnyx?mid={message_id}" if message_id else "",
        "errors": errors or [],
    }  # fmt: skip


def inbound_payload(from_: str, to: str, text: str, *, autoresponse_type: str | None = None) -> dict[str, Any]:
    return {
        "record_type": "message", "direction": "inbound", "id": str(uuid.uuid4()), "type": "SMS",
        "from": {"phone_number": from_, "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless",
                 "status": "webhook_delivered"},
        "to": [{"phone_number": to, "status": "webhook_delivered", "carrier": "Telnyx", "line_type": "Wireless"}],
        "text": text, "media": [], "encoding": "GSM-7", "parts": 1,
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "autoresponse_type": autoresponse_type, "is_spam": False,
    }  # fmt: skip
