"""The side-by-side benchmark: ``python bench/compare.py --write`` (``--quick``: the CI smoke, tiny N).

One command, every part of the performance issue, in this order on this machine:

1. ``pipeline``: bench/send_pipeline.py (one-recipient accept latency, 1,000-recipient accept, drain, and the
   fairness figure: church B's single texts while church A's 20,000 drain); it keeps its own section.
2. ``peers``: bench/peers/ (arq, saq, Celery threads, Dramatiq threads, RQ worker and worker-pool, BullMQ's
   Python port) and the no-queue ceiling, the same job at the same in-flight concurrency.
3. ``ours``: bench/ours.py, our real path doing that job (send over HTTP, then one queue-consume process).
4. ``scaling``: bench/scaling.py (1, 2, 4 consumer processes; N = 10,000 .. 1,000,000, memory flat).
5. ``costs``: bench/costs.py (statements and Redis round trips per message, counted; py-spy profiles).
6. ``load``: bench/load.py (200 concurrent clients for 60 s against send and the read API).

It writes the "## Queues side by side" section of bench/RESULTS.md (the tables, the targets with verdicts,
and the figures each part renders) and the results.json keys the issue names (``peers``, ours, the ceiling,
``drain_scaling``, ``concurrency``), with each part's full result under ``compare``. Ratios ours/peer are
computed pair by pair from this one invocation. ``--parts`` runs a subset (the section then says which ran).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import costs  # noqa: E402
import load  # noqa: E402
import ours  # noqa: E402
import scaling  # noqa: E402
import send_pipeline as sp  # noqa: E402
from _results import RESULTS, RESULTS_JSON, update_json, write_section  # noqa: E402

import bench.peers as peers  # noqa: E402

SECTION = "## Queues side by side"
PARTS = ("pipeline", "peers", "ours", "scaling", "costs", "load")
say = sp.say


def run_pipeline(quick: bool) -> dict[str, Any]:
    """bench/send_pipeline.py as its own process (it writes its own section only with ``--write``)."""
    out = Path(tempfile.mkstemp(prefix="koinonia-pipeline-", suffix=".json")[1])
    cmd = [sys.executable, str(ROOT / "bench" / "send_pipeline.py"), "--json", str(out)]
    cmd += ["--quick", "--no-write"] if quick else ["--write"]
    say(f"pipeline: {' '.join(cmd[1:])}")
    subprocess.run(cmd, cwd=ROOT, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    return result


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _fmt(value: Any, spec: str = ",.0f", unit: str = "") -> str:
    return f"{value:{spec}}{unit}" if isinstance(value, int | float) else "n/a"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, how it compares, verdict) for each target of the issue that this run measured."""
    rows: list[tuple[str, str, str, str]] = []
    p, o = results.get("peers"), results.get("ours")
    if p and o:
        ours_50 = o.get("drain_msgs_per_s_50ms")
        best = max(
            ((name, f.get("drain_msgs_per_s_50ms") or 0.0) for name, f in p["peers"].items()), key=lambda x: x[1], default=None
        )
        ceiling = p.get("ceiling_msgs_per_s_50ms")
        if best and ours_50:
            ratio = ours_50 / best[1] if best[1] else None
            rows.append((
                "Drain at 50 ms, one process: >= 1.5x the best peer",
                f"{_fmt(ours_50)} msg/s vs {best[0]} {_fmt(best[1])}",
                f"{_fmt(ratio, '.2f', 'x')}", _verdict(ratio is not None and ratio >= 1.5),
            ))  # fmt: skip
        if ceiling and ours_50:
            share = ours_50 / ceiling
            rows.append((
                "Drain at 50 ms: >= 80% of the no-queue ceiling",
                f"{_fmt(ours_50)} of {_fmt(ceiling)} msg/s", f"{share:.0%}", _verdict(share >= 0.8),
            ))  # fmt: skip
        accept = o.get("accept_per_s_broadcast")
        ok = accept is not None and accept >= 10_000
        rows.append(("Accept through broadcasts: >= 10,000 msg/s", f"{_fmt(accept)} msg/s", "", _verdict(ok)))
    pipe = results.get("pipeline")
    if pipe:
        single, bcast, fair = pipe.get("accept_p50_ms_1"), pipe.get("accept_ms_1000"), pipe.get("fairness_p99_s")
        ok = single is not None and single < 5
        rows.append(("Accept, 1 recipient, p50 over HTTP: < 5 ms", _fmt(single, ".2f", " ms"), "", _verdict(ok)))
        ok = bcast is not None and bcast < 150
        rows.append(("Accept, 1,000-recipient broadcast: < 150 ms", _fmt(bcast, ".0f", " ms"), "", _verdict(ok)))
        ok = fair is not None and fair < 1
        rows.append(("Fairness: church B p99 while A's 20,000 drain: < 1 s", _fmt(fair, ".3f", " s"), "", _verdict(ok)))
    lo = results.get("load")
    if lo:
        p95, errors = lo.get("load_p95_ms"), lo.get("load_errors")
        rows.append((
            f"Load: {lo.get('load_clients')} clients, p95 < 50 ms, 0 errors",
            f"p95 {_fmt(p95, '.1f', ' ms')}, {_fmt(errors)} errors", "",
            _verdict(p95 is not None and p95 < 50 and errors == 0),
        ))  # fmt: skip
    sc = results.get("scaling")
    scale = _get(sc, "drain_scaling")
    if scale and scale.get("1") and scale.get("2"):
        ratio = scale["2"] / scale["1"]
        measured = f"1: {_fmt(scale['1'])}, 2: {_fmt(scale['2'])} msg/s"
        rows.append(("Two consume processes scale", measured, f"{ratio:.2f}x", _verdict(ratio > 1.2)))
    return rows


def ratios(results: dict[str, Any]) -> str:
    """Ours / each peer, pair by pair, at each latency and for enqueue."""
    p, o = results.get("peers"), results.get("ours")
    if not (p and o):
        return ""
    lines = ["| ours / peer | enqueue | drain 0 ms | drain 50 ms |", "|---|---:|---:|---:|"]
    for name, f in p["peers"].items():
        cells = []
        for key in ("enqueue_per_s", "drain_msgs_per_s_0ms", "drain_msgs_per_s_50ms"):
            mine, theirs = o.get(key), f.get(key)
            cells.append(_fmt(mine / theirs, ".2f", "x") if mine and theirs else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def json_keys(results: dict[str, Any]) -> dict[str, Any]:
    """The results.json keys the issue names (the send-pipeline keys are send_pipeline.py's own)."""
    out: dict[str, Any] = {}
    p, o, sc = results.get("peers"), results.get("ours"), results.get("scaling")
    if p:
        out["peers"] = {
            name: {k: f.get(k) for k in ("version", "enqueue_per_s", "drain_msgs_per_s_0ms", "drain_msgs_per_s_50ms", "rss_mb")}
            for name, f in p["peers"].items()
        }
        out["ceiling_msgs_per_s_50ms"] = p.get("ceiling_msgs_per_s_50ms")
        out["ceiling_msgs_per_s_0ms"] = p.get("ceiling_msgs_per_s_0ms")
        out["concurrency"] = p.get("concurrency")
    if o:
        out["drain_msgs_per_s_0ms"] = o.get("drain_msgs_per_s_0ms")
        out["drain_msgs_per_s_50ms_one_process"] = o.get("drain_msgs_per_s_50ms")
        out["enqueue_per_s"] = o.get("enqueue_per_s")
        out["accept_per_s_broadcast"] = o.get("accept_per_s_broadcast")
        out.setdefault("concurrency", o.get("concurrency"))
    if sc:
        out["drain_scaling"] = sc.get("drain_scaling")
    out["compare"] = results
    return out


def render(results: dict[str, Any], ran: list[str], quick: bool, started: str) -> str:
    lines = [
        SECTION,
        "",
        f"Date: {started}  ",
        f"Command: `python bench/compare.py{' --quick' if quick else ' --write'}`"
        + (f" (parts: {', '.join(ran)})" if tuple(ran) != PARTS else "")
        + "  ",
        f"Machine: {sp.machine_line()}  ",
        f"Code measured: {sp.code_state()[0]}",
        "",
    ]
    rows = targets(results)
    if rows:
        lines += ["### Targets", "", "| target | measured | ratio | verdict |", "|---|---:|---:|---|"]
        lines += [f"| {t} | {m} | {r} | {v} |" for t, m, r, v in rows]
        lines.append("")
    parts: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
        ("peers", "### The peers and the no-queue ceiling", peers.render),
        ("ours", "### Ours, the same job through the real path", ours.render),
        ("scaling", "### Scaling: consumer processes and N", scaling.render),
        ("costs", "### Per-message costs and profiles", costs.render),
        ("load", "### Load: concurrent clients through functions-framework", load.render),
    ]
    if results.get("peers") and results.get("ours"):
        lines += ["### Ours against each peer (this run)", "", ratios(results), ""]
    for name, heading, render_part in parts:
        if results.get(name):
            lines += [heading, "", render_part(results[name]).rstrip("\n"), ""]
    if results.get("pipeline"):
        lines += [
            "Accept latency, the 1,000-recipient accept and fairness are in the \"Send pipeline\" section "
            "(bench/send_pipeline.py, run first by this command).",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny N, one run each (the CI smoke); writes nothing")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md and results.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--n", type=int, help="messages per drain for peers and ours (default 5,000)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3)")
    parser.add_argument("--sizes", help="scaling sizes, e.g. 10000,100000,1000000 (the default)")
    parser.add_argument("--http", choices=("per-connection", "shared"), default="per-connection",
                        help="how the peers' jobs hold HTTP connections (bench/peers/job.py)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every part's result to this file")
    parser.add_argument("--reuse", type=Path, help="take the parts not run now from this earlier --json file")
    args = parser.parse_args()
    ran = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(ran) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    say(f"machine: {sp.machine_line()}")
    results: dict[str, Any] = {}
    if args.reuse:
        earlier = json.loads(args.reuse.read_text())
        results.update({part: earlier[part] for part in PARTS if part in earlier and part not in ran})
        say(f"reusing {', '.join(results)} from {args.reuse}")
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    errors: dict[str, str] = {}
    for part in ran:
        say(f"\n=== {part} ===")
        try:
            results[part] = run_part(part, args, sizes)
        except (Exception, SystemExit) as exc:  # one part failing must not lose the others' figures
            errors[part] = f"{type(exc).__name__}: {exc}"
            say(f"{part} FAILED: {errors[part]}")
        if args.json:  # after every part: a long run that dies later keeps what it measured (--reuse takes it)
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    section = render(results, [p for p in PARTS if p in results], args.quick, started)
    say()
    say(section)
    failed = sorted(errors) + [name for name in ("peers",) if results.get(name) and not results[name].get("ok", True)]
    if args.write and not args.quick and not failed:
        write_section(SECTION, section)
        update_json(json_keys(results))
        say(f"wrote {RESULTS.relative_to(ROOT)} ({SECTION}) and {RESULTS_JSON.relative_to(ROOT)}")
    if failed:
        say(f"not clean: {', '.join(failed)} (see above); nothing written")
        return 1
    return 0


def run_part(part: str, args: argparse.Namespace, sizes: list[int] | None) -> dict[str, Any]:
    if part == "pipeline":
        return run_pipeline(args.quick)
    if part == "peers":
        return peers.run(peers.PeersConfig.make(n=args.n, runs=args.runs, quick=args.quick, http=args.http))
    if part == "ours":
        return ours.run(ours.Config.make(n=args.n, runs=args.runs, quick=args.quick))
    if part == "scaling":
        return scaling.run(scaling.Config.make(runs=args.runs, quick=args.quick, sizes=sizes))
    if part == "costs":
        return costs.run(costs.Config.make(quick=args.quick))
    if part == "load":
        return load.run(load.LoadConfig.from_orchestrator(quick=args.quick))
    raise ValueError(f"unknown part {part}")


if __name__ == "__main__":
    raise SystemExit(main())
