"""How our pipeline scales: ``python bench/scaling.py [--quick] [--sizes 10000,100000,1000000]``.

Two questions of the queue comparison (bench/compare.py), on our real path (bench/our_stack.py: the send
function over HTTP, ``koinonia consume`` processes, PostgreSQL claims and outcome writes; every drain checked):

1. **Consumer processes** (``drain_scaling``): N messages queued, then drained at 50 ms carrier latency by 1, 2
   and 4 consumer processes started together (``CONSUMER_CONCURRENCY`` each). Rate = N / (last - first
   sandbox-ledger ``received_at``); median of ``runs``. On this 2-core machine the processes share two cores
   with the sandbox, PostgreSQL, Redis and the send function, so what a second process adds is bounded by
   the CPU left over; ``drain_scaling_cpu_s`` shows where it went.
2. **Size** (``sizes``): N = 10,000, 100,000 and 1,000,000 (``--sizes``) accepted (broadcasts of 1,000 from
   several clients), then drained by one consumer at 50 ms while the retry-scheduler function is invoked back
   to back as its cloud schedule does (promote, reclaim, reconcile from PostgreSQL, analytics processing).
   Per N: accept and drain rates, the peak RSS of the send function's worker (over the fill), the consumer
   and the scheduler's worker (over the drain), with RSS timelines, and the Redis memory the queue holds once
   the N are queued (the backlog: that one grows with N by design). Our processes' memory must stay flat as N
   grows (nothing loads all rows or all queue entries at once). The send function and the scheduler keep running
   from one N to the next, so their peaks are cumulative: a leak or a load-everything shows up as growth.
   Above our_stack.LEDGER_ENTRIES_MAX messages the timings come from PostgreSQL (``sent_at``), not the ledger.

``--quick``: N = 2,000, 1 and 2 processes, one size of 2,000, one run. ``run(config)`` returns the figures,
``render(result)`` the markdown; alone, this prints them (``--json FILE`` also saves the result).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import send_pipeline as sp  # noqa: E402
from our_stack import CLIENTS, Drain, Fill, Stack, drain_line, fill_line, machine, run_and_show, running_stack, worker_process  # noqa: E402

say = sp.say
COMMAND = "python bench/scaling.py"
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


@dataclass
class Config:
    n: int = 20_000  # messages per drain for the process scaling
    runs: int = 3
    concurrency: int = sp.CONSUMER_CONCURRENCY
    latency_ms: float = 50.0
    processes: tuple[int, ...] = (1, 2, 4)
    sizes: tuple[int, ...] = DEFAULT_SIZES
    size_runs: int = 1  # one run per size: 1,000,000 messages take a quarter of an hour per run
    quick: bool = False
    clients: int = CLIENTS
    scheduler_budget_s: float = 5.0

    @classmethod
    def make(
        cls, *, n: int | None = None, runs: int | None = None, concurrency: int | None = None,
        latencies: tuple[float, ...] | list[float] | None = None, quick: bool = False,
        sizes: tuple[int, ...] | list[int] | None = None, processes: tuple[int, ...] | list[int] | None = None,
        size_runs: int | None = None, clients: int | None = None,
    ) -> Config:  # fmt: skip
        """The orchestrator's arguments. Scaling runs at one latency: 50 ms, or the largest of ``latencies``."""
        return cls(
            n=n or (2_000 if quick else 20_000),
            runs=runs or (1 if quick else 3),
            concurrency=concurrency or sp.CONSUMER_CONCURRENCY,
            latency_ms=float(max(latencies)) if latencies else 50.0,
            processes=tuple(processes or ((1, 2) if quick else (1, 2, 4))),
            sizes=tuple(sizes or ((2_000,) if quick else DEFAULT_SIZES)),
            size_runs=size_runs or 1,
            quick=quick,
            clients=clients or CLIENTS,
            scheduler_budget_s=2.0 if quick else 5.0,
        )


def run(config: Config) -> dict[str, Any]:
    code, _ = sp.code_state()
    listed = ", ".join(f"{s:,}" for s in config.sizes)
    say(f"scaling: {config.processes} consumer processes x N = {config.n:,} ({config.runs} run(s)); sizes {listed} "
        f"with the retry-scheduler running; {config.latency_ms:g} ms latency")  # fmt: skip
    procs: list[Drain] = []
    sizes: list[tuple[Fill, Drain, dict[str, float]]] = []
    with running_stack("scaling", concurrency=config.concurrency, quick=config.quick, clients=config.clients) as stack:
        say("consumer processes:")
        for r in range(config.runs):
            for count in config.processes:
                stack.wait_quiet()
                fill = stack.fill(config.n, config.clients)
                say(f"  run {r + 1}/{config.runs}, {count} process(es): queued {config.n:,} "
                    f"({fill.per_s:,.0f} msg/s accepted); draining at {config.latency_ms:g} ms")  # fmt: skip
                drain = stack.drain(fill, config.latency_ms, kind="processes", processes=count)
                say(drain_line(drain))
                procs.append(drain)
        say("sizes (one consumer, retry-scheduler invoked back to back):")
        stack.scheduler_port()  # started before the first size, so its RSS before each size is known
        for n in config.sizes:
            for r in range(config.size_runs):
                stack.wait_quiet()
                before = _rss_mb(stack)
                say(f"  N = {n:,} (run {r + 1}/{config.size_runs}): accept")
                fill = stack.fill(n, config.clients, progress=n >= 100_000)
                before["redis"] = stack.redis_mb()
                say(fill_line(fill) + f"; the queue holds {before['redis']:.1f} MB of Redis")
                say(f"  N = {n:,}: drain at {config.latency_ms:g} ms, one consumer, scheduler running")
                drain = stack.drain(fill, config.latency_ms, kind=f"size-{n}", scheduler=True,
                                    scheduler_budget_s=config.scheduler_budget_s)
                say(drain_line(drain) + f"; scheduler {_sched_line(drain.scheduler)}")
                sizes.append((fill, drain, before))
    return summarise(config, procs, sizes, code)


def _rss_mb(stack: Stack) -> dict[str, float]:
    """RSS now of the long-lived processes of ours (before a size's fill)."""
    out = {"send function": stack.send_worker.memory_info().rss / 2**20}
    if stack.scheduler_server is not None:
        out["retry-scheduler"] = worker_process(stack.scheduler_server.proc).memory_info().rss / 2**20
    return out


def _sched_line(report: dict[str, Any]) -> str:
    return (
        f"{report.get('invocations', 0)} invocations, {report.get('passes', 0)} passes, reconciled "
        f"{report.get('reconciled', 0)}, analytics entries {report.get('analytics_entries', 0)}"
    )


def summarise(config: Config, procs: list[Drain], sizes: list[tuple[Fill, Drain, dict[str, float]]], code: str) -> dict[str, Any]:
    med = sp.median
    scaling = {}
    per_run: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    for count in config.processes:
        drains = [d for d in procs if d.processes == count]
        scaling[str(count)] = round(med([d.msgs_per_s for d in drains]), 1)
        per_run[str(count)] = [round(d.msgs_per_s, 1) for d in drains]
        cpu[str(count)] = {
            "consumers": round(med([d.run.cpu_s for d in drains]), 2),
            **{name: round(med([d.run.cpu.get(name, 0.0) for d in drains]), 2) for name in drains[0].run.cpu},
            "wall_s": round(med([d.run.wall_s for d in drains]), 2),
            "machine_busy": round(med([d.run.machine_busy for d in drains]), 3),
        }
    by_size = []
    for fill, drain, before in sizes:
        sched = drain.run.extras.get("retry-scheduler")
        by_size.append({
            "n": fill.n,
            "accept_per_s": round(fill.per_s, 1),
            "drain_msgs_per_s": round(drain.msgs_per_s, 1),
            "timing": drain.timing,
            "send_worker_rss_before_mb": round(before["send function"], 1),
            "send_worker_peak_rss_mb": round(fill.send_peak.peak_rss_mb, 1),
            "send_worker_rss_timeline": fill.send_peak.points(),
            "redis_backlog_mb": round(before["redis"], 1),
            "consumer_peak_rss_mb": round(drain.consumer_peak_rss_mb, 1),
            "consumer_vm_hwm_mb": round(drain.run.consumers[0].hwm_mb, 1),
            "consumer_rss_timeline": drain.run.consumers[0].timeline,
            "scheduler_rss_before_mb": round(before["retry-scheduler"], 1) if "retry-scheduler" in before else None,
            "scheduler_peak_rss_mb": round(sched.peak_rss_mb, 1) if sched else None,
            "scheduler_rss_timeline": sched.points() if sched else [],
            "scheduler": drain.scheduler,
            "consumer_cpu_ms_per_msg": round(drain.cpu_ms_per_msg, 3),
            "cpu_s": {name: round(v, 2) for name, v in drain.run.cpu.items()},
            "wall_s": round(drain.run.wall_s, 2),
            "to_carrier_p50_s": round(drain.to_carrier_p50_s, 3),
            "to_carrier_p99_s": round(drain.to_carrier_p99_s, 3),
        })  # fmt: skip
    return {
        "drain_scaling": scaling,
        "drain_scaling_n": config.n,
        "drain_scaling_latency_ms": config.latency_ms,
        "drain_scaling_per_run": per_run,
        "drain_scaling_cpu_s": cpu,
        "sizes": by_size,
        "concurrency": config.concurrency,
        "clients": config.clients,
        "runs": config.runs,
        "size_runs": config.size_runs,
        "scheduler_budget_s": config.scheduler_budget_s,
        "version": code,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": COMMAND + (" --quick" if config.quick else ""),
    }


def render(result: dict[str, Any]) -> str:
    r = result
    one = r["drain_scaling"].get("1") or 0.0
    lines = [
        "| consumer processes | drain (msg/s) | vs 1 process | runs | CPU s: consumers / PostgreSQL / sandbox / other |",
        "|---:|---:|---:|---|---|",
    ]
    for count, rate in r["drain_scaling"].items():
        c = r["drain_scaling_cpu_s"][count]
        lines.append(
            f"| {count} | **{rate:,.0f}** | {rate / one if one else 0:.2f}x | "
            f"{' / '.join(f'{x:,.0f}' for x in r['drain_scaling_per_run'][count])} | "
            f"{c['consumers']:.1f} / {c.get('postgresql', 0):.1f} / {c.get('sandbox', 0):.1f} / "
            f"{c.get('other processes', 0):.1f} (machine {c['machine_busy']:.0%} busy) |"
        )
    lines += [
        "",
        f"{r['drain_scaling_n']:,} messages queued, then drained at {r['drain_scaling_latency_ms']:g} ms carrier latency by "
        f"that many `koinonia consume` processes started together (`CONSUMER_CONCURRENCY={r['concurrency']}` each); "
        f"median of {r['runs']} run(s); every drain checked (all sent once, 0 duplicates).",
        "",
        "| N | accept (msg/s) | drain (msg/s) | send worker RSS: before / peak | consumer peak RSS "
        "| retry-scheduler RSS: before / peak | Redis held by the queue | scheduler work |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in r["sizes"]:
        sched_before = f"{s['scheduler_rss_before_mb']:.0f}" if s["scheduler_rss_before_mb"] is not None else "(started)"
        sched_peak = f"{s['scheduler_peak_rss_mb']:.0f}" if s["scheduler_peak_rss_mb"] is not None else "-"
        lines.append(
            f"| {s['n']:,} | {s['accept_per_s']:,.0f} | {s['drain_msgs_per_s']:,.0f}"
            f"{'' if s['timing'] == 'ledger' else ' (sent_at)'} | {s['send_worker_rss_before_mb']:.0f} / "
            f"{s['send_worker_peak_rss_mb']:.0f} MB | {s['consumer_peak_rss_mb']:.0f} MB | {sched_before} / {sched_peak} MB | "
            f"{s['redis_backlog_mb']:.1f} MB | {_sched_line(s['scheduler'])} |"
        )
    lines += [
        "",
        "Per N: accepted through `POST /messages` (broadcasts of 1,000, "
        f"{r['clients']} clients), then drained by one consumer at {r['drain_scaling_latency_ms']:g} ms while the "
        f"retry-scheduler function is invoked back to back (`budget_s` {r['scheduler_budget_s']:g} each; the cloud "
        "runs it every minute for 50 s): its reconcile pages through PostgreSQL's due rows, its analytics processor "
        "recomputes the church-day the consumer's events name. The send function and the scheduler keep running "
        "from one N to the next, so their peaks are cumulative; the consumer is a new process per N. "
        "`(sent_at)`: above 200,000 messages the drain span comes from PostgreSQL's `sent_at` (our outcome write), "
        "not the ledger's `received_at`. Redis held by the queue: `MEMORY USAGE` of the queue's keys right after the fill "
        "(the backlog itself, which any queue holds).",
        "",
    ]
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 2,000, 1 and 2 processes, one size of 2,000")
    parser.add_argument("--n", type=int, help="messages per drain for the process scaling (default 20,000)")
    parser.add_argument("--runs", type=int, help="runs per process count (default 3)")
    parser.add_argument("--processes", type=_ints, help="consumer process counts, comma-separated (default 1,2,4)")
    parser.add_argument("--sizes", type=_ints, help="N for the size runs, comma-separated (default 10000,100000,1000000)")
    parser.add_argument("--size-runs", type=int, help="runs per size (default 1)")
    parser.add_argument("--concurrency", type=int, help=f"CONSUMER_CONCURRENCY (default {sp.CONSUMER_CONCURRENCY})")
    parser.add_argument("--latency", type=float, default=50.0, help="carrier latency in ms (default 50)")
    parser.add_argument("--clients", type=int, help=f"client threads posting broadcasts at once (default {CLIENTS})")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    config = Config.make(
        n=args.n, runs=args.runs, concurrency=args.concurrency, latencies=[args.latency], quick=args.quick,
        sizes=args.sizes, processes=args.processes, size_runs=args.size_runs, clients=args.clients,
    )  # fmt: skip
    return run_and_show(run, render, config, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
