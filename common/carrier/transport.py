"""An asyncio-native ``httpcore.AsyncNetworkStream`` for ``httpcore.AsyncHTTP11Connection``.

httpcore's default network backend goes through anyio (a cancel scope per read and write); this
one sits directly on an ``asyncio.Protocol`` and does three things the client needs:

- **One write per request.** httpcore writes the head and the body separately; here writes are
  buffered and flushed as one ``transport.write`` when the response is first read (HTTP/1.1
  without pipelining always writes the whole request before reading).
- **A known duplicate window.** ``sent`` turns True when the request bytes are handed to the
  socket. A connection found closed before that point fails without sending anything, so the
  caller can report ``maybe_accepted=False``.
- **One deadline per exchange.** The read timeout starts when the request is flushed and bounds
  the whole answer (a server dribbling bytes cannot hold it open past the deadline), using one
  ``call_later`` timer per wait, only when there is nothing buffered.

TLS is set up by ``open_stream`` itself (``loop.create_connection(ssl=...)``), so ``start_tls``
is not supported.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from typing import Any

import httpcore

__all__ = ["AsyncioStream", "open_stream"]


class _Protocol(asyncio.Protocol):
    __slots__ = ("buffer", "eof", "lost_exc", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False  # the peer closed (FIN) or the connection is gone
        self.lost_exc: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost_exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection. Not safe for concurrent use: one exchange at a time."""

    __slots__ = (
        "_deadline",
        "_loop",
        "_pending",
        "_poll",
        "_protocol",
        "_read_timeout_s",
        "_transport",
        "received",
        "sent",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._loop = loop
        self._transport = transport
        self._protocol = protocol
        # Readability probe of the raw socket: sees a FIN/RST the event loop has not processed yet.
        self._poll: select.poll | None = None
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)
        self._pending: list[bytes] = []
        self._deadline: float | None = None
        self._read_timeout_s: float | None = None
        self.sent = False  # this exchange's request reached the socket
        self.received = False  # this exchange got at least one byte of answer

    # Per exchange ----------------------------------------------------------------------------

    def begin_exchange(self, read_timeout_s: float | None) -> None:
        """Call before each request: resets ``sent``/``received`` and arms this exchange's read timeout."""
        self.sent = False
        self.received = False
        self._deadline = None
        self._read_timeout_s = read_timeout_s
        self._pending.clear()

    @property
    def usable(self) -> bool:
        """Open, and nothing unexpected waiting on it. An idle keep-alive connection the server
        closed shows up as EOF or stray bytes, or, when the event loop has not run since, as a
        readable socket (one ``poll(0)`` syscall, the check httpcore's pool makes too)."""
        protocol = self._protocol
        if protocol.eof or protocol.buffer or self._transport.is_closing():
            return False
        return self._poll is None or not self._poll.poll(0)

    @property
    def peer_closed(self) -> bool:
        return self._protocol.eof

    # httpcore.AsyncNetworkStream ---------------------------------------------------------------

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            self._flush()
        protocol = self._protocol
        if not protocol.buffer and not protocol.eof:
            await self._wait(timeout)
        buffer = protocol.buffer
        if buffer:
            self.received = True
            if len(buffer) <= max_bytes:
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:max_bytes])
                del buffer[:max_bytes]
            return data
        if protocol.lost_exc is not None:
            raise httpcore.ReadError("connection lost")
        return b""

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._pending.clear()
        self._transport.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return bool(self._protocol.buffer) or self._protocol.eof
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return None

    # Internals -------------------------------------------------------------------------------

    def _flush(self) -> None:
        pending = self._pending
        if self._protocol.eof or self._transport.is_closing():
            pending.clear()
            raise httpcore.WriteError("connection closed before the request was sent")
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._transport.write(data)
        self.sent = True
        if self._read_timeout_s is not None:
            self._deadline = self._loop.time() + self._read_timeout_s

    async def _wait(self, timeout: float | None) -> None:
        loop = self._loop
        deadline = self._deadline
        if deadline is not None:
            timeout = deadline - loop.time()
            if timeout <= 0:
                raise httpcore.ReadTimeout("read timed out")
        waiter: asyncio.Future[None] = loop.create_future()
        self._protocol.waiter = waiter
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None
        finally:
            self._protocol.waiter = None
            if timer is not None:
                timer.cancel()


async def open_stream(
    host: str,
    port: int,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncioStream:
    """Connect (and handshake TLS when ``ssl_context`` is given) within ``timeout`` seconds.

    Raises ``httpcore.ConnectTimeout`` or ``httpcore.ConnectError``; nothing has been sent then.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if ssl_context is None:
                transport, protocol = await loop.create_connection(_Protocol, host, port)
            else:
                transport, protocol = await loop.create_connection(
                    _Protocol,
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=server_hostname or host,
                    ssl_handshake_timeout=timeout,
                )
    except TimeoutError:
        raise httpcore.ConnectTimeout("connect timed out") from None
    except OSError as exc:  # refused, unreachable, DNS (socket.gaierror), TLS (ssl.SSLError)
        raise httpcore.ConnectError(type(exc).__name__) from None
    assert isinstance(transport, asyncio.Transport)
    return AsyncioStream(loop, transport, protocol)
