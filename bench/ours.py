"""Our side of the queue comparison: ``python bench/ours.py [--quick]``.

The job every peer of bench/compare.py does: deliver N SMS to the Telnyx sandbox (its own process) at 0 ms and
50 ms carrier latency, one worker process, ``CONSUMER_CONCURRENCY`` carrier requests in flight (200 by
default: the in-flight limit the peers run with). Ours runs the real path, which the peers do not:
``POST /messages`` over HTTP through functions-framework as deployed (each broadcast written to PostgreSQL in
one transaction, then enqueued in Redis), then one ``koinonia consume`` process that claims every message in
PostgreSQL (the fence against double sends) and writes every outcome there before acking Redis.

Each run, for each latency (the stack is bench/our_stack.py's; everything is checked, see there):

1. **Accept**: N messages as broadcasts of 1,000, posted by ``CLIENTS`` client threads at once (why that many:
   our_stack.CLIENTS), no consumer running. ``accept_per_s_broadcast`` = N / (first POST sent -> last 202
   read); ``enqueue_per_s`` is the same figure, under the peers' column name.
2. **Drain**: one consumer process started on the N queued messages. Rate = N / (last - first sandbox-ledger
   ``received_at``); the consumer's peak memory (the kernel's VmHWM, as bench/peers reports it; psutil's
   sampled peak RSS beside it); its CPU (wait4 user + system) per message.
3. **Accept -> carrier**, per message: its ledger ``received_at`` - the moment its broadcast's 202 was read
   (p50, p99). The N are queued before the consumer starts, so this includes the consumer's start-up
   (``startup_s_<latency>``) and each message's wait behind the ones before it (p50 ~ start-up + N / 2 / rate).

Figures are medians of the runs; every per-run value is kept. The keys are bench/peers/harness.py's for a
peer (``enqueue_per_s``, ``drain_msgs_per_s_<k>``, ``p50_ms_<k>``, ``p99_ms_<k>``, ``rss_mb``, ...), so one table
holds both; this protocol (enqueue everything with no worker running, then start one) is also theirs.
``run(config)`` returns them (JSON-able), ``render(result)`` gives the markdown for bench/RESULTS.md;
bench/compare.py writes them. Alone, this prints them (``--json FILE`` also saves the result).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import send_pipeline as sp  # noqa: E402
from our_stack import CLIENTS, Drain, Fill, drain_line, fill_line, machine, run_and_show, running_stack  # noqa: E402

say = sp.say
COMMAND = "python bench/ours.py"


@dataclass
class Config:
    n: int = 5_000  # as bench/peers' default (FULL_N): the same job when both run alone
    runs: int = 3
    concurrency: int = sp.CONSUMER_CONCURRENCY
    latencies: tuple[float, ...] = (0.0, 50.0)
    quick: bool = False
    clients: int = CLIENTS

    @classmethod
    def make(
        cls, *, n: int | None = None, runs: int | None = None, concurrency: int | None = None,
        latencies: tuple[float, ...] | list[float] | None = None, quick: bool = False, clients: int | None = None,
    ) -> Config:  # fmt: skip
        """The orchestrator's arguments; anything not given takes the default (``quick``: N = 2,000, one run)."""
        return cls(
            n=n or (2_000 if quick else 5_000),
            runs=runs or (1 if quick else 3),
            concurrency=concurrency or sp.CONSUMER_CONCURRENCY,
            latencies=tuple(float(x) for x in (latencies if latencies is not None else (0.0, 50.0))),
            quick=quick,
            clients=clients or CLIENTS,
        )


@dataclass
class Runs:
    fills: list[Fill] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)


def key(latency: float) -> str:
    return f"{latency:g}ms"


def run(config: Config) -> dict[str, Any]:
    """Accept and drain ``config.n`` messages per run and latency; medians and per-run values."""
    code, _ = sp.code_state()
    say(f"ours: N = {config.n:,} per drain, {config.runs} run(s) x latencies {', '.join(key(x) for x in config.latencies)}, "
        f"consumer concurrency {config.concurrency}, {config.clients} accept clients")  # fmt: skip
    runs = Runs()
    with running_stack("ours", concurrency=config.concurrency, quick=config.quick, clients=config.clients) as stack:
        for r in range(config.runs):
            for latency in config.latencies:
                stack.wait_quiet()
                say(f"  run {r + 1}/{config.runs}, {key(latency)}: accept {config.n:,} ({config.clients} clients)")
                fill = stack.fill(config.n, config.clients)
                say(fill_line(fill))
                say(f"  run {r + 1}/{config.runs}, {key(latency)}: drain with one consumer")
                drain = stack.drain(fill, latency, kind="ours")
                say(drain_line(drain))
                runs.fills.append(fill)
                runs.drains.append(drain)
    return summarise(config, runs, code)


def summarise(config: Config, runs: Runs, code: str) -> dict[str, Any]:
    """The figures, under the key names bench/peers/harness.py gives each peer (so one table holds both)."""
    med = sp.median
    accept = [f.per_s for f in runs.fills]
    by_latency = {key(x): [d for d in runs.drains if d.latency_ms == x] for x in config.latencies}
    out: dict[str, Any] = {
        "version": code,
        "messages": config.n,
        "n": config.n,
        "runs": config.runs,
        "concurrency": config.concurrency,
        "clients": config.clients,
        "latencies_ms": list(config.latencies),
        "accept_per_s_broadcast": round(med(accept), 1),
        "enqueue_per_s": round(med(accept), 1),
        "accept_post_ms_1000_p50": round(med([sp.percentile(f.post_ms, 0.5) for f in runs.fills]), 1),
        "accept_post_ms_1000_p99": round(med([sp.percentile(f.post_ms, 0.99) for f in runs.fills]), 1),
        "send_worker_peak_rss_mb": round(max(f.send_peak.peak_rss_mb for f in runs.fills), 1),
        "timing": sorted({d.timing for d in runs.drains}),
        "runs_disturbed_by_other_work": sum(1 for d in runs.drains if d.run.other_share > sp.DISTURBED),
        "per_run": {"accept_per_s_broadcast": [round(x, 1) for x in accept]},
    }
    for k, drains in by_latency.items():
        if not drains:
            continue
        out[f"drain_msgs_per_s_{k}"] = round(med([d.msgs_per_s for d in drains]), 1)
        # Peak memory as the peers report it: the kernel's VmHWM of the worker (psutil's sampled peak beside it).
        out[f"rss_mb_{k}"] = round(med([d.run.consumers[0].hwm_mb for d in drains]), 1)
        out[f"consumer_peak_rss_mb_{k}"] = round(med([d.consumer_peak_rss_mb for d in drains]), 1)
        out[f"p50_ms_{k}"] = round(med([d.to_carrier_p50_s for d in drains]) * 1000, 1)
        out[f"p99_ms_{k}"] = round(med([d.to_carrier_p99_s for d in drains]) * 1000, 1)
        out[f"startup_s_{k}"] = round(med([d.first_s for d in drains]), 3)
        out[f"cpu_s_{k}"] = round(med([d.run.cpu_s for d in drains]), 3)
        out[f"cpu_ms_per_msg_{k}"] = round(med([d.cpu_ms_per_msg for d in drains]), 3)
        out[f"machine_busy_{k}"] = round(med([d.run.machine_busy for d in drains]), 3)
        out[f"cpu_other_s_{k}"] = {name: round(med([d.run.cpu.get(name, 0.0) for d in drains]), 2) for name in drains[0].run.cpu}
        out["per_run"][f"drain_msgs_per_s_{k}"] = [round(d.msgs_per_s, 1) for d in drains]
        out["per_run"][f"p99_ms_{k}"] = [round(d.to_carrier_p99_s * 1000, 1) for d in drains]
        out["per_run"][f"rss_mb_{k}"] = [round(d.run.consumers[0].hwm_mb, 1) for d in drains]
        out["per_run"][f"other_work_share_{k}"] = [round(d.run.other_share, 3) for d in drains]
    rss_key = f"rss_mb_{key(50.0)}" if 50.0 in config.latencies else f"rss_mb_{key(config.latencies[-1])}"
    out["rss_mb"] = out.get(rss_key)
    out["settings"] = {
        "send_workers": sp.SERVER_WORKERS, "send_threads": sp.SERVER_THREADS,
        "send_connection_limit": sp.SERVER_CONNECTIONS, "consumer_concurrency": config.concurrency,
        "consumer_batch": 100, "consumer_connection_limit": sp.CONSUMER_CONNECTIONS, "accept_clients": config.clients,
    }  # fmt: skip
    out["machine"] = machine()
    out["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out["command"] = COMMAND + (" --quick" if config.quick else "")
    return out


def render(result: dict[str, Any]) -> str:
    """Markdown for bench/RESULTS.md (no heading): our row of figures and how they were taken."""
    r = result
    lat = [key(x) for x in r["latencies_ms"]]
    drain_cols = " | ".join(f"drain {k}" for k in lat)
    drain_vals = " | ".join(f"{r.get(f'drain_msgs_per_s_{k}', 0):,.0f} msg/s" for k in lat)
    drain_runs = " | ".join(" / ".join(f"{x:,.0f}" for x in r["per_run"].get(f"drain_msgs_per_s_{k}", [])) for k in lat)
    latency = "; ".join(
        f"{k}: p50 {r[f'p50_ms_{k}'] / 1000:.2f} s, p99 {r[f'p99_ms_{k}'] / 1000:.2f} s "
        f"(first message {r[f'startup_s_{k}']:.2f} s after the consumer started)"
        for k in lat if f"p50_ms_{k}" in r
    )  # fmt: skip
    cpu = ", ".join(f"{k} {r[f'cpu_ms_per_msg_{k}']:.3f} ms" for k in lat if f"cpu_ms_per_msg_{k}" in r)
    lines = [
        f"| | accept (msg/s) | {drain_cols} | consumer peak RSS (VmHWM) | consumer CPU per message |",
        "|---|---:|" + "---:|" * len(lat) + "---:|---|",
        f"| ours (median of {r['runs']}) | **{r['accept_per_s_broadcast']:,.0f}** | {drain_vals} | "
        f"{r['rss_mb'] or 0:.0f} MB | {cpu} |",
        f"| runs | {' / '.join(f'{x:,.0f}' for x in r['per_run']['accept_per_s_broadcast'])} | {drain_runs} | | |",
        "",
        f"Ours, {r['n']:,} messages per drain: `POST /messages` over HTTP through functions-framework as deployed "
        f"(`WORKERS={r['settings']['send_workers']}`, `THREADS={r['settings']['send_threads']}`), broadcasts of 1,000 "
        f"from {r['clients']} client threads at once (one per server thread: more would only queue in gunicorn), each "
        "written to PostgreSQL in one transaction and enqueued in Redis; then one `koinonia consume` process "
        f"(`CONSUMER_CONCURRENCY={r['concurrency']}`) started on the queued messages, which claims every message in "
        "PostgreSQL and writes every outcome there before acking Redis: database work the peers do not do. "
        f"A 1,000-recipient POST took p50 {r['accept_post_ms_1000_p50']:.0f} ms, p99 {r['accept_post_ms_1000_p99']:.0f} ms "
        f"with {r['clients']} in flight; the send function's worker peaked at {r['send_worker_peak_rss_mb']:.0f} MB RSS. "
        f"Drain = N / (last - first sandbox-ledger `received_at`). Accept -> carrier (a message's ledger `received_at` - "
        f"its broadcast's 202), all N queued before the consumer starts, so it includes start-up and the wait in the "
        f"queue: {latency}. Every run checked: all messages `sent` with one attempt, each in the ledger exactly once.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 2,000, one run")
    parser.add_argument("--n", type=int, help="messages per drain (default 5,000, as bench/peers)")
    parser.add_argument("--runs", type=int, help="runs per latency (default 3)")
    parser.add_argument("--concurrency", type=int, help=f"CONSUMER_CONCURRENCY (default {sp.CONSUMER_CONCURRENCY})")
    parser.add_argument("--latencies", default="0,50", help="carrier latencies in ms, comma-separated (default 0,50)")
    parser.add_argument("--clients", type=int, help=f"client threads posting broadcasts at once (default {CLIENTS})")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    config = Config.make(
        n=args.n, runs=args.runs, concurrency=args.concurrency, quick=args.quick, clients=args.clients,
        latencies=[float(x) for x in args.latencies.split(",") if x.strip()],
    )  # fmt: skip
    return run_and_show(run, render, config, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
