"""The carrier client, end to end against the real Telnyx sandbox, plus the pure classification table.

Network tests run an in-process ``Sandbox`` (its own thread and loop) and drive ``TelnyxClient``
from ``asyncio.run``; nothing of ours is mocked. Where the sandbox cannot produce a condition
(connect refused/timeout, TLS, a malformed answer) a real socket or a tiny real server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import psutil
import pytest

from common.carrier import (
    CODE_TABLE,
    CarrierResult,
    OutboundMessage,
    TelnyxClient,
    classify,
    classify_exception,
    classify_response,
    retry_after_from_headers,
    safe_detail,
)
from common.carrier.errors import MAX_RETRY_AFTER_S, seconds_until_midnight_utc
from common.carrier.transport import open_stream
from infra.telnyx_sandbox import Sandbox, SandboxConfig

KEY = "KEY_sandbox"
FROM = "+15557770000"
TO = "+15551230001"
WEBHOOK = "https://hooks.example.test/telnyx"
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def msg(to: str = TO, text: str = "Choir practice moves to Thursday.", **kw: Any) -> OutboundMessage:
    message_id = kw.pop("message_id", str(uuid.uuid4()))
    return OutboundMessage(message_id=message_id, to=to, from_=kw.pop("from_", FROM), text=text, **kw)


def client_for(sb: Sandbox, **kw: Any) -> TelnyxClient:
    kw.setdefault("webhook_url", WEBHOOK)
    return TelnyxClient(sb.url + "/v2", kw.pop("api_key", KEY), **kw)


async def send_one(sb: Sandbox, message: OutboundMessage | None = None, **kw: Any) -> CarrierResult:
    async with client_for(sb, **kw) as client:
        return await client.send(message or msg())


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(timeout_hold_s=5.0)) as sandbox:
        yield sandbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# Success ---------------------------------------------------------------------------------------


def test_sent_carries_provider_id_parts_and_cost(sb: Sandbox) -> None:
    message = msg()
    long_message = msg(to="+15551230002", text="x" * 200)  # GSM-7: 2 parts

    async def main() -> tuple[CarrierResult, CarrierResult]:
        async with client_for(sb) as client:
            return await client.send(message), await client.send(long_message)

    short, long_ = run(main())
    entries = {e.to: e for e in sb.ledger.entries()}
    assert short.outcome == "sent" and short.http_status == 200 and not short.retryable
    assert short.provider_message_id == entries[TO].id
    assert (short.parts, short.cost_amount, short.cost_currency) == (1, "0.0040", "USD")
    assert (long_.parts, long_.cost_amount) == (2, "0.0080")
    assert short.error_code is None and short.maybe_accepted is False and short.config_error is False
    assert sb.ledger.accepted == 2 and sb.ledger.duplicates == 0


def test_sms_never_sends_media_urls_and_webhook_carries_mid(sb: Sandbox) -> None:
    message = msg(message_id="msg 1/ü?x")  # quoted into the query string
    result = run(send_one(sb, message))
    assert result.outcome == "sent"
    [entry] = sb.ledger.entries()
    assert entry.type == "SMS"
    assert entry.media_urls is None  # the field was absent, not an empty list
    assert entry.webhook_url == WEBHOOK + "?mid=msg%201%2F%C3%BC%3Fx"
    body = json.loads(TelnyxClient(sb.url, KEY).encode(msg()))
    assert "media_urls" not in body and body["type"] == "SMS" and "webhook_url" not in body


def test_webhook_base_with_query_gets_ampersand(sb: Sandbox) -> None:
    run(send_one(sb, msg(message_id="abc"), webhook_url=WEBHOOK + "?church=7", messaging_profile_id="prof-1"))
    [entry] = sb.ledger.entries()
    assert entry.webhook_url == WEBHOOK + "?church=7&mid=abc"
    stored = httpx.get(f"{sb.url}/v2/messages/{entry.id}", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert stored["messaging_profile_id"] == "prof-1"


def test_mms_sends_type_mms_media_and_subject(sb: Sandbox) -> None:
    media = ("https://cdn.example.test/flyer.jpg", "https://cdn.example.test/map.png")
    result = run(send_one(sb, msg(text="Picnic flyer", media_urls=media, subject="Picnic")))
    assert result.outcome == "sent"
    [entry] = sb.ledger.entries()
    assert entry.type == "MMS" and entry.media_urls == media
    stored = httpx.get(f"{sb.url}/v2/messages/{entry.id}", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert stored["subject"] == "Picnic" and [m["url"] for m in stored["media"]] == list(media)


def test_a_text_only_mms_is_sent_as_type_mms_without_media_urls(sb: Sandbox) -> None:
    long_text = "Photos from the picnic are on the board in the hall. " * 10  # one MMS part, never split as SMS
    result = run(send_one(sb, msg(text=long_text, mms=True)))
    assert result.outcome == "sent" and result.parts == 1
    [entry] = sb.ledger.entries()
    assert entry.type == "MMS" and entry.media_urls is None
    body = json.loads(TelnyxClient(sb.url, KEY).encode(msg(mms=True)))
    assert body["type"] == "MMS" and "media_urls" not in body


def test_base_url_without_path_means_v2(sb: Sandbox) -> None:
    async def main() -> CarrierResult:
        async with TelnyxClient(sb.url, KEY) as client:
            return await client.send(msg())

    assert run(main()).outcome == "sent"


# Carrier answers -------------------------------------------------------------------------------


def test_blocked_is_opted_out_and_detail_has_no_numbers(sb: Sandbox) -> None:
    sb.configure(rules={TO: "blocked"})
    result = run(send_one(sb))
    assert (result.outcome, result.http_status, result.error_code) == ("opted_out", 409, "40300")
    assert not result.retryable and not result.maybe_accepted and not result.config_error
    assert result.detail and not any(ch.isdigit() for ch in result.detail)
    assert sb.ledger.accepted == 0


def test_invalid_to_is_failed(sb: Sandbox) -> None:
    sb.configure(rules={TO: "invalid"})
    result = run(send_one(sb))
    assert (result.outcome, result.http_status, result.error_code, result.config_error) == ("failed", 400, "40310", False)


def test_malformed_to_is_failed_by_validation(sb: Sandbox) -> None:
    result = run(send_one(sb, msg(to="5551230001")))
    assert (result.outcome, result.http_status, result.error_code) == ("failed", 400, "40310")


def test_from_not_on_profile_is_failed_with_config_flag() -> None:
    with Sandbox(SandboxConfig(allowed_from=("+15550000009",))) as sandbox:
        result = run(send_one(sandbox))
    assert (result.outcome, result.http_status, result.error_code) == ("failed", 400, "40305")
    assert result.config_error is True


def test_wrong_api_key_is_failed_with_config_flag(sb: Sandbox) -> None:
    result = run(send_one(sb, api_key="KEY_wrong"))
    assert (result.outcome, result.http_status, result.error_code) == ("failed", 401, "10009")
    assert result.config_error is True and not result.retryable


def test_429_is_rate_limited_with_retry_after_from_headers(sb: Sandbox) -> None:
    sb.configure(rules={TO: "429"}, ratelimit_reset_s=7)
    result = run(send_one(sb))
    assert (result.outcome, result.http_status, result.error_code) == ("rate_limited", 429, "10011")
    assert result.retry_after_s == 7.0 and result.retryable and not result.maybe_accepted


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_retry(sb: Sandbox, status: int) -> None:
    sb.configure(rules={TO: "5xx"}, status_5xx=status)
    result = run(send_one(sb))
    assert (result.outcome, result.http_status, result.error_code) == ("retry", status, "10007")
    assert not result.maybe_accepted and sb.ledger.accepted == 0


def test_fail_first_then_success_on_one_connection(sb: Sandbox) -> None:
    sb.configure(rules={TO: "fail_first:2"})
    message = msg()

    async def main() -> tuple[list[CarrierResult], Any]:
        async with client_for(sb, max_connections=4) as client:
            results = [await client.send(message) for _ in range(3)]
            return results, client.stats()

    results, stats = run(main())
    assert [r.outcome for r in results] == ["retry", "retry", "sent"]
    assert [r.http_status for r in results] == [503, 503, 200]
    assert sb.ledger.by_status() == {503: 2, 200: 1} and sb.ledger.accepted == 1
    assert stats.connections_opened == 1  # error answers keep the connection


# No answer ---------------------------------------------------------------------------------------


def test_read_timeout_is_retry_maybe_accepted_and_connection_replaced(sb: Sandbox) -> None:
    sb.configure(rules={TO: "timeout"})

    async def main() -> tuple[CarrierResult, float, CarrierResult, Any]:
        async with client_for(sb, max_connections=1, read_timeout_s=0.3) as client:
            started = time.perf_counter()
            timed_out = await client.send(msg())
            elapsed = time.perf_counter() - started
            after = await client.send(msg(to="+15551230002"))
            return timed_out, elapsed, after, client.stats()

    timed_out, elapsed, after, stats = run(main())
    assert (timed_out.outcome, timed_out.error_code, timed_out.maybe_accepted) == ("retry", "timeout", True)
    assert timed_out.http_status is None
    assert 0.25 < elapsed < 3.0  # the client's read timeout, not the sandbox's 5 s hold
    assert sb.ledger.unanswered() == {"timeout": 1}
    assert after.outcome == "sent"
    assert (stats.connections_opened, stats.connections_discarded, stats.connections_open) == (2, 1, 1)


def test_timeout_after_accept_is_maybe_accepted_and_ledger_has_it(sb: Sandbox) -> None:
    sb.configure(rules={TO: "timeout_after_accept"})
    result = run(send_one(sb, read_timeout_s=0.3))
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "timeout", True)
    assert [e.outcome for e in sb.ledger.entries()] == ["timeout_after_accept"]


def test_drop_before_accept_is_retry_maybe_accepted(sb: Sandbox) -> None:
    sb.configure(rules={TO: "drop_before_accept"})
    result = run(send_one(sb))
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "connection_dropped", True)
    assert sb.ledger.accepted == 0 and sb.ledger.unanswered() == {"drop_before_accept": 1}


def test_drop_after_accept_is_maybe_accepted_and_ledger_shows_accepted(sb: Sandbox) -> None:
    sb.configure(rules={TO: "drop_after_accept"})
    result = run(send_one(sb))
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "connection_dropped", True)
    assert [e.outcome for e in sb.ledger.entries()] == ["drop_after_accept"]


def test_broken_connection_is_replaced_and_never_reused(sb: Sandbox) -> None:
    sb.configure(rules={"+15559990000": "drop_after_accept"}, latency_ms=5)

    async def main() -> tuple[list[CarrierResult], Any]:
        async with client_for(sb, max_connections=2) as client:
            results = [await client.send(msg(to=f"+1555123{i:04d}")) for i in range(3)]
            results.append(await client.send(msg(to="+15559990000")))
            right_after = client.stats()  # the broken connection is gone at once, not at next use
            assert (right_after.connections_open, right_after.connections_discarded) == (0, 1)
            # Concurrent sends after the drop: both slots must work.
            results += await asyncio.gather(*(client.send(msg(to=f"+1555124{i:04d}")) for i in range(6)))
            return results, client.stats()

    results, stats = run(main())
    assert [r.outcome for r in results] == ["sent"] * 3 + ["retry"] + ["sent"] * 6
    assert stats.connections_discarded == 1
    assert stats.connections_opened == stats.connections_open + 1 <= 3
    assert stats.in_flight == 0 and stats.connect_failures == 0


def test_idle_connection_closed_by_server_is_replaced_before_use() -> None:
    port = free_port()
    first = Sandbox(port=port).start()

    async def main() -> tuple[CarrierResult, CarrierResult, Any]:
        async with TelnyxClient(first.url + "/v2", KEY, max_connections=1) as client:
            before = await client.send(msg())
            first.stop()  # aborts every open connection: our idle one is now dead
            with Sandbox(port=port) as second:
                after = await client.send(msg())
                assert second.ledger.accepted == 1 and second.ledger.attempts == 1
            return before, after, client.stats()

    try:
        before, after, stats = run(main())
    finally:
        first.stop()
    assert before.outcome == "sent" and after.outcome == "sent"  # not a spurious maybe_accepted drop
    assert (stats.connections_opened, stats.connections_discarded) == (2, 1)


def test_connect_refused_is_retry_not_maybe_accepted() -> None:
    port = free_port()  # closed again: nothing listens

    async def main() -> tuple[CarrierResult, Any]:
        async with TelnyxClient(f"http://127.0.0.1:{port}/v2", KEY, max_connections=2) as client:
            return await client.send(msg()), client.stats()

    result, stats = run(main())
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "connect_error", False)
    assert result.http_status is None
    assert (stats.connect_failures, stats.connections_open, stats.in_flight) == (1, 0, 0)


def test_connect_timeout_is_retry_not_maybe_accepted() -> None:
    # A listener that never accepts, with its backlog filled: further SYNs are dropped.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)

    async def main() -> tuple[CarrierResult, float]:
        async with TelnyxClient(f"http://127.0.0.1:{port}/v2", KEY, connect_timeout_s=0.3) as client:
            started = time.perf_counter()
            result = await client.send(msg())
            return result, time.perf_counter() - started

    try:
        result, elapsed = run(main())
    finally:
        for s in [*fillers, listener]:
            s.close()
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "connect_error", False)
    assert result.detail == "connect timed out"
    assert 0.25 < elapsed < 3.0


# Concurrency -----------------------------------------------------------------------------------


def _sandbox_side_connections(port: int) -> int:
    """Established TCP connections the sandbox holds (server side: local port == sandbox port)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.raddr and c.status == psutil.CONN_ESTABLISHED
    )


def test_200_concurrent_sends_over_50_connections() -> None:
    with Sandbox(SandboxConfig(latency_ms=50)) as sandbox:
        seen: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen.append(_sandbox_side_connections(sandbox.port))
                stop.wait(0.005)

        async def main() -> tuple[list[CarrierResult], float, Any, int]:
            async with client_for(sandbox, max_connections=50) as client:
                started = time.perf_counter()
                results = await asyncio.gather(*(client.send(msg(to=f"+1555200{i:04d}")) for i in range(200)))
                elapsed = time.perf_counter() - started
                return results, elapsed, client.stats(), _sandbox_side_connections(sandbox.port)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results, elapsed, stats, open_at_end = run(main())
        finally:
            stop.set()
            sampler.join()
        assert [r.outcome for r in results].count("sent") == 200
        assert sandbox.ledger.accepted == 200 and sandbox.ledger.duplicates == 0
    assert stats.peak_in_flight == 50 and stats.peak_connections_open == 50
    assert stats.connections_opened == 50 and stats.requests == 200
    assert open_at_end == 50  # keep-alive: every connection ever opened is still open, and only 50
    assert seen and max(seen) <= 50
    assert elapsed >= 4 * 0.05 * 0.9  # 200 sends / 50 at a time = at least four 50 ms rounds


def test_waiters_get_slots_in_turn_and_cancellation_frees_the_slot(sb: Sandbox) -> None:
    sb.configure(latency_ms=200)

    async def main() -> tuple[list[CarrierResult], Any]:
        async with client_for(sb, max_connections=1) as client:
            first = asyncio.create_task(client.send(msg(to="+15551230009")))
            waiting = asyncio.create_task(client.send(msg(to="+15551230008")))
            deadline = time.monotonic() + 5
            while sb.ledger.attempts < 1 and time.monotonic() < deadline:  # the first request is in
                await asyncio.sleep(0.001)
            waiting.cancel()  # a waiter gives up: nothing leaks
            first.cancel()  # the holder is cancelled mid-exchange: its connection is discarded
            for task in (first, waiting):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert client.stats().connections_open == 0  # the mid-exchange connection was closed at once
            sb.configure(latency_ms=0)
            results = await asyncio.gather(*(client.send(msg(to=f"+1555300{i:04d}")) for i in range(3)))
            return results, client.stats()

    results, stats = run(main())
    assert [r.outcome for r in results] == ["sent"] * 3
    assert stats.peak_in_flight == 1 and stats.in_flight == 0
    assert stats.connections_discarded == 1 and stats.connections_opened == 2


def test_slot_handed_to_a_waiter_cancelled_before_it_runs_is_not_lost(sb: Sandbox) -> None:
    sb.configure(latency_ms=20)

    async def main() -> tuple[list[CarrierResult], Any]:
        async with client_for(sb, max_connections=1) as client:
            waiter: asyncio.Task[CarrierResult] | None = None

            async def holder() -> CarrierResult:
                result = await client.send(msg(to="+15551230007"))
                # send() has just handed the slot to the waiter, which has not run yet: cancel it now.
                assert waiter is not None
                waiter.cancel()
                return result

            first = asyncio.create_task(holder())
            while client.stats().in_flight < 1:  # the holder has the slot
                await asyncio.sleep(0)
            waiter = asyncio.create_task(client.send(msg(to="+15551230006")))
            assert (await first).outcome == "sent"
            with pytest.raises(asyncio.CancelledError):
                await waiter
            async with asyncio.timeout(5):  # a leaked slot would make these wait forever
                results = [await client.send(msg(to=f"+1555400{i:04d}")) for i in range(2)]
            return results, client.stats()

    results, stats = run(main())
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert stats.in_flight == 0 and stats.connections_opened == 1


def test_closed_client_refuses_to_send(sb: Sandbox) -> None:
    async def main() -> Any:
        client = client_for(sb)
        assert (await client.send(msg())).outcome == "sent"
        await client.aclose()
        with pytest.raises(RuntimeError):
            await client.send(msg())
        return client.stats()

    assert run(main()).connections_open == 0


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        TelnyxClient("ftp://x/v2", KEY)
    with pytest.raises(ValueError):
        TelnyxClient("http://127.0.0.1:9/v2", "KEY\r\nX: y")
    with pytest.raises(ValueError):
        TelnyxClient("http://127.0.0.1:9/v2", KEY, max_connections=0)


# Odd servers: TLS, garbage, a 200 we cannot read ------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandbox.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def _tls_proxy(upstream_port: int, cert: Path, key: Path) -> asyncio.Server:
    """TLS in front of the sandbox: terminates TLS and pipes bytes to it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)


def test_https_through_tls_and_untrusted_certificate_is_connect_error(sb: Sandbox, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)

    async def main() -> tuple[list[CarrierResult], CarrierResult]:
        proxy = await _tls_proxy(sb.port, cert, key)
        port = proxy.sockets[0].getsockname()[1]
        try:
            trusting = ssl.create_default_context(cafile=str(cert))
            async with TelnyxClient(f"https://127.0.0.1:{port}/v2", KEY, ssl_context=trusting) as client:
                sent = [await client.send(msg()) for _ in range(2)]
            async with TelnyxClient(f"https://127.0.0.1:{port}/v2", KEY) as default_trust:
                untrusted = await default_trust.send(msg())
            return sent, untrusted
        finally:
            proxy.close()
            await proxy.wait_closed()

    sent, untrusted = run(main())
    assert [r.outcome for r in sent] == ["sent", "sent"] and sb.ledger.accepted == 2
    assert (untrusted.outcome, untrusted.error_code, untrusted.maybe_accepted) == ("retry", "connect_error", False)


async def _raw_server(answer: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _send_to_raw(answer: bytes) -> CarrierResult:
    server = await _raw_server(answer)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TelnyxClient(f"http://127.0.0.1:{port}/v2", KEY) as client:
            return await client.send(msg())
    finally:
        server.close()
        await server.wait_closed()


def test_garbage_answer_is_bad_response_maybe_accepted() -> None:
    result = run(_send_to_raw(b"NOT HTTP AT ALL\r\n\r\n"))
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "bad_response", True)


def test_unreadable_200_is_still_sent() -> None:
    result = run(_send_to_raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\noops!"))
    assert (result.outcome, result.error_code, result.provider_message_id) == ("sent", "bad_response", None)


def test_200_cut_short_is_still_sent() -> None:
    result = run(_send_to_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"data\""))
    assert (result.outcome, result.http_status, result.error_code) == ("sent", 200, "bad_response")


def test_read_deadline_bounds_a_dribbling_server() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # the server's pace, not a wait for our side

    async def main() -> tuple[CarrierResult, float]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with TelnyxClient(f"http://127.0.0.1:{port}/v2", KEY, read_timeout_s=0.4) as client:
                started = time.perf_counter()
                result = await client.send(msg())
                return result, time.perf_counter() - started
        finally:
            server.close()
            await server.wait_closed()

    result, elapsed = run(main())
    assert (result.outcome, result.error_code, result.maybe_accepted) == ("retry", "timeout", True)
    assert 0.35 < elapsed < 2.0  # one deadline for the whole answer, not per byte (that would be 5 s+)


def test_stream_sends_nothing_on_a_connection_the_peer_closed() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stream = await open_stream("127.0.0.1", port, timeout=2.0)
        try:
            async with asyncio.timeout(5):
                while not stream.peer_closed:  # the server's close reaches our protocol
                    await asyncio.sleep(0.001)
            assert not stream.usable
            stream.begin_exchange(1.0)
            await stream.write(b"POST /v2/messages HTTP/1.1\r\n\r\n")
            with pytest.raises(httpcore.WriteError):
                await stream.read(65536)
            assert stream.sent is False  # so the result says maybe_accepted=False
        finally:
            stream.close()
            server.close()
            await server.wait_closed()

    run(main())


# classify: the pure code table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "outcome", "config"),
    [
        (409, "40300", "opted_out", False),
        (400, "40300", "opted_out", False),  # one test stub answers 400: the code decides
        (None, "40300", "opted_out", False),
        (429, "10011", "rate_limited", False),
        (429, "40318", "rate_limited", False),
        (429, "40333", "rate_limited", True),
        (429, None, "rate_limited", False),
        (429, "99999", "rate_limited", False),
        (500, "10007", "retry", False),
        (503, None, "retry", False),
        (502, "", "retry", False),
        (408, None, "retry", False),
        *[(None, code, "retry", False) for code in ("40006", "40008", "40002", "40005", "40011", "40014")],
        (400, "40310", "failed", False),
        (400, "40305", "failed", True),
        (400, "10015", "failed", False),
        (400, "40302", "failed", False),
        (400, "40316", "failed", False),
        (400, "40317", "failed", False),
        (401, "10009", "failed", True),
        (401, None, "failed", True),
        (402, None, "failed", True),
        (402, "20100", "failed", True),
        (403, None, "failed", True),
        (422, None, "failed", False),
        (400, None, "failed", False),
        (418, "12345", "failed", False),  # unknown 4xx
        (409, None, "failed", False),
        (None, None, "retry", False),  # unknown
        (None, "77777", "retry", False),
        (302, None, "retry", False),
        (200, None, "sent", False),
        (202, None, "sent", False),
        (None, 40300, "opted_out", False),  # an int code is read as its string
        (None, 40001, "failed", False),
    ],
)
def test_classify_table(status: int | None, code: str | int | None, outcome: str, config: bool) -> None:
    verdict = classify(status, code)
    assert (verdict.outcome, verdict.config_error) == (outcome, config)
    assert verdict.reason and not any(ch.isdigit() for ch in verdict.reason)


def test_code_table_is_strings_and_every_reason_is_safe() -> None:
    for code, verdict in CODE_TABLE.items():
        assert code.isdigit() and len(code) == 5
        assert safe_detail(verdict.reason) == verdict.reason


NOW = 1_800_000_000.0  # a fixed Unix time


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "2.5"}, 2.5),
        ([(b"Retry-After", b"3")], 3.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": format_datetime(dt.datetime.fromtimestamp(NOW + 30, dt.UTC), usegmt=True)}, 30.0),
        ({"x-ratelimit-reset": "12"}, 12.0),  # seconds until reset
        ({"x-ratelimit-reset": str(int(NOW + 45))}, 45.0),  # an epoch timestamp
        ({"x-ratelimit-reset": str(int((NOW + 20) * 1000))}, 20.0),  # epoch milliseconds
        ({"x-ratelimit-reset": str(int(NOW - 100))}, 0.0),  # already past
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "9999999"}, MAX_RETRY_AFTER_S),
        ({"retry-after": "soon", "x-ratelimit-reset": "4"}, 4.0),  # unreadable first, fall through
        ({"retry-after": "nan"}, None),
        ({"x-ratelimit-limit": "100"}, None),
        ({}, None),
    ],
)
def test_retry_after_from_headers(headers: Any, expected: float | None) -> None:
    value = retry_after_from_headers(headers, now=NOW)
    assert value == (pytest.approx(expected) if expected is not None else None)


def _errors(*codes: str, title: str = "Some error") -> bytes:
    return json.dumps({"errors": [{"code": c, "title": title, "detail": "to +15551230001"} for c in codes]}).encode()


def test_classify_response_details() -> None:
    limited = classify_response(429, {"retry-after": "3"}, _errors("10011"), now=NOW)
    assert (limited.outcome, limited.retry_after_s, limited.error_code) == ("rate_limited", 3.0, "10011")

    spend = classify_response(429, {}, _errors("40333"), now=NOW)
    assert spend.outcome == "rate_limited" and spend.config_error
    assert spend.retry_after_s == pytest.approx(seconds_until_midnight_utc(NOW))

    # An opt-out anywhere in errors[] wins.
    opted = classify_response(400, {}, _errors("10015", "40300"))
    assert (opted.outcome, opted.error_code) == ("opted_out", "40300")

    unavailable = classify_response(503, {"retry-after": "2"}, b"<html>busy</html>")
    assert (unavailable.outcome, unavailable.error_code, unavailable.retry_after_s) == ("retry", None, 2.0)
    assert not unavailable.maybe_accepted
    gateway = classify_response(504, {}, b"")
    assert gateway.outcome == "retry" and gateway.maybe_accepted  # a gateway may have passed it on

    unknown = classify_response(418, {}, _errors("12345", title="Odd thing for +1 555 123 0001 (id 98765)"))
    assert unknown.outcome == "failed" and unknown.error_code == "12345"
    assert unknown.detail is not None and "Odd thing" in unknown.detail
    assert not any(ch.isdigit() for ch in unknown.detail)

    sent = classify_response(
        200, {}, json.dumps({"data": {"id": "abc", "parts": 3, "cost": {"amount": 0.012, "currency": "USD"}}}).encode()
    )
    assert (sent.outcome, sent.provider_message_id, sent.parts, sent.cost_amount) == ("sent", "abc", 3, "0.012")
    nullcost = classify_response(200, {}, b'{"data":{"id":"x","parts":1,"cost":null}}')
    assert (nullcost.cost_amount, nullcost.cost_currency) == (None, None)


def test_safe_detail_strips_numbers() -> None:
    assert safe_detail("Messages cannot be sent from '+15557770000' to '+1 (555) 123-0001'") == (
        "Messages cannot be sent from '#' to '#'"
    )
    assert safe_detail("\x00ok\nline") == "ok line"
    assert safe_detail("") is None and safe_detail(None) is None
    assert len(safe_detail("a" * 500) or "") == 120


@pytest.mark.parametrize(
    ("exc", "sent", "peer_closed", "expected"),
    [
        (httpcore.ConnectError("x"), False, False, ("retry", "connect_error", False)),
        (httpcore.ConnectTimeout("x"), False, False, ("retry", "connect_error", False)),
        (httpcore.ReadTimeout("x"), True, False, ("retry", "timeout", True)),
        (httpcore.ReadError("x"), True, True, ("retry", "connection_dropped", True)),
        (httpcore.WriteError("x"), False, True, ("retry", "connection_dropped", False)),
        (httpcore.RemoteProtocolError("x"), True, True, ("retry", "connection_dropped", True)),
        (httpcore.RemoteProtocolError("x"), True, False, ("retry", "bad_response", True)),
        (ConnectionResetError(), True, True, ("retry", "connection_dropped", True)),
        (httpcore.LocalProtocolError("x"), False, False, ("failed", "invalid_request", False)),
    ],
)
def test_classify_exception(exc: BaseException, sent: bool, peer_closed: bool, expected: tuple[str, str, bool]) -> None:
    result = classify_exception(exc, request_sent=sent, peer_closed=peer_closed)
    assert result is not None
    assert (result.outcome, result.error_code, result.maybe_accepted) == expected


def test_classify_exception_leaves_bugs_alone() -> None:
    assert classify_exception(ValueError("bug"), request_sent=True) is None
    assert classify_exception(KeyError("bug"), request_sent=False) is None
