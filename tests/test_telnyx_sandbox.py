"""The Telnyx sandbox, exercised over real HTTP on loopback.

Most tests run an in-process ``Sandbox`` (a background thread with its own event loop) and talk to
it with httpx; ``TestCli`` runs ``python -m infra.telnyx_sandbox`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.telnyx_sandbox import Sandbox, SandboxConfig, parse_rule, segment

ROOT = Path(__file__).resolve().parent.parent
KEY = "KEY_sandbox"
AUTH = {"Authorization": f"Bearer {KEY}"}
TO = "+15551230001"
OTHER = "+15551230002"
FROM = "+15557770000"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def message(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": FROM,
        "to": TO,
        "text": "Choir practice is moved to Thursday.",
        "webhook_url": f"https://hooks.example.test/telnyx?message_id={uuid.uuid4()}",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"errors"}
    assert len(body["errors"]) == 1
    err: dict[str, Any] = body["errors"][0]
    assert isinstance(err["code"], str)
    assert isinstance(err["title"], str) and err["title"]
    assert isinstance(err["detail"], str) and err["detail"]
    return err


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig()) as sandbox:
        yield sandbox


@pytest.fixture
def client(sb: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sb.url, headers=AUTH, timeout=10.0) as c:
        yield c


def send(client: httpx.Client, **overrides: Any) -> httpx.Response:
    return client.post("/v2/messages", json=message(**overrides))


# Success ---------------------------------------------------------------------------------------


class TestAccepted:
    def test_body_shape_matches_outbound_message_payload(self, sb: Sandbox, client: httpx.Client) -> None:
        req = message(messaging_profile_id="profile-123", webhook_failover_url="https://f.example.test/x")
        resp = client.post("/v2/messages", json=req)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        body = resp.json()
        assert set(body) == {"data"}
        data = body["data"]
        assert data["record_type"] == "message"
        assert data["direction"] == "outbound"
        assert uuid.UUID(data["id"]).version == 4
        assert data["type"] == "SMS"
        assert data["messaging_profile_id"] == "profile-123"
        assert isinstance(data["organization_id"], str) and data["organization_id"]
        assert data["from"] == {"phone_number": FROM, "carrier": "Telnyx", "line_type": "Wireless"}
        assert len(data["to"]) == 1
        assert data["to"][0]["phone_number"] == TO
        assert data["to"][0]["status"] == "queued"
        assert set(data["to"][0]) == {"phone_number", "status", "carrier", "line_type"}
        assert data["cc"] == []
        assert data["text"] == req["text"]
        assert data["subject"] is None
        assert data["media"] == []
        assert data["webhook_url"] == req["webhook_url"]
        assert data["webhook_failover_url"] == "https://f.example.test/x"
        assert data["encoding"] == "GSM-7"
        assert data["parts"] == 1
        assert data["tags"] == []
        assert data["cost"] == {"amount": "0.0040", "currency": "USD"}
        assert isinstance(data["cost"]["amount"], str)
        assert data["cost_breakdown"]["rate"]["currency"] == "USD"
        assert isinstance(data["cost_breakdown"]["rate"]["amount"], str)
        assert isinstance(data["cost_breakdown"]["carrier_fee"]["amount"], str)
        assert data["sent_at"] is None
        assert data["completed_at"] is None
        assert data["errors"] == []
        assert data["smart_encoding_applied"] is False
        assert data["wait_seconds"] == 0.0 and isinstance(data["wait_seconds"], float)
        assert TIMESTAMP.fullmatch(data["received_at"])
        assert TIMESTAMP.fullmatch(data["valid_until"])
        received = datetime.fromisoformat(data["received_at"])
        assert datetime.fromisoformat(data["valid_until"]) - received == timedelta(hours=1)
        assert received.utcoffset() == timedelta(0)

    def test_missing_optional_fields_use_defaults(self, sb: Sandbox, client: httpx.Client) -> None:
        data = client.post("/v2/messages", json={"from": FROM, "to": TO, "text": "hi"}).json()["data"]
        assert data["messaging_profile_id"] == sb.config.messaging_profile_id
        assert data["webhook_url"] == ""
        assert data["webhook_failover_url"] == ""

    def test_cost_is_per_part(self, client: httpx.Client) -> None:
        data = send(client, text="x" * 400).json()["data"]
        assert data["parts"] == 3
        assert data["cost"]["amount"] == "0.0120"
        assert data["cost_breakdown"]["rate"]["amount"] == "0.01200"

    def test_get_by_id_returns_stored_payload(self, client: httpx.Client) -> None:
        sent = send(client).json()
        got = client.get(f"/v2/messages/{sent['data']['id']}")
        assert got.status_code == 200
        assert got.json() == sent

    def test_get_unknown_id_is_404_10005(self, client: httpx.Client) -> None:
        resp = client.get(f"/v2/messages/{uuid.uuid4()}")
        assert resp.status_code == 404
        assert error_of(resp)["code"] == "10005"

    def test_get_requires_auth(self, sb: Sandbox, client: httpx.Client) -> None:
        sent = send(client).json()
        resp = httpx.get(f"{sb.url}/v2/messages/{sent['data']['id']}", timeout=10)
        assert resp.status_code == 401
        assert error_of(resp)["code"] == "10009"


# Encoding and parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("Grüße à Ñoño ¿Qué? £5 @ 10:00", "GSM-7", 1),
        ("Ñandú", "UCS-2", 1),  # ú is not in the GSM alphabet (ù is)
        ("é" * 160, "GSM-7", 1),
        # extension characters take two septets
        ("{" * 80, "GSM-7", 1),
        ("{" * 81, "GSM-7", 2),
        ("€" * 80, "GSM-7", 1),
        ("a" * 159 + "^", "GSM-7", 2),
        ("[]~|\\" * 16, "GSM-7", 1),
        ("[]~|\\" * 32, "GSM-7", 3),
        # one non-GSM character switches the whole message to UCS-2
        ("a" * 69 + "ж", "UCS-2", 1),
        ("ж" * 71, "UCS-2", 2),
        ("ж" * 134, "UCS-2", 2),
        ("ж" * 135, "UCS-2", 3),
        ("use `code`", "UCS-2", 1),
        # emoji are two UTF-16 units and never straddle a part
        ("😀" * 35, "UCS-2", 1),
        ("😀" * 36, "UCS-2", 2),
        ("a" * 159 + "😀", "UCS-2", 3),
    ],
)
def test_encoding_and_parts(client: httpx.Client, text: str, encoding: str, parts: int) -> None:
    resp = send(client, text=text)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert (data["encoding"], data["parts"]) == (encoding, parts)
    assert data["num_chars"] == len(text)
    seg = segment(text)
    assert (seg.encoding, seg.parts) == (encoding, parts)


def test_gsm_extension_chars_count_two_septets() -> None:
    assert segment("{}").units == 4
    assert segment("ab").units == 2
    assert segment("😀").units == 2


def test_forced_ucs2_encoding(client: httpx.Client) -> None:
    data = send(client, text="a" * 71, encoding="ucs2").json()["data"]
    assert (data["encoding"], data["parts"]) == ("UCS-2", 2)


def test_forced_gsm7_rejects_non_gsm_text(client: httpx.Client) -> None:
    resp = send(client, text="hello 😀", encoding="gsm7")
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "10015"


@pytest.mark.parametrize(("text", "ok"), [("a" * 1530, True), ("a" * 1531, False), ("ж" * 670, True), ("ж" * 671, False)])
def test_more_than_ten_parts_is_40302(client: httpx.Client, text: str, ok: bool) -> None:
    resp = send(client, text=text)
    if ok:
        assert resp.status_code == 200
        assert resp.json()["data"]["parts"] == 10
    else:
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "40302"


# MMS ----------------------------------------------------------------------------------------------


class TestMms:
    def test_media_makes_mms(self, client: httpx.Client) -> None:
        urls = ["https://cdn.example.test/a.jpg", "https://cdn.example.test/b.png"]
        resp = send(client, text=None, media_urls=urls, subject="Easter")
        assert resp.status_code == 200, resp.text
        data = resp.json()["data"]
        assert data["type"] == "MMS"
        assert data["subject"] == "Easter"
        assert data["parts"] == 1
        assert data["media"] == [{"url": u, "content_type": None, "sha256": None, "size": None} for u in urls]

    def test_empty_media_urls_still_means_mms(self, client: httpx.Client) -> None:
        assert send(client, media_urls=[]).json()["data"]["type"] == "MMS"

    def test_explicit_mms_type_for_long_text(self, client: httpx.Client) -> None:
        data = send(client, type="MMS", text="a" * 2000).json()["data"]
        assert (data["type"], data["parts"]) == ("MMS", 1)

    def test_more_than_ten_media_urls_is_40317(self, client: httpx.Client) -> None:
        resp = send(client, media_urls=[f"https://cdn.example.test/{i}.jpg" for i in range(11)])
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "40317"

    def test_sms_type_with_media_is_rejected(self, client: httpx.Client) -> None:
        resp = send(client, type="SMS", media_urls=["https://cdn.example.test/a.jpg"])
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "40304"


# Request errors ----------------------------------------------------------------------------------


class TestRequestErrors:
    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
    )
    def test_bad_or_missing_key_is_401_10009(self, sb: Sandbox, headers: dict[str, str]) -> None:
        resp = httpx.post(f"{sb.url}/v2/messages", json=message(), headers=headers, timeout=10)
        assert resp.status_code == 401
        assert error_of(resp)["code"] == "10009"
        assert sb.ledger.accepted == 0
        assert sb.ledger.by_status() == {401: 1}

    def test_configured_api_key(self) -> None:
        with Sandbox(SandboxConfig(api_key="KEY_other")) as sb:
            ok = httpx.post(f"{sb.url}/v2/messages", json=message(), headers={"Authorization": "Bearer KEY_other"})
            assert ok.status_code == 200
            bad = httpx.post(f"{sb.url}/v2/messages", json=message(), headers=AUTH)
            assert bad.status_code == 401

    @pytest.mark.parametrize("to", ["15551234567", "+1-555-123-4567", "+0123456", "+1", "", "+1555123456789012", 15551234567])
    def test_to_not_e164_is_400_40310(self, client: httpx.Client, to: object) -> None:
        resp = send(client, to=to)
        assert resp.status_code == 400
        err = error_of(resp)
        assert err["code"] == "40310"
        assert err["source"]["pointer"] == "/to"

    def test_missing_to_is_10004(self, client: httpx.Client) -> None:
        resp = client.post("/v2/messages", json={"from": FROM, "text": "hi"})
        assert resp.status_code == 400
        err = error_of(resp)
        assert (err["code"], err["source"]["pointer"]) == ("10004", "/to")

    def test_from_not_allowed_is_400_40305(self) -> None:
        with Sandbox(SandboxConfig(allowed_from=(FROM,))) as sb, httpx.Client(base_url=sb.url, headers=AUTH) as c:
            assert send(c).status_code == 200
            resp = send(c, **{"from": "+15550009999"})
            assert resp.status_code == 400
            err = error_of(resp)
            assert (err["code"], err["source"]["pointer"]) == ("40305", "/from")

    def test_any_from_allowed_when_unconfigured(self, client: httpx.Client) -> None:
        assert send(client, **{"from": "+15550009999"}).status_code == 200

    @pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
    def test_malformed_json_is_400_10015(self, sb: Sandbox, client: httpx.Client, raw: bytes) -> None:
        resp = client.post("/v2/messages", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "10015"
        assert sb.ledger.by_code() == {"10015": 1}

    @pytest.mark.parametrize("overrides", [{"text": None}, {"text": ""}])
    def test_no_text_and_no_media_is_400_40316(self, client: httpx.Client, overrides: dict[str, Any]) -> None:
        resp = send(client, **overrides)
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "40316"

    @pytest.mark.parametrize(
        "overrides",
        [{"type": "FAX"}, {"encoding": "latin1"}, {"send_at": "next tuesday"}, {"use_profile_webhooks": "yes"}, {"text": 5}],
    )
    def test_bad_field_values_are_10015(self, client: httpx.Client, overrides: dict[str, Any]) -> None:
        resp = send(client, **overrides)
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "10015"

    def test_all_documented_fields_accepted(self, client: httpx.Client) -> None:
        resp = send(
            client,
            messaging_profile_id="p-1",
            webhook_failover_url="https://f.example.test",
            use_profile_webhooks=False,
            encoding="auto",
            auto_detect=True,
            send_at="2030-01-01T10:00:00Z",
            type="SMS",
            subject=None,
        )
        assert resp.status_code == 200, resp.text

    def test_unknown_route_and_method(self, client: httpx.Client) -> None:
        assert client.get("/v2/nope").status_code == 404
        assert client.get("/v2/messages").status_code == 405
        assert client.delete(f"/v2/messages/{uuid.uuid4()}").status_code == 405

    def test_body_too_large_is_413(self) -> None:
        with Sandbox(SandboxConfig(max_body_bytes=1000)) as sb, httpx.Client(base_url=sb.url, headers=AUTH) as c:
            resp = send(c, text="a" * 2000)
            assert resp.status_code == 413
            assert error_of(resp)["code"] == "10015"


# Deterministic per-number rules -------------------------------------------------------------------


class TestRules:
    def test_blocked_is_409_40300(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "blocked"})
        resp = send(client)
        assert resp.status_code == 409
        err = error_of(resp)
        assert err["code"] == "40300"
        assert err["title"] == "Blocked due to STOP message"
        assert send(client, to=OTHER).status_code == 200
        assert sb.ledger.by_to() == {OTHER: 1}

    def test_invalid_is_400_40310(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "invalid"})
        resp = send(client)
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "40310"

    def test_5xx_is_10007(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "5xx"})
        resp = send(client)
        assert resp.status_code == 500
        err = error_of(resp)
        assert (err["code"], err["title"]) == ("10007", "Unexpected error")
        sb.configure(status_5xx=502)
        assert send(client).status_code == 502

    def test_429_is_10011_with_rate_limit_headers(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "429"}, ratelimit_limit=60, ratelimit_reset_s=7)
        resp = send(client)
        assert resp.status_code == 429
        err = error_of(resp)
        assert (err["code"], err["title"]) == ("10011", "Too many requests")
        assert resp.headers["x-ratelimit-limit"] == "60"
        assert resp.headers["x-ratelimit-remaining"] == "0"
        assert resp.headers["x-ratelimit-reset"] == "7"
        assert resp.headers["retry-after"] == "7"

    def test_timeout_holds_then_closes_and_is_not_accepted(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "timeout"}, timeout_hold_s=0.3)
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            send(client)
        assert time.monotonic() - started >= 0.3
        assert sb.ledger.accepted == 0
        assert sb.ledger.unanswered() == {"timeout": 1}

    def test_timeout_longer_than_client_timeout(self, sb: Sandbox) -> None:
        sb.configure(rules={TO: "timeout"}, timeout_hold_s=60.0)
        with httpx.Client(base_url=sb.url, headers=AUTH, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
            send(c)
        assert sb.ledger.accepted == 0
        # stop() must not wait for the 60 s hold (the fixture's stop runs after this test)
        started = time.monotonic()
        sb.stop()
        assert time.monotonic() - started < 5.0

    def test_timeout_after_accept_is_accepted(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "timeout_after_accept"}, timeout_hold_s=0.2)
        with pytest.raises(httpx.RemoteProtocolError):
            send(client)
        assert sb.ledger.accepted == 1
        assert sb.ledger.entries()[0].outcome == "timeout_after_accept"

    def test_drop_before_accept_is_not_recorded(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "drop_before_accept"})
        with pytest.raises(httpx.RemoteProtocolError):
            send(client)
        assert sb.ledger.accepted == 0
        assert sb.ledger.unanswered() == {"drop_before_accept": 1}
        assert sb.ledger.attempts == 1

    def test_drop_after_accept_is_accepted_but_client_sees_connection_error(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "drop_after_accept"})
        req = message()
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v2/messages", json=req)
        assert sb.ledger.accepted == 1
        entry = sb.ledger.entries()[0]
        assert (entry.to, entry.from_, entry.text, entry.webhook_url) == (TO, FROM, req["text"], req["webhook_url"])
        assert entry.outcome == "drop_after_accept"
        # the message exists: GET by id works
        assert client.get(f"/v2/messages/{entry.id}").json()["data"]["id"] == entry.id
        # a retry of the same request is the duplicate the real system must measure
        sb.configure(rules={})
        assert client.post("/v2/messages", json=req).status_code == 200
        assert (sb.ledger.accepted, sb.ledger.unique, sb.ledger.duplicates) == (2, 1, 1)

    def test_fail_first_n(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "fail_first:2", OTHER: "fail_first:0"})
        statuses = [send(client).status_code for _ in range(4)]
        assert statuses == [503, 503, 200, 200]
        assert send(client, to=OTHER).status_code == 200
        # unrelated config changes keep the progress; changing the rule restarts it
        sb.configure(latency_ms=0)
        assert send(client).status_code == 200
        sb.configure(rules={TO: "fail_first:1"})
        assert [send(client).status_code for _ in range(2)] == [503, 200]
        assert sb.ledger.by_code() == {"10007": 3}

    def test_rules_do_not_apply_to_invalid_requests(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={TO: "5xx"})
        assert send(client, text="").status_code == 400

    def test_bad_rule_rejected(self, sb: Sandbox) -> None:
        with pytest.raises(ValueError):
            sb.configure(rules={TO: "explode"})
        with pytest.raises(ValueError):
            parse_rule("fail_first:x")
        assert parse_rule("fail_first:3").count == 3


# Probabilistic faults ----------------------------------------------------------------------------

RATE_FAULTS = {
    "rate_5xx": ("status", 500),
    "rate_429": ("status", 429),
    "rate_timeout": ("error", "timeout"),
    "rate_drop_before_accept": ("error", "drop_before_accept"),
    "rate_drop_after_accept": ("error", "drop_after_accept"),
    "rate_timeout_after_accept": ("error", "timeout_after_accept"),
}


class TestRates:
    @pytest.mark.parametrize("field", list(RATE_FAULTS))
    def test_rate_one_always_faults(self, sb: Sandbox, client: httpx.Client, field: str) -> None:
        sb.configure(**{field: 1.0, "timeout_hold_s": 0.05})
        kind, expected = RATE_FAULTS[field]
        n = 5
        for _ in range(n):
            if kind == "status":
                resp = send(client)
                assert resp.status_code == expected
                assert error_of(resp)["code"] == ("10007" if expected == 500 else "10011")
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    send(client)
        accepts = field in ("rate_drop_after_accept", "rate_timeout_after_accept")
        assert sb.ledger.accepted == (n if accepts else 0)
        if kind == "error":
            assert sb.ledger.unanswered() == {expected: n}
        else:
            assert sb.ledger.by_status() == {expected: n}

    @pytest.mark.parametrize("field", list(RATE_FAULTS))
    def test_rate_zero_never_faults(self, sb: Sandbox, client: httpx.Client, field: str) -> None:
        sb.configure(**{field: 1.0})
        sb.configure(**{field: 0.0})
        assert all(send(client).status_code == 200 for _ in range(20))
        assert sb.ledger.accepted == 20
        assert sb.ledger.unanswered() == {}

    def test_seeded_rates_are_reproducible(self) -> None:
        def statuses(seed: int) -> list[int]:
            with (
                Sandbox(SandboxConfig(rate_5xx=0.3, rate_429=0.2, seed=seed)) as sb,
                httpx.Client(base_url=sb.url, headers=AUTH) as c,
            ):
                first = [send(c).status_code for _ in range(60)]
                sb.reset()
                assert [send(c).status_code for _ in range(60)] == first
                return first

        a = statuses(7)
        assert a == statuses(7)
        assert {200, 429, 500} <= set(a)
        assert 5 <= a.count(500) <= 35

    def test_rates_must_sum_to_at_most_one(self, sb: Sandbox) -> None:
        sb.configure(rate_5xx=0.6)
        with pytest.raises(ValueError, match="sum"):
            sb.configure(rate_429=0.6)
        with pytest.raises(ValueError):
            SandboxConfig(rate_timeout=1.5)
        with pytest.raises(ValueError, match="unknown"):
            sb.configure(rate_everything=1.0)
        assert sb.config.rate_429 == 0.0


# Ledger -------------------------------------------------------------------------------------------


class TestLedger:
    def test_duplicates_by_fingerprint(self, sb: Sandbox, client: httpx.Client) -> None:
        req = message()
        for _ in range(3):
            assert client.post("/v2/messages", json=req).status_code == 200
        # same text, different webhook_url (the sender's own id): not a duplicate
        assert send(client, text=req["text"]).status_code == 200
        assert send(client, to=OTHER).status_code == 200
        ledger = sb.ledger
        assert (ledger.accepted, ledger.unique, ledger.duplicates) == (5, 3, 2)
        assert ledger.by_to() == {TO: 4, OTHER: 1}
        assert [e.duplicate for e in ledger.entries()] == [False, True, True, False, False]
        assert len({e.id for e in ledger.entries()}) == 5

    def test_media_urls_are_part_of_the_fingerprint(self, sb: Sandbox, client: httpx.Client) -> None:
        req = message()
        client.post("/v2/messages", json={**req, "media_urls": ["https://cdn.example.test/a.jpg"]})
        client.post("/v2/messages", json={**req, "media_urls": ["https://cdn.example.test/b.jpg"]})
        client.post("/v2/messages", json={**req, "media_urls": ["https://cdn.example.test/b.jpg"]})
        assert (sb.ledger.accepted, sb.ledger.unique, sb.ledger.duplicates) == (3, 2, 1)

    def test_attempts_by_status(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(rules={OTHER: "blocked"})
        send(client)
        send(client)
        send(client, to=OTHER)
        send(client, to="nope")
        httpx.post(f"{sb.url}/v2/messages", json=message(), timeout=10)
        summary = client.get("/_sandbox/ledger").json()
        assert summary["attempts"] == 5
        assert summary["by_status"] == {"200": 2, "400": 1, "401": 1, "409": 1}
        assert summary["by_code"] == {"10009": 1, "40300": 1, "40310": 1}
        assert summary["accepted"] == 2
        assert "entries" not in summary

    def test_entries_over_http(self, sb: Sandbox, client: httpx.Client) -> None:
        req = message(media_urls=["https://cdn.example.test/a.jpg"])
        sent = client.post("/v2/messages", json=req).json()["data"]
        summary = client.get("/_sandbox/ledger", params={"entries": "1"}).json()
        assert summary["entries"] == [
            {
                "id": sent["id"],
                "to": TO,
                "from": FROM,
                "text": req["text"],
                "media_urls": req["media_urls"],
                "webhook_url": req["webhook_url"],
                "type": "MMS",
                "received_at": sent["received_at"],
                "outcome": "accepted",
                "duplicate": False,
            }
        ]


# Connections and latency ----------------------------------------------------------------------


def _raw_request(port: int, body: dict[str, Any], extra: str = "") -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v2/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra}\r\n"
    )
    return head.encode() + payload


def _read_response(sock_file: Any) -> tuple[int, dict[str, str], bytes]:
    status_line = sock_file.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := sock_file.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = sock_file.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


class TestConnections:
    def test_keep_alive_many_requests_on_one_connection(self, sb: Sandbox) -> None:
        with socket.create_connection(("127.0.0.1", sb.port), timeout=10) as sock, sock.makefile("rb") as f:
            for i in range(200):
                sock.sendall(_raw_request(sb.port, message(text=f"n{i}")))
                status, headers, body = _read_response(f)
                assert status == 200
                assert "connection" not in headers
                assert json.loads(body)["data"]["text"] == f"n{i}"
        assert sb.ledger.accepted == 200

    def test_pipelined_requests_answer_in_order(self, sb: Sandbox) -> None:
        sb.configure(jitter_ms=30)  # out-of-order completion would show up as misordered answers
        reqs = b"".join(_raw_request(sb.port, message(text=f"p{i}")) for i in range(10))
        with socket.create_connection(("127.0.0.1", sb.port), timeout=10) as sock, sock.makefile("rb") as f:
            sock.sendall(reqs)
            texts = [json.loads(_read_response(f)[2])["data"]["text"] for _ in range(10)]
        assert texts == [f"p{i}" for i in range(10)]

    def test_connection_close_is_honoured(self, sb: Sandbox) -> None:
        with socket.create_connection(("127.0.0.1", sb.port), timeout=10) as sock, sock.makefile("rb") as f:
            sock.sendall(_raw_request(sb.port, message(), "Connection: close\r\n"))
            status, headers, _ = _read_response(f)
            assert status == 200
            assert headers["connection"] == "close"
            assert f.read() == b""  # server closed

    def test_httpx_reuses_one_connection(self, sb: Sandbox) -> None:
        with httpx.Client(base_url=sb.url, headers=AUTH, limits=httpx.Limits(max_connections=1)) as c:
            ports = set()
            for _ in range(50):
                resp = send(c, text="x")
                assert resp.status_code == 200
                stream = resp.extensions["network_stream"]
                ports.add(stream.get_extra_info("client_addr")[1])
        assert len(ports) == 1

    def test_latency_is_applied(self, sb: Sandbox, client: httpx.Client) -> None:
        sb.configure(latency_ms=150)
        started = time.monotonic()
        assert send(client).status_code == 200
        assert time.monotonic() - started >= 0.15

    def test_concurrent_latency_does_not_serialise(self, sb: Sandbox) -> None:
        latency_s = 0.2
        sb.configure(latency_ms=latency_s * 1000, jitter_ms=20)

        async def burst() -> tuple[float, list[int]]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=sb.url, headers=AUTH, limits=limits, timeout=30) as c:
                started = time.monotonic()
                resps = await asyncio.gather(*(c.post("/v2/messages", json=message()) for _ in range(50)))
                return time.monotonic() - started, [r.status_code for r in resps]

        elapsed, statuses = asyncio.run(burst())
        assert statuses == [200] * 50
        assert latency_s <= elapsed < 10 * latency_s  # serialised would be 50 x 0.2 s = 10 s
        assert sb.ledger.accepted == 50


# Control API and in-process API --------------------------------------------------------------------


class TestControl:
    def test_health(self, sb: Sandbox) -> None:
        resp = httpx.get(f"{sb.url}/_sandbox/health")
        assert (resp.status_code, resp.json()) == (200, {"status": "ok"})

    def test_config_over_http(self, sb: Sandbox, client: httpx.Client) -> None:
        resp = httpx.post(f"{sb.url}/_sandbox/config", json={"latency_ms": 5, "rules": {TO: "blocked"}, "rate_429": 0.0})
        assert resp.status_code == 200
        assert resp.json()["config"]["latency_ms"] == 5
        assert sb.config.latency_ms == 5
        assert send(client).status_code == 409
        assert httpx.get(f"{sb.url}/_sandbox/config").json()["config"]["rules"] == {TO: "blocked"}

    @pytest.mark.parametrize(
        "body", [b"{bad", b"[]", b'{"rate_5xx": 2}', b'{"nope": 1}', b'{"rules": {"+1555": "bogus"}}', b'{"latency_ms": "x"}']
    )
    def test_bad_config_over_http_is_400_and_changes_nothing(self, sb: Sandbox, body: bytes) -> None:
        before = sb.config
        resp = httpx.post(f"{sb.url}/_sandbox/config", content=body)
        assert resp.status_code == 400
        assert error_of(resp)["code"] == "10015"
        assert sb.config == before

    def test_reset_restores_startup_config_and_clears_ledger(self) -> None:
        startup = SandboxConfig(rules={OTHER: "blocked"}, latency_ms=1)
        with Sandbox(startup) as sb, httpx.Client(base_url=sb.url, headers=AUTH) as c:
            assert send(c).status_code == 200
            sb.configure(rules={TO: "5xx"}, latency_ms=0)
            assert send(c).status_code == 500
            resp = httpx.post(f"{sb.url}/_sandbox/reset")
            assert resp.status_code == 200
            assert sb.config == startup
            summary = httpx.get(f"{sb.url}/_sandbox/ledger").json()
            assert (summary["attempts"], summary["accepted"], summary["by_status"]) == (0, 0, {})
            assert send(c).status_code == 200
            assert send(c, to=OTHER).status_code == 409

    def test_unknown_control_path(self, sb: Sandbox) -> None:
        assert httpx.get(f"{sb.url}/_sandbox/nothing").status_code == 404
        assert httpx.get(f"{sb.url}/_sandbox/reset").status_code == 405

    def test_in_process_configure_returns_new_config(self, sb: Sandbox) -> None:
        cfg = sb.configure(latency_ms=3, allowed_from=[FROM])
        assert (cfg.latency_ms, cfg.allowed_from) == (3, (FROM,))
        assert sb.config is cfg

    def test_stop_is_idempotent_and_frees_the_port(self) -> None:
        sb = Sandbox().start()
        port = sb.port
        sb.stop()
        sb.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=2)


# CLI ---------------------------------------------------------------------------------------------

LISTENING = re.compile(r"telnyx-sandbox listening on (http://127\.0\.0\.1:(\d+))\n")


class TestCli:
    def _start(self, *args: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.telnyx_sandbox", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = LISTENING.fullmatch(line)
        if match is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"unexpected first line {line!r}; stderr: {err}")
        return proc, match.group(1)

    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_serves_and_exits_cleanly_on_signal(self, sig: signal.Signals) -> None:
        proc, url = self._start("--latency-ms", "0", "--rule", f"{OTHER}=blocked", "--allowed-from", FROM, "--seed", "3")
        try:
            with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
                assert c.get("/_sandbox/health").json() == {"status": "ok"}
                ok = send(c)
                assert ok.status_code == 200
                assert send(c, to=OTHER).status_code == 409
                assert send(c, **{"from": "+15550001234"}).status_code == 400
                assert c.get(f"/v2/messages/{ok.json()['data']['id']}").status_code == 200
                assert c.get("/_sandbox/ledger").json()["accepted"] == 1
        finally:
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert out == ""  # nothing after the listening line
        assert "Traceback" not in err
        # never logs phone numbers or bodies
        assert TO not in err and OTHER not in err and "Choir" not in err

    def test_config_file_and_flags(self, tmp_path: Path) -> None:
        cfg = tmp_path / "sandbox.json"
        cfg.write_text(json.dumps({"api_key": "KEY_file", "rules": {TO: "5xx"}, "latency_ms": 1}))
        proc, url = self._start("--config", str(cfg), "--rate-429", "1.0", "--timeout-hold-s", "1")
        try:
            with httpx.Client(base_url=url, headers={"Authorization": "Bearer KEY_file"}, timeout=10) as c:
                assert send(c).status_code == 500  # rule beats rate
                assert send(c, to=OTHER).status_code == 429
                config = c.get("/_sandbox/config").json()["config"]
                assert (config["latency_ms"], config["rate_429"], config["timeout_hold_s"]) == (1, 1.0, 1.0)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=15)
        assert proc.returncode == 0

    def test_bad_flag_value_exits_with_usage_error(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "infra.telnyx_sandbox", "--port", "0", "--rule", f"{TO}=bogus"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert "unknown rule" in proc.stderr
        assert "Traceback" not in proc.stderr
