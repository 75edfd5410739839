"""A small, fast HTTP/1.1 server protocol on ``asyncio.Protocol``.

Supports what Telnyx clients use: keep-alive (HTTP/1.1 default, ``Connection: close`` honoured),
``Content-Length`` bodies, and pipelining (answers are written in request order). No chunked request
bodies (answered 411), no ``Expect: 100-continue``.

The handler decides synchronously and returns ``(delay_s, action)``. With no delay and a plain
``Response`` (the common case) the answer is written straight from ``data_received``; otherwise a
task sleeps, then answers, closes (``Close``) or holds the connection silent (``Hold``). While that
task runs, later pipelined requests on the same connection wait, so order is kept; other
connections are unaffected, which is what lets many slow requests be in flight at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["CLOSE", "Action", "Close", "ConnectionTracker", "Handler", "Hold", "HttpProtocol", "Request", "Response"]

MAX_HEAD_BYTES = 64 * 1024
_log = logging.getLogger(__name__)
_INTERNAL_ERROR = b'{"errors":[{"code":"10007","title":"Unexpected error","detail":"An unexpected error occurred."}]}'
_HEAD_END = b"\r\n\r\n"


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    # Extra header lines, already encoded, each ending in CRLF.
    extra_headers: bytes = b""
    content_type: bytes = b"application/json"


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection without answering."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep the connection open and silent for ``seconds``, then close it without answering."""

    seconds: float


CLOSE = Close()
Action = Response | Close | Hold
Handler = Callable[[Request], tuple[float, Action]]

_STATUS_LINES: dict[int, bytes] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode()


class ConnectionTracker:
    """The open connections and their in-flight tasks, so a server can close them all on stop."""

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class HttpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, tracker: ConnectionTracker, max_body_bytes: Callable[[], int]) -> None:
        self._handler = handler
        self._tracker = tracker
        self._max_body_bytes = max_body_bytes
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._paused = False  # the transport's write buffer is full
        self._reading_paused = False
        self._closed = False

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._tracker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._tracker.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None and not self._paused:
            self._process()
        if self._transport is not None and not self._reading_paused and len(self._buf) > MAX_HEAD_BYTES + self._max_body_bytes():
            # A busy connection whose client keeps pipelining: stop reading until we catch up.
            self._reading_paused = True
            self._transport.pause_reading()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._task is None:
            self._process()

    # Internals -------------------------------------------------------------------------------

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _process(self) -> None:
        """Handle every complete request in the buffer, in order, until one needs a task."""
        buf = self._buf
        while not self._closed and not self._paused:
            end = buf.find(_HEAD_END)
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._fail(431, b'{"errors":[{"code":"10015","title":"Bad Request","detail":"Headers too large."}]}')
                else:
                    self._resume_reading()
                return
            parsed = _parse_head(bytes(buf[:end]))
            if parsed is None:
                self._fail(400, b'{"errors":[{"code":"10015","title":"Bad Request","detail":"Malformed request."}]}')
                return
            method, target, keep_alive, headers = parsed
            if b"transfer-encoding" in headers:
                self._fail(411, b'{"errors":[{"code":"10015","title":"Bad Request","detail":"Send a Content-Length body."}]}')
                return
            length_raw = headers.get(b"content-length", b"0")
            if not length_raw.isdigit():
                self._fail(400, b'{"errors":[{"code":"10015","title":"Bad Request","detail":"Bad Content-Length."}]}')
                return
            length = int(length_raw)
            limit = self._max_body_bytes()
            if length > limit:
                detail = f"The request body exceeds {limit} bytes.".encode()
                self._fail(413, b'{"errors":[{"code":"10015","title":"Bad Request","detail":"' + detail + b'"}]}')
                return
            start = end + 4
            if len(buf) < start + length:
                self._resume_reading()
                return
            body = bytes(buf[start : start + length])
            del buf[: start + length]
            path, _, query = target.partition("?")
            try:
                delay, action = self._handler(Request(method, path, query, headers, body))
            except Exception as exc:  # a bug in the sandbox: answer like Telnyx would, keep serving
                _log.error("request handler failed: %s", type(exc).__name__)
                delay, action = 0.0, Response(500, _INTERNAL_ERROR)
            if delay <= 0.0 and type(action) is Response:
                self._write(action, keep_alive)
                continue
            task = asyncio.get_running_loop().create_task(self._deferred(delay, action, keep_alive))
            self._task = task
            self._tracker.tasks.add(task)
            task.add_done_callback(self._task_done)
            return

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = False
            self._transport.resume_reading()

    async def _deferred(self, delay: float, action: Action, keep_alive: bool) -> None:
        if delay > 0.0:
            await asyncio.sleep(delay)
        if isinstance(action, Response):
            self._write(action, keep_alive)
            return
        if isinstance(action, Hold):
            await asyncio.sleep(action.seconds)
        if self._transport is not None:
            self._transport.close()
        self._closed = True

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tracker.tasks.discard(task)
        if self._task is task:
            self._task = None
        if task.cancelled() or self._closed:
            return
        if task.exception() is not None:
            _log.error("deferred response failed: %s", type(task.exception()).__name__)
            self.abort()
            return
        if self._buf and not self._paused:
            self._process()

    def _write(self, response: Response, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        body = response.body
        head = b"".join(
            (
                _status_line(response.status),
                b"Content-Type: ",
                response.content_type,
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                response.extra_headers,
                b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
            )
        )
        transport.write(head + body)
        if not keep_alive:
            transport.close()
            self._closed = True

    def _fail(self, status: int, body: bytes) -> None:
        self._write(Response(status, body), keep_alive=False)


def _parse_head(head: bytes) -> tuple[str, str, bool, dict[bytes, bytes]] | None:
    """(method, target, keep_alive, headers) or None when the head is malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    # HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told to keep.
    keep_alive = connection == b"keep-alive" if parts[2] == b"HTTP/1.0" else connection != b"close"
    try:
        return parts[0].decode("ascii"), parts[1].decode("ascii"), keep_alive, headers
    except UnicodeDecodeError:
        return None
