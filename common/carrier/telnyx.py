"""``TelnyxClient``: ``POST /v2/messages`` over keep-alive HTTP/1.1, cheap enough for one process to
drive well over a thousand sends a second.

Design (measured in bench/RESULTS.md, "Carrier client cost"):

- **A free-list of connection slots**, one per allowed connection (``max_connections``). A send
  takes a slot (LIFO, so warm connections are reused first and cold slots stay unopened), does
  one request/response on the slot's connection, and gives the slot back. Concurrency is bounded
  by the slot count: callers beyond it wait in FIFO order, and the client can never have more
  than ``max_connections`` TCP connections open.
- **Each slot owns one bare ``httpcore.AsyncHTTP11Connection``** (h11 underneath), created lazily.
  No ``httpx.AsyncClient`` and no ``httpcore.AsyncConnectionPool``: their per-request pool
  bookkeeping is where the CPU goes (a shared 200-connection ``httpx.AsyncClient`` costs ~5 ms
  CPU per request, a single-connection ``AsyncConnectionPool`` ~0.45 ms, a bare connection ~0.2).
- **The network stream is ours** (``transport.AsyncioStream``, httpcore's public stream interface
  on an ``asyncio.Protocol``): one socket write per request, a read deadline per exchange, and a
  ``sent`` flag that says whether the duplicate window opened.
- **Pre-serialised requests**: the target, origin and constant header tuples are built once; each
  message is ``json.dumps``-ed once, compactly.
- **A broken connection never returns to the free-list**: any failure (timeout, drop, protocol
  error, cancellation) closes it and the slot goes back empty, to reconnect on its next use. An
  idle connection the server closed (EOF seen), one past its keep-alive expiry, or one the server
  asked to close is replaced before use instead of failing a send.

Classification of every answer and failure lives in ``errors.py``; ``send()`` only collects
the facts (status, headers, body, was anything sent, did the peer close).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl
import time
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore

from common import metrics

from .errors import classify_exception, classify_response
from .transport import AsyncioStream, open_stream
from .types import CarrierResult, ClientStats, OutboundMessage

__all__ = ["DEFAULT_USER_AGENT", "MAX_RESPONSE_BYTES", "TelnyxClient"]

DEFAULT_USER_AGENT = "koinonia-carrier/1"
MAX_RESPONSE_BYTES = 1_048_576  # a send answer is ~1.3 KB; anything this big is not Telnyx


class _Slot:
    """One permit to hold one connection. ``conn``/``stream`` are None until first used and after
    the connection was discarded."""

    __slots__ = ("conn", "expires_at", "stream")

    def __init__(self) -> None:
        self.conn: httpcore.AsyncHTTP11Connection | None = None
        self.stream: AsyncioStream | None = None
        self.expires_at = 0.0


class TelnyxClient:
    """Async Telnyx v2 messaging client. One per process; share it between tasks.

    ``base_url`` is ``TELNYX_BASE_URL`` (``https://api.telnyx.com/v2`` or the sandbox's
    ``http://127.0.0.1:8099/v2``); a URL with no path means ``/v2``. ``webhook_url``, when given,
    is the base of every message's ``webhook_url``, with ``mid=<message_id>`` added.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_connections: int = 200,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        webhook_url: str | None = None,
        messaging_profile_id: str | None = None,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if connect_timeout_s <= 0 or read_timeout_s <= 0 or keepalive_expiry_s < 0:
            raise ValueError("timeouts must be > 0 (keepalive_expiry_s >= 0)")
        if not api_key or not api_key.isprintable() or not api_key.isascii():
            raise ValueError("api_key must be non-empty printable ASCII")
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://api.telnyx.com/v2")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not carry a query or fragment")
        secure = parts.scheme == "https"
        default_port = 443 if secure else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        self._ssl_context = (ssl_context or httpcore.default_ssl_context()) if secure else None
        path = parts.path.rstrip("/") or "/v2"
        target = (path + "/messages").encode()
        host_text = f"[{self._host}]" if ":" in self._host else self._host
        host_header = host_text if self._port == default_port else f"{host_text}:{self._port}"
        self._origin = httpcore.Origin(parts.scheme.encode(), self._host.encode(), self._port)
        self._url = httpcore.URL(scheme=parts.scheme.encode(), host=self._host.encode(), port=self._port, target=target)
        self._headers: tuple[tuple[bytes, bytes], ...] = (
            (b"Host", host_header.encode()),
            (b"Authorization", b"Bearer " + api_key.encode()),
            (b"Content-Type", b"application/json"),
            (b"Accept", b"application/json"),
            (b"User-Agent", user_agent.encode()),
        )
        self._webhook_prefix: str | None = None
        if webhook_url:
            self._webhook_prefix = webhook_url + ("&" if "?" in webhook_url else "?") + "mid="
        self._messaging_profile_id = messaging_profile_id or None
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._keepalive_expiry_s = keepalive_expiry_s
        self.max_connections = max_connections

        self._free: list[_Slot] = [_Slot() for _ in range(max_connections)]
        self._waiters: collections.deque[asyncio.Future[_Slot]] = collections.deque()
        self._closed = False
        # Counters (see ClientStats).
        self._open = 0
        self._peak_open = 0
        self._opened = 0
        self._connect_failures = 0
        self._discarded = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._requests = 0

    # Public API ------------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> CarrierResult:
        """Send one message. Returns the classified result; never raises for carrier or network
        problems (cancellation propagates, after the connection is cleaned up)."""
        if self._closed:
            raise RuntimeError("TelnyxClient is closed")
        body = self.encode(message)
        slot = self._free.pop() if self._free and not self._waiters else await self._acquire()
        self._in_flight += 1
        if self._in_flight > self._peak_in_flight:
            self._peak_in_flight = self._in_flight
        started = time.perf_counter()  # after the slot: time waiting for a free connection is ours, not the carrier's
        try:
            result = await self._exchange(slot, body)
            metrics.observe_latency(time.perf_counter() - started, channel="mms" if message.is_mms else "sms")
            return result
        finally:
            self._in_flight -= 1
            self._release(slot)

    def encode(self, message: OutboundMessage) -> bytes:
        """The ``POST /v2/messages`` JSON body for ``message`` (compact, built once per send)."""
        payload: dict[str, Any] = {"from": message.from_, "to": message.to}
        if message.text:
            payload["text"] = message.text
        if message.is_mms:
            if message.media_urls:
                payload["media_urls"] = list(message.media_urls)
            payload["type"] = "MMS"
            if message.subject:
                payload["subject"] = message.subject
        else:
            payload["type"] = "SMS"  # and never a media_urls key: its mere presence means MMS
        if self._messaging_profile_id is not None:
            payload["messaging_profile_id"] = self._messaging_profile_id
        if self._webhook_prefix is not None:
            payload["webhook_url"] = self._webhook_prefix + quote(message.message_id, safe="")
        return json.dumps(payload, separators=(",", ":")).encode()

    def stats(self) -> ClientStats:
        return ClientStats(
            max_connections=self.max_connections,
            connections_open=self._open,
            peak_connections_open=self._peak_open,
            connections_opened=self._opened,
            connect_failures=self._connect_failures,
            connections_discarded=self._discarded,
            in_flight=self._in_flight,
            peak_in_flight=self._peak_in_flight,
            requests=self._requests,
        )

    async def aclose(self) -> None:
        """Close idle connections now; in-flight sends finish and close theirs on return.
        Callers still waiting for a slot get ``RuntimeError``."""
        self._closed = True
        for slot in self._free:
            self._discard(slot)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("TelnyxClient is closed"))

    async def __aenter__(self) -> TelnyxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Slots -----------------------------------------------------------------------------------

    async def _acquire(self) -> _Slot:
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed a slot, then cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self, slot: _Slot) -> None:
        if self._closed:
            self._discard(slot)
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)

    def _discard(self, slot: _Slot) -> None:
        stream = slot.stream
        if stream is None:
            return
        stream.close()
        slot.conn = None
        slot.stream = None
        self._open -= 1
        self._discarded += 1

    # One exchange ----------------------------------------------------------------------------

    async def _connect(self, slot: _Slot) -> httpcore.AsyncHTTP11Connection:
        stream = await open_stream(
            self._host,
            self._port,
            timeout=self._connect_timeout_s,
            ssl_context=self._ssl_context,
        )
        conn = httpcore.AsyncHTTP11Connection(self._origin, stream)
        slot.conn = conn
        slot.stream = stream
        self._opened += 1
        self._open += 1
        if self._open > self._peak_open:
            self._peak_open = self._open
        return conn

    async def _exchange(self, slot: _Slot, body: bytes) -> CarrierResult:
        loop = asyncio.get_running_loop()
        conn = slot.conn
        stream = slot.stream
        if conn is not None and stream is not None and not (stream.usable and conn.is_idle() and loop.time() < slot.expires_at):
            self._discard(slot)  # closed by the server while idle, expired, or not reusable
            conn = None
        if conn is None:
            try:
                conn = await self._connect(slot)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                self._connect_failures += 1
                result = classify_exception(exc, request_sent=False)
                assert result is not None
                return result
        stream = slot.stream
        assert stream is not None
        stream.begin_exchange(self._read_timeout_s)
        request = httpcore.Request(
            b"POST",
            self._url,
            headers=[*self._headers, (b"Content-Length", str(len(body)).encode())],
            content=body,
        )
        self._requests += 1
        status: int | None = None
        try:
            response = await conn.handle_async_request(request)
            status = response.status
            chunks = []
            size = 0
            async for chunk in response.aiter_stream():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise httpcore.RemoteProtocolError("response too large")
                chunks.append(chunk)
            await response.aclose()
        except Exception as exc:
            # Closed before a complete answer (nothing came, or the body was cut), as opposed to
            # an answer that arrived but would not parse.
            sent = stream.sent
            peer_closed = stream.peer_closed and (status is not None or not stream.received)
            self._discard(slot)
            if status is not None and 200 <= status < 300:
                # The status line said accepted; only the body was lost. Retrying would duplicate.
                return CarrierResult(
                    "sent", http_status=status, error_code="bad_response", detail="accepted; response body lost"
                )
            result = classify_exception(exc, request_sent=sent, peer_closed=peer_closed)
            if result is None:
                raise
            return result
        except BaseException:  # cancellation: the connection is mid-exchange, never reuse it
            self._discard(slot)
            raise
        if conn.is_closed():  # the server answered "Connection: close"
            self._discard(slot)
        else:
            slot.expires_at = loop.time() + self._keepalive_expiry_s
        return classify_response(status, response.headers, chunks[0] if len(chunks) == 1 else b"".join(chunks))
