"""Closed-loop HTTP/1.1 users on raw asyncio: one keep-alive connection each, pre-built requests.

Why not an HTTP library: on this 2-core machine the load generator shares the CPU with the server it
measures (and PostgreSQL, Redis, the sandbox and the consumer), so every microsecond it spends is taken
from the figure. httpx costs about 650 us of CPU per request here (bench/carrier_client.py); this costs
tens of microseconds: a request is bytes built before the clock starts, and a response is read only as far
as its status line, ``Content-Length`` and ``Connection``. bench/sandbox_throughput.py's generator is the
same idea for one shared list of requests at full speed; here each user has its own church, mix and think
time, and what it measures is each request's latency by kind.

A user is a closed loop: send one request, read the whole answer, think (``think_s``: uniform between two
bounds; none for a stress run), repeat. The loop's own CPU (the thread the event loop runs on) is measured
and returned, so a report can show that the generator was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

CONNECT_PAUSE_S = 0.05  # after a failed connect, so a refusing server does not become a busy loop
MAX_ERROR_TEXTS = 20


@dataclass(frozen=True)
class UserPlan:
    """What one user sends: a kind picked by weight, then one of that kind's pre-built requests."""

    weights: Sequence[float]  # per kind index (the index into the drive's ``kinds``)
    requests: Sequence[Sequence[bytes]]  # per kind index: complete HTTP/1.1 requests to choose from

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.requests) or not any(self.weights):
            raise ValueError("a weight per kind, and at least one above zero")
        for weight, choices in zip(self.weights, self.requests, strict=True):
            if weight and not choices:
                raise ValueError("a kind with a weight needs at least one request")
        cumulative: list[float] = []
        total = 0.0
        for weight in self.weights:
            total += weight
            cumulative.append(total)
        object.__setattr__(self, "_cumulative", cumulative)

    def pick(self, rng: random.Random) -> tuple[int, bytes]:
        cumulative: list[float] = self._cumulative  # type: ignore[attr-defined]
        kind = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        choices = self.requests[kind]
        return kind, choices[rng.randrange(len(choices))] if len(choices) > 1 else choices[0]


def build_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One complete HTTP/1.1 request (keep-alive is HTTP/1.1's default)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class ProtocolError(Exception):
    """An answer this client does not read (chunked, or no length): counted as an error."""


class _Connection(asyncio.Protocol):
    """One connection, one request in flight; the answer resolves ``waiter``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buf[:end]).split(b"\r\n")
        length: int | None = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                waiter.set_exception(ProtocolError("a chunked answer"))
                return
        status = int(lines[0][9:12])
        if length is None:
            if status in (204, 304):
                length = 0
            else:
                waiter.set_exception(ProtocolError(f"{status} answer without Content-Length"))
                return
        total = end + 4 + length
        if len(self.buf) < total:
            return
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        waiter.set_result((status, body, close))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError(f"connection closed by the server ({exc or 'EOF'})"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[tuple[int, bytes, bool]], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer within {timeout_s:g} s"))


@dataclass
class DriveResult:
    """What the users saw. Latencies and statuses only for requests started inside the measured window."""

    kinds: Sequence[str]
    seconds: float  # the measured window
    latencies_ns: list[list[int]]  # per kind
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: int = 0  # non-2xx/3xx answers and socket errors, in the window
    error_texts: list[str] = field(default_factory=list)  # the first few, in order
    errors_outside_window: int = 0  # the same during the warm-up and after the window closed
    kept: list[tuple[str, int, bytes]] = field(default_factory=list)  # (kind, status, body) of kinds asked for: all phases
    reconnects: int = 0  # connections opened again after the server closed one (or after an error)
    answers: int = 0  # every answer read, warm-up and tail included (what ``loop_cpu_s`` paid for)
    loop_cpu_s: float = 0.0  # CPU of the event loop's thread over the whole drive
    wall_s: float = 0.0  # the whole drive: connect, warm-up, window, last answers

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies_ns)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def drive(
    ports: Sequence[int],
    kinds: Sequence[str],
    plans: Sequence[UserPlan],
    *,
    seconds: float,
    warmup_s: float,
    think_s: tuple[float, float] | None,
    keep_kinds: Sequence[str] = (),
    timeout_s: float = 30.0,
    seed: int = 9,
    progress: Callable[[str], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> DriveResult:
    """Run one user per plan against 127.0.0.1: ``warmup_s`` unmeasured, then ``seconds`` measured. User ``i``
    talks to ``ports[i % len(ports)]`` (several servers: the clients spread evenly, as a load balancer would).

    A user starts no request after the window closes; the answers still in flight then are awaited (each
    under ``timeout_s``) and not counted. With ``think_s`` each user first waits a random part of one think
    time, so the users do not arrive in step.
    """
    loop = asyncio.get_running_loop()
    result = DriveResult(kinds=list(kinds), seconds=seconds, latencies_ns=[[] for _ in kinds])
    keep = {kinds.index(k) for k in keep_kinds}
    cpu0 = time.thread_time()
    started = time.perf_counter()
    window_from = time.perf_counter_ns() + int(warmup_s * 1e9)
    window_to = window_from + int(seconds * 1e9)
    done = 0

    def error(kind: int, started_ns: int, text: str) -> None:
        if window_from <= started_ns < window_to:
            result.errors += 1
            if len(result.error_texts) < MAX_ERROR_TEXTS:
                result.error_texts.append(f"{kinds[kind]}: {text}")
        else:
            result.errors_outside_window += 1
            if len(result.error_texts) < MAX_ERROR_TEXTS:
                result.error_texts.append(f"{kinds[kind]} (outside the window): {text}")

    async def connect(port: int) -> _Connection | None:
        try:
            _, conn = await loop.create_connection(_Connection, "127.0.0.1", port)
        except OSError as exc:
            result.errors += 1
            if len(result.error_texts) < MAX_ERROR_TEXTS:
                result.error_texts.append(f"connect: {exc!r}")
            await asyncio.sleep(CONNECT_PAUSE_S)
            return None
        return conn

    async def user(index: int, plan: UserPlan) -> None:
        nonlocal done
        rng = random.Random(seed * 1_000_003 + index)
        port = ports[index % len(ports)]
        conn: _Connection | None = await connect(port)
        if think_s is not None:
            await asyncio.sleep(rng.uniform(0, think_s[1]))
        try:
            while time.perf_counter_ns() < window_to:
                if conn is None or conn.lost:
                    if conn is not None:
                        result.reconnects += 1
                    conn = await connect(port)
                    if conn is None:
                        continue
                kind, request = plan.pick(rng)
                waiter: asyncio.Future[tuple[int, bytes, bool]] = loop.create_future()
                conn.waiter = waiter
                assert conn.transport is not None
                t0 = time.perf_counter_ns()
                conn.transport.write(request)
                timer = loop.call_later(timeout_s, _expire, waiter, timeout_s)
                try:
                    status, body, close = await waiter
                except (OSError, TimeoutError, ProtocolError, ValueError) as exc:
                    error(kind, t0, repr(exc))
                    conn.close()
                    conn = None
                    result.reconnects += 1
                    continue
                finally:
                    timer.cancel()
                elapsed = time.perf_counter_ns() - t0
                done += 1
                if window_from <= t0 < window_to:
                    result.latencies_ns[kind].append(elapsed)
                    result.statuses[(kinds[kind], status)] += 1
                if not 200 <= status < 400:
                    error(kind, t0, f"{status} {body[:300].decode(errors='replace')}")
                elif kind in keep:
                    result.kept.append((kinds[kind], status, body))
                if close:
                    conn.close()
                    conn = None
                    result.reconnects += 1
                if think_s is not None:
                    await asyncio.sleep(rng.uniform(*think_s))
        finally:
            if conn is not None:
                conn.close()

    async def ticker() -> None:
        last = 0
        step = 1.0 if seconds <= 10 else 5.0
        while True:
            await asyncio.sleep(step)
            if tick is not None:
                tick()
            now = time.perf_counter_ns()
            if progress is not None:
                phase = "warm-up" if now < window_from else ("window" if now < window_to else "finishing")
                at = (now - window_from) / 1e9
                progress(
                    f"    {phase:>9} t={at:+6.1f}s  {done:>8,} answers ({(done - last) / step:,.0f}/s), "
                    f"errors {result.errors + result.errors_outside_window}"
                )
            last = done

    users = [asyncio.ensure_future(user(i, plan)) for i, plan in enumerate(plans)]
    ticking = asyncio.ensure_future(ticker())
    try:
        deadline = warmup_s + seconds + timeout_s + 30.0
        finished, pending = await asyncio.wait(users, timeout=deadline)
        for task in pending:
            task.cancel()
        for task in finished:
            exc = task.exception()
            if exc is not None:
                raise exc
        if pending:
            result.errors += len(pending)
            result.error_texts.append(f"{len(pending)} users still running {deadline:g} s after the start: cancelled")
    finally:
        ticking.cancel()
    result.answers = done
    result.loop_cpu_s = time.thread_time() - cpu0
    result.wall_s = time.perf_counter() - started
    return result
