"""Phone numbers, addresses, names and bodies at rest: AES-256-GCM values and HMAC lookup hashes.

A sealed value is ``bytea``, one self-describing envelope::

    0x01 | key id (4 bytes) | nonce (12 bytes) | ciphertext + GCM tag (16 bytes)

- The key id is the first 4 bytes of ``HMAC-SHA256(key, "koinonia/key-id/v1")``: it names a key without
  revealing it, and an operator cannot mislabel one. ``ENCRYPTION_KEY`` seals; it and every key in
  ``ENCRYPTION_KEYS_OLD`` open. ``koinonia rotate-key`` (common/privacy/rotation.py) re-seals values whose id
  is not the current key's, so an old key can be retired.
- The associated data is the value's *kind* (``address``, ``text``, ``name``, ``answer``): a ciphertext
  moved into a column of another kind does not open. Kinds, not columns, so that a contact's sealed number
  can be copied as it is into ``messages.to_enc`` or ``opt_outs.address_enc`` by SQL alone.
- A fresh random nonce per seal, except where one plaintext is sealed once and stored many times (a
  broadcast's body in each of its messages): that is one seal, reused, not a nonce reused.

A lookup hash is ``HMAC-SHA256(LOOKUP_KEY, "<church id>:<address>")``, 32 bytes. Equal addresses in one
church give equal hashes (unique indexes, joins, "is this number opted out"); the church id inside keeps
one person's hashes in two churches unrelated. ``LOOKUP_KEY`` is its own secret, not derived from
``ENCRYPTION_KEY``, so rotating the encryption key leaves every lookup working.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.config import Settings, get_settings

Kind = Literal["address", "text", "name", "answer"]

VERSION = 1
_HEADER = 1 + 4  # version byte, key id
_NONCE = 12
OVERHEAD = _HEADER + _NONCE + 16


class DecryptionError(Exception):
    """A sealed value could not be opened: its key is not configured, or it was altered."""


def key_id(key: bytes) -> bytes:
    """The 4-byte id stored beside every value sealed with ``key``."""
    return hmac.new(key, b"koinonia/key-id/v1", hashlib.sha256).digest()[:4]


class Keyring:
    """The sealing key, the keys that only open, and the lookup key."""

    def __init__(self, current: bytes, old: Sequence[bytes] = (), *, lookup: bytes) -> None:
        self.current_id = key_id(current)
        self._sealer = AESGCM(current)
        self._openers = {key_id(k): AESGCM(k) for k in (*old, current)}
        self._lookup = lookup
        self.header = bytes([VERSION]) + self.current_id

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        return cls(settings.encryption_key_bytes, settings.old_encryption_keys_bytes, lookup=settings.lookup_key_bytes)

    @property
    def known_ids(self) -> list[str]:
        return [kid.hex() for kid in self._openers]

    def seal(self, plaintext: str, kind: Kind) -> bytes:
        nonce = os.urandom(_NONCE)
        return self.header + nonce + self._sealer.encrypt(nonce, plaintext.encode(), kind.encode())

    def open(self, sealed: bytes, kind: Kind) -> str:
        sealed = bytes(sealed)
        if len(sealed) < OVERHEAD or sealed[0] != VERSION:
            raise DecryptionError("not a sealed value (wrong version or too short)")
        opener = self._openers.get(sealed[1:_HEADER])
        if opener is None:
            raise DecryptionError(
                f"value sealed with key id {sealed[1:_HEADER].hex()}, which is neither ENCRYPTION_KEY nor in "
                "ENCRYPTION_KEYS_OLD: add that key to ENCRYPTION_KEYS_OLD"
            )
        try:
            return opener.decrypt(sealed[_HEADER : _HEADER + _NONCE], sealed[_HEADER + _NONCE :], kind.encode()).decode()
        except InvalidTag:
            raise DecryptionError(f"a sealed {kind} value failed authentication (altered, or moved from another kind)") from None

    def is_current(self, sealed: bytes) -> bool:
        return bytes(sealed[:_HEADER]) == self.header

    def lookup_hash(self, church_id: str, address: str) -> bytes:
        return hmac.new(self._lookup, f"{church_id}:{address}".encode(), hashlib.sha256).digest()


@functools.cache
def _cached(current: bytes, old: tuple[bytes, ...], lookup: bytes) -> Keyring:
    return Keyring(current, old, lookup=lookup)


def keyring() -> Keyring:
    """The process's keyring, from the settings (rebuilt when the settings change, as tests do)."""
    s = get_settings()
    return _cached(s.encryption_key_bytes, tuple(s.old_encryption_keys_bytes), s.lookup_key_bytes)


def seal(plaintext: str, kind: Kind) -> bytes:
    return keyring().seal(plaintext, kind)


def seal_optional(plaintext: str | None, kind: Kind) -> bytes | None:
    return None if plaintext is None else keyring().seal(plaintext, kind)


def unseal(sealed: bytes, kind: Kind) -> str:
    return keyring().open(sealed, kind)


def unseal_optional(sealed: bytes | None, kind: Kind) -> str | None:
    return None if sealed is None else keyring().open(sealed, kind)


def lookup_hash(church_id: str, address: str) -> bytes:
    """The keyed hash that finds ``address`` within one church (32 bytes)."""
    return keyring().lookup_hash(church_id, address)


def lookup_hashes(church_id: str, addresses: Iterable[str]) -> list[bytes]:
    ring = keyring()
    return [ring.lookup_hash(church_id, a) for a in addresses]
