"""Sealed values and lookup hashes (common/privacy/crypto.py): what the rest of the system relies on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from common import constants
from common.privacy import crypto
from common.privacy.crypto import OVERHEAD, DecryptionError, Keyring, key_id
from tests.helpers import set_env

KEY_A = b"A" * 32
KEY_B = b"B" * 32
LOOKUP = b"L" * 32
CHURCH = "0190f5a4-0000-7000-8000-000000000001"
OTHER_CHURCH = "0190f5a4-0000-7000-8000-000000000002"


def ring(current: bytes = KEY_A, old: tuple[bytes, ...] = (), lookup: bytes = LOOKUP) -> Keyring:
    return Keyring(current, old, lookup=lookup)


@pytest.mark.parametrize("kind", ["address", "text", "name", "answer"])
@pytest.mark.parametrize("plaintext", ["+13125550142", "", "Hello 👋 ünïcödé", "x" * 5000])
def test_seal_then_open_gives_the_plaintext_back(kind, plaintext):
    r = ring()
    sealed = r.seal(plaintext, kind)
    assert isinstance(sealed, bytes)
    assert len(sealed) == OVERHEAD + len(plaintext.encode())
    assert r.open(sealed, kind) == plaintext
    assert plaintext.encode() not in sealed or plaintext == ""


def test_the_envelope_is_version_key_id_nonce_ciphertext():
    r = ring()
    sealed = r.seal("+13125550142", "address")
    assert sealed[0] == crypto.VERSION == 1
    assert sealed[1:5] == key_id(KEY_A) == r.current_id
    assert sealed[:5] == r.header
    assert r.is_current(sealed)


def test_a_value_does_not_open_as_another_kind():
    r = ring()
    sealed = r.seal("+13125550142", "address")
    for other in ("text", "name", "answer"):
        with pytest.raises(DecryptionError, match="failed authentication"):
            r.open(sealed, other)


@pytest.mark.parametrize("where", [0, 1, 4, 5, 16, 17, -1])
def test_any_altered_byte_fails(where):
    r = ring()
    sealed = bytearray(r.seal("Service at 10am Sunday", "text"))
    sealed[where] ^= 0x01
    with pytest.raises(DecryptionError):
        r.open(bytes(sealed), "text")


def test_truncated_or_foreign_bytes_fail_with_a_clear_error():
    r = ring()
    sealed = r.seal("hello", "text")
    with pytest.raises(DecryptionError, match="not a sealed value"):
        r.open(sealed[: OVERHEAD - 1], "text")
    with pytest.raises(DecryptionError, match="not a sealed value"):
        r.open(b"\x02" + sealed[1:], "text")
    with pytest.raises(DecryptionError):
        r.open(sealed[:-1], "text")  # tag cut short


def test_an_unknown_key_id_names_the_setting_to_fix():
    sealed = ring(KEY_A).seal("+13125550142", "address")
    with pytest.raises(DecryptionError) as err:
        ring(KEY_B).open(sealed, "address")
    message = str(err.value)
    assert "ENCRYPTION_KEYS_OLD" in message
    assert key_id(KEY_A).hex() in message
    assert "+1312" not in message


def test_old_keys_open_but_only_the_current_key_seals():
    under_a = ring(KEY_A).seal("Jane", "name")
    rotated = ring(KEY_B, (KEY_A,))
    assert rotated.open(under_a, "name") == "Jane"
    assert not rotated.is_current(under_a)
    under_b = rotated.seal("Jane", "name")
    assert under_b[1:5] == key_id(KEY_B)
    assert rotated.is_current(under_b)
    assert ring(KEY_A).is_current(under_a)
    with pytest.raises(DecryptionError, match="ENCRYPTION_KEYS_OLD"):
        ring(KEY_A).open(under_b, "name")
    assert sorted(rotated.known_ids) == sorted([key_id(KEY_A).hex(), key_id(KEY_B).hex()])


def test_key_ids_are_stable_and_distinct():
    assert key_id(KEY_A) == key_id(bytes(KEY_A))
    assert key_id(KEY_A) == hmac.new(KEY_A, b"koinonia/key-id/v1", hashlib.sha256).digest()[:4]
    # Stored in every sealed value: pinned, so a change of derivation cannot orphan existing data.
    assert (key_id(KEY_A).hex(), key_id(KEY_B).hex()) == ("62baddf5", "e9917def")
    assert key_id(KEY_A) != key_id(KEY_B)
    assert key_id(KEY_A) not in KEY_A
    assert ring(KEY_A).current_id == ring(KEY_A, (KEY_B,), lookup=b"x" * 32).current_id


def test_each_seal_takes_a_fresh_nonce():
    r = ring()
    sealed = [r.seal("+13125550142", "address") for _ in range(2000)]
    assert len(set(sealed)) == len(sealed)
    assert len({s[5:17] for s in sealed}) == len(sealed)


def test_the_lookup_hash_is_keyed_and_per_church():
    r = ring()
    h = r.lookup_hash(CHURCH, "+13125550142")
    assert len(h) == 32
    assert h == r.lookup_hash(CHURCH, "+13125550142")
    assert h == hmac.new(LOOKUP, f"{CHURCH}:+13125550142".encode(), hashlib.sha256).digest()
    assert h != r.lookup_hash(OTHER_CHURCH, "+13125550142")
    assert h != r.lookup_hash(CHURCH, "+13125550143")
    assert h != ring(lookup=b"M" * 32).lookup_hash(CHURCH, "+13125550142")
    assert h != hashlib.sha256(f"{CHURCH}:+13125550142".encode()).digest()  # not a plain, brute-forceable hash


def test_rotating_the_encryption_key_keeps_every_lookup_hash():
    before = ring(KEY_A).lookup_hash(CHURCH, "+13125550142")
    assert ring(KEY_B, (KEY_A,)).lookup_hash(CHURCH, "+13125550142") == before


def test_module_functions_use_the_configured_keys(env, monkeypatch):
    sealed = crypto.seal("+13125550142", "address")
    assert crypto.unseal(sealed, "address") == "+13125550142"
    assert crypto.seal_optional(None, "text") is None
    assert crypto.unseal_optional(None, "text") is None
    assert crypto.unseal(crypto.seal_optional("hi", "text") or b"", "text") == "hi"
    assert crypto.lookup_hashes(CHURCH, ["+13125550142", "+13125550143"]) == [
        crypto.lookup_hash(CHURCH, "+13125550142"),
        crypto.lookup_hash(CHURCH, "+13125550143"),
    ]
    assert sealed[1:5] == key_id(env.encryption_key_bytes)
    lookup_before = crypto.lookup_hash(CHURCH, "+13125550142")

    # The operator's rotation: a new ENCRYPTION_KEY, the old one in ENCRYPTION_KEYS_OLD; the keyring follows.
    new_key = base64.b64encode(os.urandom(32)).decode()
    set_env(monkeypatch, **{constants.ENCRYPTION_KEY_ENV: new_key, constants.ENCRYPTION_KEYS_OLD_ENV: env.encryption_key})
    assert crypto.unseal(sealed, "address") == "+13125550142"
    assert crypto.seal("x", "text")[1:5] == key_id(base64.b64decode(new_key))
    assert crypto.lookup_hash(CHURCH, "+13125550142") == lookup_before

    set_env(monkeypatch, **{constants.ENCRYPTION_KEYS_OLD_ENV: ""})
    with pytest.raises(DecryptionError, match="ENCRYPTION_KEYS_OLD"):
        crypto.unseal(sealed, "address")
