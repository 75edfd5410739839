"""API key format and hashing.

A key is ``kn_<prefix>_<secret>``: the 12-character prefix is stored in clear and finds the row; the
whole key is stored only as SHA-256. Keys carry 192 random bits, so a fast hash is the right one here
(a slow password hash protects low-entropy secrets; it would only slow every request down).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_KEY_RE = re.compile(r"^kn_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{32})$")


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown to the church once, never stored
    prefix: str
    key_hash: bytes


def issue_key() -> IssuedKey:
    prefix = secrets.token_hex(6)
    key = f"kn_{prefix}_{secrets.token_urlsafe(24)}"
    return IssuedKey(key=key, prefix=prefix, key_hash=hash_key(key))


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_key(presented: str) -> str | None:
    """The prefix of a well-formed key, or ``None``."""
    match = _KEY_RE.match(presented.strip())
    return match[1] if match else None


def key_matches(presented: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_key(presented), stored_hash)
