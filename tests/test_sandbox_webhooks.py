"""The Telnyx sandbox's webhooks, block list and inbound messages, over real HTTP on loopback.

Each test runs an in-process ``Sandbox`` and a small webhook receiver (``ThreadingHTTPServer`` on
127.0.0.1, free port) that records every request and can answer 500 or hang. Signatures are checked
with ``cryptography`` against the sandbox's public key. Tests wait for deliveries with
``Sandbox.wait_webhooks_idle`` and the receiver's condition variable, never with sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from infra.telnyx_sandbox import Sandbox, SandboxConfig, parse_rule
from infra.telnyx_sandbox.blocklist import Keyword, classify_keyword
from infra.telnyx_sandbox.cli import SIGNING_KEY_ENV, build_parser, config_from_args

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Bearer KEY_sandbox"}
CHURCH_A = "+15557770001"
CHURCH_B = "+15557770002"
CHURCH_C = "+15557770003"
MEMBER = "+15551230001"
OTHER = "+15551230002"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
WAIT_S = 5.0
FAST = {"webhook_retry_base_ms": 5.0}  # keep retries quick
HTTP = httpx.Client(timeout=10.0, trust_env=False)  # one client: building one costs ~30 ms


@pytest.fixture(scope="module", autouse=True)
def _close_http_client() -> Iterator[None]:
    yield
    HTTP.close()


# Receiver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def event_type(self) -> str:
        return str(self.json["data"]["event_type"])

    @property
    def attempt(self) -> int:
        return int(self.json["meta"]["attempt"])


class Receiver:
    """A webhook endpoint that records every POST and answers per its knobs."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.cond = threading.Condition()
        self.fail_first = 0  # answer 500 to the first N requests
        self.fail_paths: set[str] = set()  # always answer 500 on these paths
        self.hang_first = 0  # never answer the first N requests (until released)
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length", "0")))
        path = handler.path
        with self.cond:
            index = len(self.hits)
            self.hits.append(Hit(path, {k.lower(): v for k, v in handler.headers.items()}, body, time.monotonic()))
            self.cond.notify_all()
        if index < self.hang_first:
            self.release.wait(WAIT_S)  # the sandbox times out and hangs up; no answer
            return
        status = 500 if index < self.fail_first or path in self.fail_paths else 200
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def wait_for(self, n: int, timeout: float = WAIT_S) -> list[Hit]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.hits) >= n, timeout), f"{len(self.hits)} of {n} hits"
            return list(self.hits)

    def snapshot(self) -> list[Hit]:
        with self.cond:
            return list(self.hits)

    def clear(self) -> None:
        with self.cond:
            self.hits.clear()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


SandboxFactory = Callable[..., Sandbox]


@pytest.fixture
def make_sb() -> Iterator[SandboxFactory]:
    with ExitStack() as stack:

        def make(**config: Any) -> Sandbox:
            return stack.enter_context(Sandbox(SandboxConfig(**{**FAST, **config})))

        yield make


@pytest.fixture
def sb(make_sb: SandboxFactory) -> Sandbox:
    return make_sb()


def send(sb: Sandbox, **fields: Any) -> httpx.Response:
    body = {"from": CHURCH_A, "to": MEMBER, "text": "Choir practice is moved to Thursday.", **fields}
    return HTTP.post(f"{sb.url}/v2/messages", json={k: v for k, v in body.items() if v is not None}, headers=AUTH)


def inbound(sb: Sandbox, text: str, *, from_: str = MEMBER, to: str = CHURCH_A, **extra: Any) -> httpx.Response:
    return HTTP.post(f"{sb.url}/_sandbox/inbound", json={"from": from_, "to": to, "text": text, **extra})


def idle(sb: Sandbox) -> None:
    assert sb.wait_webhooks_idle(WAIT_S), "webhook deliveries did not finish"


def verify(hit: Hit, public_key: str) -> None:
    """Telnyx's algorithm: Ed25519 over f"{telnyx-timestamp}|" + raw body; raises if invalid."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    timestamp = hit.headers["telnyx-timestamp"]
    signature = base64.b64decode(hit.headers["telnyx-signature-ed25519"])
    assert len(signature) == 64
    assert timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
    key.verify(signature, timestamp.encode() + b"|" + hit.body)


def ledger_webhooks(sb: Sandbox) -> dict[str, Any]:
    summary: dict[str, Any] = HTTP.get(f"{sb.url}/_sandbox/ledger").json()
    return dict(summary["webhooks"])


def error_of(resp: httpx.Response) -> dict[str, Any]:
    err: dict[str, Any] = resp.json()["errors"][0]
    return err


# Outbound: message.sent / message.finalized -----------------------------------------------------


class TestDeliveryWebhooks:
    def test_sent_then_finalized_signed_with_telnyx_envelope(self, sb: Sandbox, receiver: Receiver) -> None:
        url = receiver.url()
        resp = send(sb, webhook_url=url)
        assert resp.status_code == 200
        message = resp.json()["data"]
        idle(sb)
        hits = receiver.snapshot()
        assert [h.event_type for h in hits] == ["message.sent", "message.finalized"]
        public_key = HTTP.get(f"{sb.url}/_sandbox/webhook-key").json()["public_key"]
        assert public_key == sb.webhook_public_key
        for hit in hits:
            verify(hit, public_key)
            assert hit.headers["content-type"] == "application/json"
            envelope = hit.json
            assert set(envelope) == {"data", "meta"}
            assert envelope["meta"] == {"attempt": 1, "delivered_to": url}
            data = envelope["data"]
            assert set(data) == {"event_type", "id", "occurred_at", "payload", "record_type"}
            assert data["record_type"] == "event"
            assert uuid.UUID(data["id"]).version == 4
            assert TIMESTAMP.fullmatch(data["occurred_at"])
            payload = data["payload"]
            assert payload["id"] == message["id"]
            assert payload["cost"] == message["cost"]
            assert payload["to"][0]["carrier"] == message["to"][0]["carrier"]
            assert payload["from"] == message["from"]
            assert payload["text"] == message["text"]
            assert payload["webhook_url"] == url
        sent, final = (h.json["data"] for h in hits)
        assert sent["id"] != final["id"]
        assert sent["payload"]["to"][0]["status"] == "sent"
        assert sent["payload"]["completed_at"] is None
        assert final["payload"]["to"][0]["status"] == "delivered"
        assert final["payload"]["errors"] == []
        received = datetime.fromisoformat(message["received_at"])
        sent_at = datetime.fromisoformat(final["payload"]["sent_at"])
        completed_at = datetime.fromisoformat(final["payload"]["completed_at"])
        assert sent_at == datetime.fromisoformat(sent["payload"]["sent_at"])
        assert received < sent_at < completed_at
        assert completed_at - received == timedelta(milliseconds=20)  # finalize_delay_ms, logical time
        assert datetime.fromisoformat(sent["occurred_at"]) <= datetime.fromisoformat(final["occurred_at"])
        summary = ledger_webhooks(sb)
        assert summary["events"] == {"message.finalized": 1, "message.sent": 1}
        assert summary["final_status"] == {"delivered": 1}
        assert (summary["attempts"], summary["succeeded"], summary["failed"]) == (2, 2, 0)
        assert summary["pending"] == 0

    def test_signing_key_configured_or_generated(self, make_sb: SandboxFactory, receiver: Receiver) -> None:
        seed = os.urandom(32)
        expected = base64.b64encode(Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()).decode()
        configured = make_sb(webhook_signing_key=base64.b64encode(seed).decode())
        assert configured.webhook_public_key == expected
        assert HTTP.get(f"{configured.url}/_sandbox/config").json()["config"]["webhook_signing_key"] == "<set>"
        assert send(configured, webhook_url=receiver.url()).status_code == 200
        idle(configured)
        for hit in receiver.snapshot():
            verify(hit, expected)
        configured.configure(webhook_signing_key=None)  # falls back to the instance's generated key
        generated = configured.webhook_public_key
        assert generated != expected
        configured.configure(latency_ms=1)
        assert configured.webhook_public_key == generated
        configured.reset()
        assert configured.webhook_public_key == expected

        plain = make_sb()
        key = plain.webhook_public_key
        assert len(base64.b64decode(key)) == 32
        plain.configure(seed=5)
        plain.reset()
        assert plain.webhook_public_key == key
        assert make_sb().webhook_public_key != key  # per SandboxApp instance

    def test_dlr_rule_sets_final_status_and_errors(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(rules={MEMBER: "dlr:delivery_failed", OTHER: "dlr:delivery_failed:40003"})
        assert send(sb, webhook_url=receiver.url()).status_code == 200
        assert send(sb, to=OTHER, webhook_url=receiver.url()).status_code == 200
        idle(sb)
        finals = {
            h.json["data"]["payload"]["to"][0]["phone_number"]: h.json["data"]["payload"]
            for h in receiver.snapshot()
            if h.event_type == "message.finalized"
        }
        assert finals[MEMBER]["to"][0]["status"] == "delivery_failed"
        [error] = finals[MEMBER]["errors"]
        assert (error["code"], error["title"]) == ("40008", "Undeliverable")
        assert error["detail"]
        assert finals[OTHER]["errors"][0]["code"] == "40003"
        assert finals[MEMBER]["completed_at"] and finals[MEMBER]["sent_at"]
        assert ledger_webhooks(sb)["final_status"] == {"delivery_failed": 2}

    def test_sending_failed_has_no_sent_event(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(final_status="sending_failed")
        assert send(sb, webhook_url=receiver.url()).status_code == 200
        idle(sb)
        [hit] = receiver.snapshot()
        payload = hit.json["data"]["payload"]
        assert hit.event_type == "message.finalized"
        assert payload["to"][0]["status"] == "sending_failed"
        assert payload["sent_at"] is None and payload["completed_at"]
        assert payload["errors"][0]["code"] == "40006"

    def test_delivery_unconfirmed_has_no_errors(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(rules={MEMBER: "dlr:delivery_unconfirmed"})
        send(sb, webhook_url=receiver.url())
        idle(sb)
        final = receiver.snapshot()[-1].json["data"]["payload"]
        assert (final["to"][0]["status"], final["errors"]) == ("delivery_unconfirmed", [])

    def test_drop_after_accept_still_gets_webhooks(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(rules={MEMBER: "drop_after_accept"})
        with pytest.raises(httpx.RemoteProtocolError):
            send(sb, webhook_url=receiver.url())
        idle(sb)
        [entry] = sb.ledger.entries()
        assert [h.json["data"]["payload"]["id"] for h in receiver.snapshot()] == [entry.id, entry.id]


class TestRetries:
    def test_retried_after_500_until_2xx(self, sb: Sandbox, receiver: Receiver) -> None:
        receiver.fail_first = 2
        send(sb, webhook_url=receiver.url())
        idle(sb)
        hits = receiver.snapshot()
        assert [(h.event_type, h.attempt) for h in hits] == [
            ("message.sent", 1),
            ("message.sent", 2),
            ("message.sent", 3),
            ("message.finalized", 1),
        ]
        assert len({h.json["data"]["id"] for h in hits[:3]}) == 1  # one event, three attempts
        assert len({h.json["data"]["occurred_at"] for h in hits[:3]}) == 1
        for hit in hits:
            verify(hit, sb.webhook_public_key)
        # exponential backoff from webhook_retry_base_ms (5 ms, then 10 ms)
        assert hits[1].at - hits[0].at >= 0.004
        assert hits[2].at - hits[1].at >= 0.009
        summary = ledger_webhooks(sb)
        assert (summary["attempts"], summary["succeeded"], summary["failures"]) == (4, 2, {"500": 2})
        assert summary["undelivered"] == 0

    def test_failover_url_after_three_failures(self, sb: Sandbox, receiver: Receiver) -> None:
        receiver.fail_paths = {"/primary"}
        primary, failover = receiver.url("/primary"), receiver.url("/failover")
        send(sb, webhook_url=primary, webhook_failover_url=failover)
        idle(sb)
        seen = [(h.event_type, h.path, h.attempt, h.json["meta"]["delivered_to"]) for h in receiver.snapshot()]
        chain = [("/primary", 1, primary), ("/primary", 2, primary), ("/primary", 3, primary), ("/failover", 4, failover)]
        assert seen == [(event, *step) for event in ("message.sent", "message.finalized") for step in chain]
        summary = ledger_webhooks(sb)
        assert (summary["failures"], summary["succeeded"], summary["undelivered"]) == ({"500": 6}, 2, 0)

    def test_gives_up_after_every_url_fails(self, sb: Sandbox, receiver: Receiver) -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}/gone"
        receiver.fail_paths = {"/primary"}
        sb.configure(final_status="expired")  # one event only
        send(sb, webhook_url=receiver.url("/primary"), webhook_failover_url=dead)
        idle(sb)
        assert [h.attempt for h in receiver.snapshot()] == [1, 2, 3]
        summary = ledger_webhooks(sb)
        assert summary["failures"] == {"500": 3, "connect_error": 3}
        assert (summary["attempts"], summary["undelivered"]) == (6, 1)

    def test_no_answer_within_timeout_is_retried(self, sb: Sandbox, receiver: Receiver) -> None:
        receiver.hang_first = 1
        sb.configure(webhook_timeout_s=0.5)
        started = time.monotonic()
        assert send(sb, webhook_url=receiver.url()).status_code == 200
        assert time.monotonic() - started < 0.5  # the send answer never waits for webhooks
        idle(sb)
        hits = receiver.snapshot()
        assert [(h.event_type, h.attempt) for h in hits] == [("message.sent", 1), ("message.sent", 2), ("message.finalized", 1)]
        assert hits[1].at - hits[0].at >= 0.45  # webhook_timeout_s, give or take thread scheduling
        assert ledger_webhooks(sb)["failures"] == {"timeout": 1}


class TestInjectedFaults:
    def test_duplicate_rate_one_delivers_each_event_twice(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(webhook_duplicate_rate=1.0)
        send(sb, webhook_url=receiver.url())
        idle(sb)
        hits = receiver.snapshot()
        assert [h.event_type for h in hits] == ["message.sent"] * 2 + ["message.finalized"] * 2
        for first, again in (hits[0:2], hits[2:4]):
            assert first.json["data"] == again.json["data"]  # same id, occurred_at, payload
            assert again.attempt == 1
            verify(again, sb.webhook_public_key)
        assert ledger_webhooks(sb)["duplicates"] == 2

    def test_reorder_rate_one_delivers_finalized_first(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(webhook_reorder_rate=1.0)
        send(sb, webhook_url=receiver.url())
        idle(sb)
        final, sent = (h.json["data"] for h in receiver.snapshot())
        assert (final["event_type"], sent["event_type"]) == ("message.finalized", "message.sent")
        # occurred_at still tells the true order
        assert datetime.fromisoformat(sent["occurred_at"]) < datetime.fromisoformat(final["occurred_at"])
        assert ledger_webhooks(sb)["reordered"] == 1

    def test_fail_rate_is_retried_and_reproducible_with_seed(self, make_sb: SandboxFactory, receiver: Receiver) -> None:
        sb = make_sb(webhook_fail_rate=0.5, seed=11, webhook_retry_base_ms=1.0, webhook_delay_ms=0.0, finalize_delay_ms=0.0)

        def run() -> dict[str, list[tuple[str, int]]]:
            for i in range(6):
                assert send(sb, text=f"m{i}", webhook_url=receiver.url()).status_code == 200
            idle(sb)
            pattern: dict[str, list[tuple[str, int]]] = {}
            for hit in receiver.snapshot():
                pattern.setdefault(hit.json["data"]["payload"]["text"], []).append((hit.event_type, hit.attempt))
            return pattern

        first = run()
        summary = ledger_webhooks(sb)
        assert summary["failures"].get("injected", 0) > 0
        assert set(summary["failures"]) == {"injected"}
        assert summary["attempts"] == summary["succeeded"] + summary["failures"]["injected"]
        # an injected failure is never sent: the first attempt the receiver sees is sometimes 2 or 3
        assert any(attempts[0][1] > 1 for attempts in first.values())
        sb.reset()
        receiver.clear()
        assert run() == first


class TestWhenWebhooksAreSent:
    def test_no_webhook_url_means_no_webhooks(self, sb: Sandbox, receiver: Receiver) -> None:
        assert send(sb).status_code == 200
        assert HTTP.get(f"{sb.url}/_sandbox/webhooks/pending").json() == {"pending": 0}
        assert sb.app.webhooks_idle()
        sb.configure(webhooks=False)
        assert send(sb, webhook_url=receiver.url("/off")).status_code == 200
        assert sb.app.webhooks_pending == 0
        sb.configure(webhooks=True, default_webhook_url=receiver.url("/profile"))
        assert send(sb, use_profile_webhooks=False).status_code == 200
        assert sb.app.webhooks_pending == 0
        # a marker message: once its events arrived, anything the others had sent would have too
        marker = send(sb, webhook_url=receiver.url("/marker")).json()["data"]["id"]
        idle(sb)
        hits = receiver.snapshot()
        assert [(h.path, h.json["data"]["payload"]["id"]) for h in hits] == [("/marker", marker)] * 2
        assert ledger_webhooks(sb)["events"] == {"message.finalized": 1, "message.sent": 1}

    def test_profile_default_url_and_its_place_in_the_chain(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(default_webhook_url=receiver.url("/profile"), final_status="expired")
        send(sb)
        idle(sb)
        assert [(h.path, h.attempt) for h in receiver.snapshot()] == [("/profile", 1)]
        receiver.clear()
        receiver.fail_paths = {"/own"}
        send(sb, webhook_url=receiver.url("/own"))
        idle(sb)
        assert [(h.path, h.attempt) for h in receiver.snapshot()] == [("/own", 1), ("/own", 2), ("/own", 3), ("/profile", 4)]

    def test_reset_cancels_pending_and_clears_counts_and_blocks(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(finalize_delay_ms=60_000)
        send(sb, webhook_url=receiver.url())
        receiver.wait_for(1)  # message.sent arrived; message.finalized waits a minute
        assert HTTP.get(f"{sb.url}/_sandbox/webhooks/pending").json() == {"pending": 1}
        assert not sb.app.webhooks_idle()
        assert not sb.wait_webhooks_idle(0.05)
        sb.block(CHURCH_A, MEMBER)
        assert HTTP.post(f"{sb.url}/_sandbox/reset").status_code == 200
        assert sb.wait_webhooks_idle(0)
        assert HTTP.get(f"{sb.url}/_sandbox/webhooks/pending").json() == {"pending": 0}
        summary = ledger_webhooks(sb)
        assert (summary["events"], summary["attempts"], summary["pending"]) == ({}, 0, 0)
        assert HTTP.get(f"{sb.url}/_sandbox/blocks").json() == {"blocks": []}
        assert sb.config.finalize_delay_ms == 20.0

    def test_too_many_pending_are_dropped_and_counted(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(webhook_max_pending=1, finalize_delay_ms=60_000)
        send(sb, webhook_url=receiver.url())
        send(sb, webhook_url=receiver.url())
        assert sb.app.webhooks_pending == 1
        assert ledger_webhooks(sb)["dropped"] == 1


# Inbound ------------------------------------------------------------------------------------------


class TestInbound:
    def test_message_received_webhook(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(inbound_webhook_url=receiver.url("/inbound"))
        resp = inbound(sb, "Amen! See you Sunday")
        assert resp.status_code == 200
        data = resp.json()["data"]
        assert data["record_type"] == "message"
        assert data["direction"] == "inbound"
        assert uuid.UUID(data["id"])
        assert data["type"] == "SMS"
        assert data["messaging_profile_id"] == sb.config.messaging_profile_id
        assert data["from"]["phone_number"] == MEMBER
        assert data["from"]["status"] == "webhook_delivered"
        assert {"carrier", "line_type"} <= set(data["from"])
        [to] = data["to"]
        assert (to["phone_number"], to["status"]) == (CHURCH_A, "webhook_delivered")
        assert {"carrier", "line_type"} <= set(to)
        assert data["text"] == "Amen! See you Sunday"
        assert data["media"] == []
        assert (data["encoding"], data["parts"]) == ("GSM-7", 1)
        assert TIMESTAMP.fullmatch(data["received_at"])
        assert data["completed_at"] is None
        assert data["cost"]["currency"] == "USD" and isinstance(data["cost"]["amount"], str)
        assert data["is_spam"] is False
        assert data["autoresponse_type"] is None
        idle(sb)
        [hit] = receiver.snapshot()
        verify(hit, sb.webhook_public_key)
        assert hit.path == "/inbound"
        assert hit.json["data"]["event_type"] == "message.received"
        assert hit.json["data"]["payload"] == data
        assert hit.json["meta"] == {"attempt": 1, "delivered_to": receiver.url("/inbound")}
        assert sb.ledger.inbound == 1
        assert ledger_webhooks(sb)["events"] == {"message.received": 1}

    def test_mms_and_retries(self, sb: Sandbox, receiver: Receiver) -> None:
        receiver.fail_first = 1
        sb.configure(inbound_webhook_url=receiver.url())
        urls = ["https://cdn.example.test/choir.jpg", "https://cdn.example.test/x"]
        data = inbound(sb, "", media_urls=urls).json()["data"]
        assert data["type"] == "MMS"
        assert data["media"] == [
            {"url": urls[0], "content_type": "image/jpeg", "size": None, "hash_sha256": None},
            {"url": urls[1], "content_type": None, "size": None, "hash_sha256": None},
        ]
        idle(sb)
        assert [h.attempt for h in receiver.snapshot()] == [1, 2]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("HELP", "HELP"),
            ("info", "HELP"),
            (" Stop \n", "STOP"),
            ("stop \t all", "STOP"),
            ("Unsubscribe", "STOP"),
            ("UNSTOP", "START"),
            ("start", "START"),
            ("yes", None),
            ("please stop", None),
            ("STOP.", None),
        ],
    )
    def test_autoresponse_type(self, sb: Sandbox, receiver: Receiver, text: str, expected: str | None) -> None:
        sb.configure(inbound_webhook_url=receiver.url())
        assert inbound(sb, text).json()["data"]["autoresponse_type"] == expected
        assert sb.ledger.autoresponses() == ({expected: 1} if expected else {})
        blocks_before = HTTP.get(f"{sb.url}/_sandbox/blocks").json()
        sb.configure(autorespond=False)
        assert inbound(sb, text).json()["data"]["autoresponse_type"] is None
        assert sb.ledger.autoresponses() == ({expected: 1} if expected else {})
        assert HTTP.get(f"{sb.url}/_sandbox/blocks").json() == blocks_before  # no block rule made or lifted
        idle(sb)

    @pytest.mark.parametrize(
        ("body", "code", "pointer"),
        [
            ({"from": "15551230001", "to": CHURCH_A, "text": "hi"}, "10016", "/from"),
            ({"from": MEMBER, "to": "church", "text": "hi"}, "10016", "/to"),
            ({"to": CHURCH_A, "text": "hi"}, "10004", "/from"),
            ({"from": MEMBER, "to": CHURCH_A}, "40316", "/text"),
            ({"from": MEMBER, "to": CHURCH_A, "text": 5}, "10015", "/text"),
            ({"from": MEMBER, "to": CHURCH_A, "text": "x", "media_urls": "u"}, "10015", "/media_urls"),
        ],
    )
    def test_invalid_inbound_is_400(self, sb: Sandbox, receiver: Receiver, body: dict[str, Any], code: str, pointer: str) -> None:
        sb.configure(inbound_webhook_url=receiver.url())
        resp = HTTP.post(f"{sb.url}/_sandbox/inbound", json=body)
        assert resp.status_code == 400
        err = error_of(resp)
        assert (err["code"], err["source"]["pointer"]) == (code, pointer)
        assert sb.ledger.inbound == 0

    def test_no_inbound_url_is_409_and_changes_nothing(self, sb: Sandbox) -> None:
        resp = inbound(sb, "STOP")
        assert resp.status_code == 409
        assert "inbound_webhook_url" in error_of(resp)["detail"]
        assert sb.blocks() == []
        assert HTTP.post(f"{sb.url}/_sandbox/inbound", content=b"{bad").status_code == 400
        assert HTTP.get(f"{sb.url}/_sandbox/inbound").status_code == 405


# Block list ---------------------------------------------------------------------------------------


class TestBlockList:
    def test_stop_blocks_that_profile_only_and_start_lifts(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(inbound_webhook_url=receiver.url())
        assert inbound(sb, "STOP").json()["data"]["autoresponse_type"] == "STOP"
        blocked = send(sb)
        assert blocked.status_code == 409
        err = error_of(blocked)
        assert (err["code"], err["title"]) == ("40300", "Blocked due to STOP message")
        assert send(sb, **{"from": CHURCH_B}).status_code == 200  # another profile
        assert send(sb, to=OTHER).status_code == 200  # another member
        assert HTTP.get(f"{sb.url}/_sandbox/blocks").json() == {"blocks": [{"profile": CHURCH_A, "number": MEMBER}]}
        assert inbound(sb, "yes").status_code == 200  # YES is not a Telnyx opt-in keyword
        assert send(sb).status_code == 409
        assert inbound(sb, "Start").json()["data"]["autoresponse_type"] == "START"
        assert send(sb).status_code == 200
        assert sb.blocks() == []
        assert sb.ledger.by_code() == {"40300": 2}
        assert sb.ledger.accepted == 3
        idle(sb)

    @pytest.mark.parametrize("keyword", ["STOPALL", "stop all", "UNSUBSCRIBE", "cancel", "End", "QUIT"])
    def test_every_stop_keyword_blocks(self, sb: Sandbox, receiver: Receiver, keyword: str) -> None:
        sb.configure(inbound_webhook_url=receiver.url())
        inbound(sb, keyword)
        assert send(sb).status_code == 409
        inbound(sb, "UNSTOP")
        assert send(sb).status_code == 200
        idle(sb)

    def test_number_profiles_share_blocks(self, sb: Sandbox, receiver: Receiver) -> None:
        sb.configure(inbound_webhook_url=receiver.url(), number_profiles={CHURCH_A: "grace", CHURCH_B: "grace"})
        data = inbound(sb, "STOP", to=CHURCH_B).json()["data"]
        assert data["messaging_profile_id"] == "grace"
        assert send(sb, **{"from": CHURCH_A}).status_code == 409
        assert send(sb, **{"from": CHURCH_B}).status_code == 409
        assert send(sb, **{"from": CHURCH_C}).status_code == 200
        assert sb.blocks() == [{"profile": "grace", "number": MEMBER}]
        inbound(sb, "START", to=CHURCH_A)
        assert send(sb, **{"from": CHURCH_B}).status_code == 200
        idle(sb)

    def test_control_endpoints(self, sb: Sandbox) -> None:
        body = {"from": CHURCH_A, "to": MEMBER}
        added = HTTP.post(f"{sb.url}/_sandbox/blocks", json=body).json()
        assert added == {"changed": True, "blocks": [{"profile": CHURCH_A, "number": MEMBER}]}
        assert HTTP.post(f"{sb.url}/_sandbox/blocks", json=body).json()["changed"] is False
        assert send(sb).status_code == 409
        removed = HTTP.post(f"{sb.url}/_sandbox/blocks/remove", json=body).json()
        assert removed == {"changed": True, "blocks": []}
        assert HTTP.post(f"{sb.url}/_sandbox/blocks/remove", json=body).json()["changed"] is False
        assert send(sb).status_code == 200
        assert sb.block(CHURCH_B, MEMBER) is True
        assert send(sb, **{"from": CHURCH_B}).status_code == 409
        assert sb.unblock(CHURCH_B, MEMBER) is True
        bad = HTTP.post(f"{sb.url}/_sandbox/blocks", json={"from": CHURCH_A, "to": "member"})
        assert (bad.status_code, error_of(bad)["code"]) == (400, "40310")
        assert HTTP.post(f"{sb.url}/_sandbox/blocks", json={"to": MEMBER}).status_code == 400
        assert HTTP.post(f"{sb.url}/_sandbox/blocks", content=b"[]").status_code == 400
        assert HTTP.get(f"{sb.url}/_sandbox/blocks/remove").status_code == 405


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("STOP", Keyword.STOP),
        ("  stopall ", Keyword.STOP),
        ("Stop\u00a0All", None),  # non-ASCII text is never a keyword
        ("STOP  ALL", Keyword.STOP),
        ("quit", Keyword.STOP),
        ("unstop", Keyword.START),
        ("INFO", Keyword.HELP),
        ("YES", None),
        ("", None),
        (None, None),
        ("stop it", None),
        ("\u017ftop", None),  # long s upper-cases to S; not a keyword
    ],
)
def test_classify_keyword(text: str | None, keyword: Keyword | None) -> None:
    assert classify_keyword(text) is keyword


# Config and CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook_signing_key": "not base64!"},
        {"webhook_signing_key": base64.b64encode(b"x" * 16).decode()},
        {"final_status": "lost"},
        {"rules": {MEMBER: "dlr:bogus"}},
        {"rules": {MEMBER: "dlr:delivered:40008"}},
        {"rules": {MEMBER: "dlr:delivery_failed:99999"}},
        {"default_webhook_url": "ftp://example.test/x"},
        {"inbound_webhook_url": "not a url"},
        {"webhook_attempts": 0},
        {"webhook_timeout_s": 0},
        {"webhook_duplicate_rate": 1.5},
        {"webhook_delay_ms": -1},
        {"webhooks": "yes"},
        {"number_profiles": {CHURCH_A: ""}},
    ],
)
def test_invalid_webhook_config_is_rejected(sb: Sandbox, changes: dict[str, Any]) -> None:
    before = sb.config
    with pytest.raises(ValueError):
        sb.configure(**changes)
    resp = HTTP.post(f"{sb.url}/_sandbox/config", json=changes)
    assert resp.status_code == 400
    assert sb.config == before


def test_config_over_http_and_rule_parsing(sb: Sandbox) -> None:
    changes = {"final_status": "delivery_failed", "number_profiles": {CHURCH_A: "p"}, "webhook_attempts": 2, "webhooks": False}
    config = HTTP.post(f"{sb.url}/_sandbox/config", json=changes).json()["config"]
    assert {k: config[k] for k in changes} == changes
    rule = parse_rule("dlr:expired:40005")
    assert (rule.status, rule.code) == ("expired", "40005")
    assert parse_rule("dlr:delivered").code is None


def test_cli_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env_seed, flag_seed = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    monkeypatch.setenv(SIGNING_KEY_ENV, env_seed)
    args = [
        "--default-webhook-url",
        "http://127.0.0.1:9/p",
        "--inbound-webhook-url",
        "http://127.0.0.1:9/i",
        "--finalize-delay-ms",
        "7",
        "--no-webhooks",
        "--number-profile",
        f"{CHURCH_A}=grace",
        "--rule",
        f"{MEMBER}=dlr:delivery_failed",
    ]
    config = config_from_args(build_parser().parse_args(args))
    assert config.webhook_signing_key == env_seed
    assert (config.default_webhook_url, config.inbound_webhook_url) == ("http://127.0.0.1:9/p", "http://127.0.0.1:9/i")
    assert (config.finalize_delay_ms, config.webhooks, config.number_profiles) == (7.0, False, {CHURCH_A: "grace"})
    assert config_from_args(build_parser().parse_args(["--webhook-signing-key", flag_seed])).webhook_signing_key == flag_seed
    assert config_from_args(build_parser().parse_args([])).webhooks is True


def test_cli_prints_public_key_on_request() -> None:
    seed = os.urandom(32)
    expected = base64.b64encode(Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()).decode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.telnyx_sandbox", "--host", "127.0.0.1", "--port", "0", "--print-webhook-key"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, SIGNING_KEY_ENV: base64.b64encode(seed).decode()},
    )
    try:
        assert proc.stdout is not None
        listening = re.fullmatch(r"telnyx-sandbox listening on (http://127\.0\.0\.1:\d+)\n", proc.stdout.readline())
        assert listening is not None
        assert proc.stdout.readline() == f"telnyx-sandbox webhook public key: {expected}\n"
        assert HTTP.get(f"{listening.group(1)}/_sandbox/webhook-key").json() == {"public_key": expected}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert out == "" and "Traceback" not in err
