"""CPU cost per send of the carrier client: ``python bench/carrier_client.py``.

Starts the sandbox CLI as a subprocess (its own process, so its own core) at 0 ms and at 50 ms
latency, and sends N distinct messages from this process with 200 in flight through:

- ``TelnyxClient`` (ours: a free-list of bare httpcore HTTP/1.1 connections, asyncio stream),
- one shared ``httpx.AsyncClient`` with 200 pooled connections,
- 200 per-task ``httpx.AsyncClient`` instances with one connection each,
- 200 per-task ``httpcore.AsyncConnectionPool(max_connections=1)`` (the design we measured and
  did not take: the pool's bookkeeping costs more than the bare connection it wraps).

Every variant does the same per-message work: build the JSON body once (``TelnyxClient.encode``),
POST it, read the answer and classify it with ``common.carrier.errors.classify_response``. Each run
uses a fresh client, built before the measured part (a consumer builds one once; 200 httpx clients
cost seconds to build) with connection setup inside it; 3 runs per variant, interleaved.
CPU per request is ``time.process_time()`` of this process over the run divided by N; the sandbox's
CPU is not counted. After every run the sandbox ledger must show N accepted and 0 duplicates.

The figures go to the ``## Carrier client cost`` section of bench/RESULTS.md (other sections are
left alone). Loopback only; every run is bounded by N and a wall-clock deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpcore  # noqa: E402
import httpx  # noqa: E402
from _results import RESULTS, write_section  # noqa: E402  (bench/ is the script's folder)

from common.carrier import OutboundMessage, TelnyxClient, classify_response  # noqa: E402

SECTION = "## Carrier client cost"
API_KEY = "KEY_sandbox"
WEBHOOK = "http://127.0.0.1:9/webhooks/telnyx"
RUN_DEADLINE_S = 600.0
TARGET_CPU_MS = 0.4
VARIANTS = ("ours", "httpx-shared", "httpx-per-task", "httpcore-pool-per-task")
LABELS = {
    "ours": "TelnyxClient (ours)",
    "httpx-shared": "httpx.AsyncClient shared, 200 conns",
    "httpx-per-task": "httpx.AsyncClient per task (200 x 1 conn)",
    "httpcore-pool-per-task": "httpcore.AsyncConnectionPool(1) per task",
}


@dataclass
class Run:
    variant: str
    latency_ms: float
    n: int
    elapsed_s: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.n / self.elapsed_s

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / self.n * 1000.0


# Sandbox process -----------------------------------------------------------------------------


class SandboxProcess:
    def __init__(self, latency_ms: float) -> None:
        cmd = [sys.executable, "-m", "infra.telnyx_sandbox", "--host", "127.0.0.1", "--port", "0", "--no-webhooks"]
        cmd += ["--latency-ms", str(latency_ms)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        match = re.fullmatch(r"telnyx-sandbox listening on (http://([\d.]+):(\d+))", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.url, self.host, self.port = match.group(1), match.group(2), int(match.group(3))

    def control(self, method: str, path: str) -> dict[str, object]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200:
                raise SystemExit(f"{method} {path} -> {resp.status}")
            return data  # type: ignore[no-any-return]
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("sandbox did not exit on SIGINT") from None


# One run -----------------------------------------------------------------------------------------

Send = Callable[[OutboundMessage], Awaitable[str]]


def messages(n: int, tag: str) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            message_id=f"{tag}-{i}",
            to=f"+1555{i % 10_000_000:07d}",
            from_="+15550000001",
            text=f"Sunday service moves to 10am this week. Reply STOP to opt out. #{i}",
        )
        for i in range(n)
    ]


async def drive(send: Send, msgs: list[OutboundMessage], concurrency: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    pending = iter(msgs)

    async def worker() -> None:
        for m in pending:
            outcomes[await send(m)] += 1

    async with asyncio.timeout(RUN_DEADLINE_S):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def run_variant(
    variant: str, base: str, msgs: list[OutboundMessage], concurrency: int
) -> tuple[Counter[str], float, float]:
    """(outcomes, wall seconds, CPU seconds). Clients are built before and closed after the
    measured part (a consumer builds its client once); connections are opened inside it."""
    encoder = TelnyxClient(base, API_KEY, webhook_url=WEBHOOK)  # only its pure encode() is used for httpx
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", "Accept": "application/json"}
    timeout = httpx.Timeout(10.0, connect=2.0)
    closers: list[Callable[[], Awaitable[None]]] = []
    send: Send
    if variant == "ours":
        client = TelnyxClient(base, API_KEY, max_connections=concurrency, webhook_url=WEBHOOK)
        closers.append(client.aclose)

        async def send_ours(m: OutboundMessage) -> str:
            return (await client.send(m)).outcome

        send = send_ours
    elif variant == "httpcore-pool-per-task":
        url = httpcore.URL(base + "/messages")
        base_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        base_headers.append((b"Host", url.host + b":" + str(url.port).encode()))
        extensions = {"timeout": {"connect": 2.0, "read": 10.0, "write": 10.0, "pool": 10.0}}
        pools = [httpcore.AsyncConnectionPool(max_connections=1) for _ in range(concurrency)]
        closers.extend(pool.aclose for pool in pools)

        async def send_pool(m: OutboundMessage) -> str:
            pool = pools.pop()
            try:
                body = encoder.encode(m)
                h = [*base_headers, (b"Content-Length", str(len(body)).encode())]
                r = await pool.request("POST", url, headers=h, content=body, extensions=extensions)
                return classify_response(r.status, r.headers, r.content).outcome
            except httpcore.NetworkError:
                return "error"
            finally:
                pools.append(pool)

        send = send_pool
    else:

        def make(connections: int) -> httpx.AsyncClient:
            limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
            made = httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout)
            closers.append(made.aclose)
            return made

        clients = [make(concurrency)] if variant == "httpx-shared" else [make(1) for _ in range(concurrency)]
        free = clients * concurrency if variant == "httpx-shared" else list(clients)

        async def send_httpx(m: OutboundMessage) -> str:
            http = free.pop()  # per-task variant: each in-flight send holds its own client
            try:
                r = await http.post("/messages", content=encoder.encode(m), headers=headers)
                return classify_response(r.status_code, r.headers.raw, r.content).outcome
            except httpx.HTTPError:
                return "error"
            finally:
                free.append(http)

        send = send_httpx
    try:
        gc.collect()
        started = time.perf_counter()
        cpu0 = time.process_time()
        outcomes = await drive(send, msgs, concurrency)
        return outcomes, time.perf_counter() - started, time.process_time() - cpu0
    finally:
        for close in closers:
            await close()


def run_once(sb: SandboxProcess, variant: str, latency_ms: float, n: int, concurrency: int, index: int) -> Run:
    sb.control("POST", "/_sandbox/reset")
    msgs = messages(n, f"{variant}-{latency_ms:g}-{index}")
    outcomes, elapsed, cpu = asyncio.run(run_variant(variant, sb.url + "/v2", msgs, concurrency))
    ledger = sb.control("GET", "/_sandbox/ledger")
    if outcomes != Counter({"sent": n}) or ledger["accepted"] != n or ledger["duplicates"] != 0:
        raise SystemExit(
            f"{variant}: outcomes {dict(outcomes)}, ledger accepted {ledger['accepted']}, duplicates {ledger['duplicates']}"
        )
    return Run(variant, latency_ms, n, elapsed, cpu)


# Report ------------------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"nproc {os.cpu_count()}, {model or platform.processor() or 'unknown CPU'}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} {platform.release()}, "
        f"httpx {httpx.__version__}, httpcore {httpcore.__version__}, h11 {__import__('h11').__version__}, "
        "event loop: asyncio (stdlib)"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


def render(runs: list[Run], n: int, n_runs: int, concurrency: int, latencies: list[float], loads: tuple[str, str]) -> str:
    lines = [
        SECTION,
        "",
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        "Command: `python bench/carrier_client.py`  ",
        f"Machine: {machine()}  ",
        f"Load average (1 min / 5 min): {loads[0]} at start, {loads[1]} at end (other work on the machine inflates "
        "wall-clock req/s far more than CPU ms/req)",
        "",
        f"Method: sandbox CLI in its own process; this process sends {n:,} distinct messages per run with "
        f"{concurrency} in flight (fresh client per run, built outside the measurement, connects inside it), each "
        "variant building the same JSON body and classifying every answer with `common.carrier.errors`; CPU = "
        "`time.process_time()` of this process / requests (sandbox not counted); median of "
        f"{n_runs} interleaved runs; ledger checked after each run ({n:,} accepted, 0 duplicates).",
        "",
        "| latency | client | req/s | CPU ms/req | CPU-bound ceiling (req/s per core) | runs: CPU ms/req |",
        "|---:|---|---:|---:|---:|---|",
    ]
    medians: dict[tuple[float, str], float] = {}
    for latency in latencies:
        for variant in VARIANTS:
            mine = [r for r in runs if r.variant == variant and r.latency_ms == latency]
            if not mine:
                continue
            rps = statistics.median(r.rps for r in mine)
            cpu = statistics.median(r.cpu_ms for r in mine)
            medians[(latency, variant)] = cpu
            each = " / ".join(f"{r.cpu_ms:.3f}" for r in mine)
            lines.append(
                f"| {latency:g} ms | {LABELS[variant]} | {rps:,.0f} | **{cpu:.3f}** | {1000.0 / cpu:,.0f} | {each} |"
            )
    lines.append("")
    for latency in latencies:
        ours = medians.get((latency, "ours"))
        shared = medians.get((latency, "httpx-shared"))
        per_task = medians.get((latency, "httpx-per-task"))
        pool = medians.get((latency, "httpcore-pool-per-task"))
        if ours is None:
            continue
        verdict = "PASS" if ours <= TARGET_CPU_MS else "FAIL"
        parts = [f"{latency:g} ms latency: ours {ours:.3f} ms CPU/request (target <= {TARGET_CPU_MS} ms: {verdict})"]
        if shared:
            parts.append(f"{shared / ours:.0f}x less than a shared httpx.AsyncClient")
        if per_task:
            parts.append(f"{per_task / ours:.1f}x less than per-task httpx clients")
        if pool:
            parts.append(f"{pool / ours:.1f}x less than per-task single-connection httpcore pools")
        lines.append("; ".join(parts) + ".  ")
    ours_50 = medians.get((50.0, "ours")) or medians.get((latencies[-1], "ours"))
    if ours_50:
        lines.append(
            f"At the consumer's 1,150 msg/s the carrier client alone needs ~{1150 * ours_50 / 10:.0f}% of one core "
            "(PostgreSQL and Redis work come on top)."
        )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="requests per run (default 10,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latencies", default="0,50", help="sandbox latencies in ms, comma separated")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    latencies = [float(x) for x in args.latencies.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    print(f"machine: {machine()}", flush=True)
    load_start = load()
    print(f"load average (1 min / 5 min): {load_start}", flush=True)
    runs: list[Run] = []
    for latency in latencies:
        sb = SandboxProcess(latency)
        print(f"sandbox at {sb.url}, latency {latency:g} ms", flush=True)
        try:
            for index in range(args.runs):
                for variant in variants:
                    print(f"  {LABELS[variant]:<42} run {index + 1}/{args.runs} ...", end=" ", flush=True)
                    r = run_once(sb, variant, latency, args.n, args.concurrency, index)
                    runs.append(r)
                    print(f"{r.rps:8,.0f} req/s  {r.cpu_ms:6.3f} ms CPU/req  ({r.elapsed_s:.1f} s)", flush=True)
        finally:
            sb.stop()
    section = render(runs, args.n, args.runs, args.concurrency, latencies, (load_start, load()))
    print()
    print(section)
    if not args.no_write:
        write_section(SECTION, section)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
