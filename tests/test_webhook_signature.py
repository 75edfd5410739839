"""Webhook signatures: Ed25519 over "timestamp|raw body", 300 s either way, fail closed, nothing stored."""

from __future__ import annotations

import base64
import time

import pytest

from common import constants
from common.webhooks.signature import SignatureRejected, verify
from tests.helpers import function_client, set_env
from tests.webhook_signing import Signer, envelope, inbound_payload

BODY = envelope("message.received", inbound_payload("+13125550142", "+13125550100", "hello"))


@pytest.fixture
def signer() -> Signer:
    return Signer()


def test_a_valid_signature_passes(signer):
    headers = signer.headers(BODY)
    assert verify(headers, BODY, signer.public_key) == int(headers["telnyx-timestamp"])
    shouted = {name.upper(): value for name, value in headers.items()}  # header names are case-insensitive
    assert verify(shouted, BODY, signer.public_key) == int(headers["telnyx-timestamp"])


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("tampered body", 403, "signature_mismatch"),
        ("wrong key", 403, "signature_mismatch"),
        ("stale", 403, "timestamp_out_of_tolerance"),
        ("future", 403, "timestamp_out_of_tolerance"),
        ("timestamp re-signed into another", 403, "signature_mismatch"),
        ("missing timestamp", 401, "signature_missing"),
        ("missing signature", 401, "signature_missing"),
        ("signature not base64", 401, "signature_invalid"),
        ("signature too short", 401, "signature_invalid"),
        ("timestamp not a number", 401, "timestamp_invalid"),
    ],
)
def test_every_bad_request_is_refused(signer, case, status, code):
    now = int(time.time())
    body = BODY
    headers = signer.headers(BODY, timestamp=now)
    key = signer.public_key
    if case == "tampered body":
        body = BODY.replace(b"hello", b"hellO")
    elif case == "wrong key":
        key = Signer().public_key
    elif case == "stale":
        headers = signer.headers(BODY, timestamp=now - 301)
    elif case == "future":
        headers = signer.headers(BODY, timestamp=now + 301)
    elif case == "timestamp re-signed into another":
        headers["telnyx-timestamp"] = str(now - 1)  # the signature covers the timestamp too
    elif case == "missing timestamp":
        del headers["telnyx-timestamp"]
    elif case == "missing signature":
        del headers["telnyx-signature-ed25519"]
    elif case == "signature not base64":
        headers["telnyx-signature-ed25519"] = "not base64!"
    elif case == "signature too short":
        headers["telnyx-signature-ed25519"] = base64.b64encode(b"x" * 10).decode()
    elif case == "timestamp not a number":
        headers["telnyx-timestamp"] = "soon"
    with pytest.raises(SignatureRejected) as caught:
        verify(headers, body, key, now=now)
    assert (caught.value.status, caught.value.code) == (status, code)


def test_the_tolerance_is_300_seconds_both_ways(signer):
    now = 1_800_000_000
    for skew in (-300, 300):
        verify(signer.headers(BODY, timestamp=now + skew), BODY, signer.public_key, now=now)


@pytest.mark.parametrize("key", [None, "", "bm90IGEga2V5", "%%%"])
def test_without_a_usable_key_nothing_is_accepted(signer, key):
    with pytest.raises(SignatureRejected) as caught:
        verify(signer.headers(BODY), BODY, key)
    assert caught.value.status == 503


def _stored(pool) -> tuple[int, int]:
    return (pool.run("SELECT count(*) FROM webhook_events")[0][0], pool.run("SELECT count(*) FROM conversations")[0][0])


def test_the_function_refuses_and_stores_nothing(env, pool, signer, monkeypatch):
    client = function_client("webhooks")
    # No key configured: fail closed.
    answer = client.post("/webhooks/telnyx", data=BODY, headers=signer.headers(BODY))
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "webhook_key_missing"
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: signer.public_key})
    client = function_client("webhooks")
    for headers, body in [
        ({}, BODY),
        (signer.headers(BODY), BODY.replace(b"hello", b"HELLO")),
        (Signer().headers(BODY), BODY),
        (signer.headers(BODY, timestamp=int(time.time()) - 600), BODY),
    ]:
        answer = client.post("/webhooks/telnyx", data=body, headers=headers)
        assert answer.status_code in (401, 403), answer.get_json()
        assert set(answer.get_json()["error"]) >= {"code", "message"}
    assert _stored(pool) == (0, 0)
    # The same body, properly signed, is taken (the number belongs to no church: stored as seen, no thread).
    answer = client.post("/webhooks/telnyx", data=BODY, headers=signer.headers(BODY))
    assert answer.status_code == 200, answer.get_json()
    assert _stored(pool) == (1, 0)
