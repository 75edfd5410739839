"""Ed25519 webhook signatures, exactly as Telnyx signs (shared/reference/telnyx.md section 3).

- ``telnyx-timestamp``: Unix seconds (an integer) at delivery time.
- ``telnyx-signature-ed25519``: base64 of the 64-byte Ed25519 signature over the UTF-8 bytes
  ``f"{timestamp}|"`` followed by the exact raw body bytes sent.
- The public key a receiver verifies with is base64 of the raw 32-byte key.

The private key is configured as base64 of its 32-byte seed (``SandboxConfig.webhook_signing_key``)
or generated per ``SandboxApp``.
"""

from __future__ import annotations

import base64
import binascii
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Signer", "decode_seed"]

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
SEED_BYTES = 32


def decode_seed(value: str) -> bytes:
    """The 32 raw seed bytes of a base64 seed; ``ValueError`` when it is not one."""
    try:
        seed = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("webhook_signing_key must be base64 of a 32-byte Ed25519 seed") from None
    if len(seed) != SEED_BYTES:
        raise ValueError(f"webhook_signing_key must decode to {SEED_BYTES} bytes (got {len(seed)})")
    return seed


class Signer:
    """One Ed25519 key: signs webhook bodies and knows its public key."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key: str = base64.b64encode(raw).decode("ascii")  # base64 of the raw 32 bytes

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed_b64: str) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(decode_seed(seed_b64)))

    def sign(self, timestamp: str, body: bytes) -> str:
        """base64 signature over ``f"{timestamp}|"`` + ``body``."""
        return base64.b64encode(self._key.sign(timestamp.encode("ascii") + b"|" + body)).decode("ascii")

    def headers(self, body: bytes, now: float | None = None) -> dict[str, str]:
        """The headers of one delivery of ``body``, timestamped ``now`` (default: the clock)."""
        timestamp = str(int(time.time() if now is None else now))
        return {
            "content-type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: self.sign(timestamp, body),
        }
