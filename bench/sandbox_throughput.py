"""Throughput of the Telnyx sandbox: ``python bench/sandbox_throughput.py``.

Starts the sandbox CLI as a subprocess (its own process, so its own core), drives
``POST /v2/messages`` from this process with a keep-alive load generator built on raw asyncio
sockets (one request in flight per connection, pre-built request bytes, no HTTP library), and
checks the sandbox ledger afterwards: every request accepted exactly once, no duplicates.

Runs: 3 x N requests at 0 ms latency over 64 connections (median reported), then one run at
50 ms latency over 500 connections to show latency does not serialise requests. The figures are
written to the ``## Telnyx sandbox throughput`` section of bench/RESULTS.md.

Loopback only; every loop is bounded by the request count and a wall-clock deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _results import RESULTS, write_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Telnyx sandbox throughput"
API_KEY = "KEY_sandbox"
RUN_DEADLINE_S = 300.0  # a run that takes longer than this is aborted
REQUIRED_RPS = 5_000


@dataclass
class RunResult:
    label: str
    requests: int
    connections: int
    latency_ms: float
    elapsed_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]


# Sandbox process ---------------------------------------------------------------------------


class SandboxProcess:
    def __init__(self, latency_ms: float) -> None:
        cmd = [
            sys.executable,
            "-m",
            "infra.telnyx_sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-webhooks",
            "--latency-ms",
            str(latency_ms),
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        match = re.fullmatch(r"telnyx-sandbox listening on http://([\d.]+):(\d+)", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.host, self.port = match.group(1), int(match.group(2))

    def control(self, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200:
                raise SystemExit(f"{method} {path} -> {resp.status}: {data}")
            return data  # type: ignore[no-any-return]
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("sandbox did not exit on SIGINT") from None
        if code != 0:
            raise SystemExit(f"sandbox exited with {code}")


# Load generator ----------------------------------------------------------------------------


def build_requests(n: int, host: str, port: int, run: int) -> list[bytes]:
    """n distinct, pre-encoded POST /v2/messages requests (distinct fingerprints)."""
    head = (
        f"POST /v2/messages HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: "
    ).encode()
    out = []
    for i in range(n):
        body = json.dumps(
            {
                "from": "+15550000001",
                "to": f"+1555{(run * n + i) % 10_000_000:07d}",
                "text": f"Sunday service moves to 10am this week. Reply STOP to opt out. #{i}",
                "webhook_url": f"http://127.0.0.1:9/webhooks/telnyx?message_id=run{run}-{i}",
                "messaging_profile_id": "40017f4d-5a1e-4b54-a7a2-5a8d2f0e0b01",
            },
            separators=(",", ":"),
        ).encode()
        out.append(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    return out


class _Shared:
    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.next = 0
        self.done = 0
        self.latencies_ns: list[int] = []
        self.statuses: dict[int, int] = {}
        self.finished = asyncio.get_running_loop().create_future()
        self.progress_every = max(1, len(requests) // 5)


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send_next()

    def _send_next(self) -> None:
        s = self.shared
        if s.next >= len(s.requests):
            assert self.transport is not None
            self.transport.close()
            return
        req = s.requests[s.next]
        s.next += 1
        self.sent_at = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            idx = head.find(b"\r\ncontent-length:")
            length = int(head[idx + 17 : head.find(b"\r\n", idx + 2) if head.find(b"\r\n", idx + 2) > 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            del self.buf[:total]
            s = self.shared
            s.latencies_ns.append(time.perf_counter_ns() - self.sent_at)
            s.statuses[status] = s.statuses.get(status, 0) + 1
            s.done += 1
            if s.done % s.progress_every == 0:
                print(f"    {s.done:>7,} / {len(s.requests):,}", flush=True)
            if s.done == len(s.requests) and not s.finished.done():
                s.finished.set_result(None)
            self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def drive(host: str, port: int, requests: list[bytes], connections: int) -> tuple[float, _Shared]:
    shared = _Shared(requests)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    protos: list[_ClientProtocol] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _ClientProtocol(shared), host, port)
        protos.append(proto)
    await asyncio.wait_for(shared.finished, RUN_DEADLINE_S)
    elapsed = time.perf_counter() - started
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    await asyncio.wait_for(asyncio.gather(*(p.closed for p in protos)), 30)
    return elapsed, shared


def percentile(sorted_ns: list[int], q: float) -> float:
    idx = min(len(sorted_ns) - 1, round(q * (len(sorted_ns) - 1)))
    return sorted_ns[idx] / 1e6


def run_once(sb: SandboxProcess, label: str, n: int, connections: int, latency_ms: float, run: int) -> RunResult:
    sb.control("POST", "/_sandbox/reset")
    sb.control("POST", "/_sandbox/config", {"latency_ms": latency_ms})
    requests = build_requests(n, sb.host, sb.port, run)
    print(f"  {label}: {n:,} requests, {connections} connections, latency {latency_ms:g} ms", flush=True)
    elapsed, shared = asyncio.run(drive(sb.host, sb.port, requests, connections))
    lat = sorted(shared.latencies_ns)
    result = RunResult(
        label=label,
        requests=n,
        connections=connections,
        latency_ms=latency_ms,
        elapsed_s=elapsed,
        rps=n / elapsed,
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        statuses=dict(shared.statuses),
    )
    ledger = sb.control("GET", "/_sandbox/ledger")
    ok = shared.statuses == {200: n} and ledger["accepted"] == n and ledger["duplicates"] == 0
    print(
        f"  -> {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
        f"ledger accepted={ledger['accepted']} duplicates={ledger['duplicates']}",
        flush=True,
    )
    if not ok:
        raise SystemExit(f"run {label} was not clean: statuses={shared.statuses} ledger={ledger}")
    return result


# Report ------------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    loop = "uvloop" if _has_uvloop() else "asyncio (stdlib loop)"
    return (
        f"nproc {os.cpu_count()}, {model or platform.processor() or 'unknown CPU'}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, event loop: {loop}"
    )


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def render(zero: list[RunResult], slow: RunResult, n: int) -> str:
    rps = statistics.median(r.rps for r in zero)
    median_run = sorted(zero, key=lambda r: r.rps)[len(zero) // 2]
    verdict = "PASS" if rps >= REQUIRED_RPS else "FAIL"
    lines = [
        SECTION,
        "",
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        "Command: `python bench/sandbox_throughput.py`  ",
        f"Machine: {machine()}",
        "",
        "Method: the sandbox CLI runs as its own process; this process drives `POST /v2/messages` over "
        "loopback with a raw-asyncio keep-alive load generator (one request in flight per connection, "
        "pre-built distinct requests) and checks the ledger afterwards (all accepted, 0 duplicates).",
        "",
        "| run | requests | connections | latency | req/s | p50 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [*zero, slow]:
        lines.append(
            f"| {r.label} | {r.requests:,} | {r.connections} | {r.latency_ms:g} ms | {r.rps:,.0f} | "
            f"{r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms |"
        )
    ideal = slow.connections / (slow.latency_ms / 1000.0)
    lines += [
        "",
        f"**0 ms latency, median of {len(zero)} runs x {n:,}: {rps:,.0f} req/s** "
        f"(p50 {median_run.p50_ms:.2f} ms, p99 {median_run.p99_ms:.2f} ms); requirement >= {REQUIRED_RPS:,} req/s: "
        f"{verdict}.",
        f"50 ms latency, {slow.connections} connections: {slow.rps:,.0f} req/s (a serialising server would "
        f"manage {1000 / slow.latency_ms:.0f} req/s; the ceiling with {slow.connections} in flight is "
        f"{ideal:,.0f} req/s), p50 {slow.p50_ms:.1f} ms.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="per 0 ms run (default 50,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--slow-requests", type=int, default=20_000)
    parser.add_argument("--slow-connections", type=int, default=500)
    parser.add_argument("--slow-latency-ms", type=float, default=50.0)
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()

    print(f"machine: {machine()}", flush=True)
    sb = SandboxProcess(latency_ms=0)
    try:
        print(f"sandbox at http://{sb.host}:{sb.port}", flush=True)
        zero = [run_once(sb, f"0 ms #{i + 1}", args.requests, args.connections, 0.0, i) for i in range(args.runs)]
        slow = run_once(
            sb,
            f"{args.slow_latency_ms:g} ms",
            args.slow_requests,
            args.slow_connections,
            args.slow_latency_ms,
            args.runs,
        )
    finally:
        sb.stop()
    section = render(zero, slow, args.requests)
    print()
    print(section)
    if not args.no_write:
        write_section(SECTION, section)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if statistics.median(r.rps for r in zero) >= REQUIRED_RPS else 1


if __name__ == "__main__":
    raise SystemExit(main())
