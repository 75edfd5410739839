"""Telnyx webhook signatures: Ed25519 over ``f"{telnyx-timestamp}|"`` + the raw body, checked fail-closed.

The rule (shared/reference/telnyx.md §3, as Telnyx's own SDKs do it):

- ``telnyx-timestamp`` is Unix seconds; ``telnyx-signature-ed25519`` is base64 of a 64-byte signature.
- The signed bytes are the timestamp, ``|``, and the request body exactly as received (never re-serialised).
- The key is the account's Ed25519 public key, base64 of its raw 32 bytes (``TELNYX_PUBLIC_KEY``).
- A timestamp more than 300 s away from now, in either direction, is refused: an old one is a replay,
  a future one a forgery that would otherwise stay replayable for longer.

Every way to fail gives a ``SignatureRejected``: without a configured key nothing is accepted (503, so
Telnyx retries once the operator fixes the configuration), a request we cannot authenticate is 401
(headers missing or malformed) or 403 (signature wrong, timestamp outside the tolerance).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

tolerance_s = 300
TIMESTAMP_HEADER = "telnyx-timestamp"
SIGNATURE_HEADER = "telnyx-signature-ed25519"


class SignatureRejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@lru_cache(maxsize=4)
def load_public_key(encoded: str) -> Ed25519PublicKey:
    """The key from its base64 form; ``ValueError`` with what is wrong with it."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("TELNYX_PUBLIC_KEY is not base64; copy the public key from the Telnyx portal") from None
    if len(raw) != 32:
        raise ValueError(f"TELNYX_PUBLIC_KEY decodes to {len(raw)} bytes; an Ed25519 public key is 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(headers: Mapping[str, str], body: bytes, public_key: str | None, *, now: float | None = None) -> int:
    """Check one webhook request; return its timestamp, or raise ``SignatureRejected``.

    Header names are matched case-insensitively.
    """
    if not public_key:
        raise SignatureRejected(
            503, "webhook_key_missing", "webhooks are refused: TELNYX_PUBLIC_KEY is not configured on this function"
        )
    try:
        key = load_public_key(public_key)
    except ValueError as exc:
        raise SignatureRejected(503, "webhook_key_invalid", str(exc)) from None
    lowered = {name.lower(): value for name, value in headers.items()}
    stamp = lowered.get(TIMESTAMP_HEADER)
    signature = lowered.get(SIGNATURE_HEADER)
    if not stamp or not signature:
        raise SignatureRejected(
            401, "signature_missing", f"the {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are required"
        )
    stamp = stamp.strip()
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:  # "²".isdigit(), but int("²") fails
        raise SignatureRejected(401, "timestamp_invalid", f"{TIMESTAMP_HEADER} must be Unix seconds")
    try:
        raw_signature = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRejected(401, "signature_invalid", f"{SIGNATURE_HEADER} is not base64") from None
    if len(raw_signature) != 64:
        raise SignatureRejected(401, "signature_invalid", f"{SIGNATURE_HEADER} is not an Ed25519 signature")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureRejected(
            403, "timestamp_out_of_tolerance", f"{TIMESTAMP_HEADER} is more than {tolerance_s} s from now"
        )
    try:
        key.verify(raw_signature, stamp.encode() + b"|" + body)
    except InvalidSignature:
        raise SignatureRejected(403, "signature_mismatch", "the webhook signature does not match") from None
    return timestamp
