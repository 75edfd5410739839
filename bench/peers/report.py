"""The result dict (medians of the runs, per contender and latency) and its markdown for RESULTS.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

from . import PeersConfig, ceiling
from .base import Peer
from .harness import CEILINGS, Run, sp

# Summary ----------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return round(sp.median(values), 3) if values else None


def _lat_key(latency_ms: float) -> str:
    return f"{latency_ms:g}ms"


def summarise(config: PeersConfig, runs: list[Run], peers: dict[str, Peer], errors: dict[str, str]) -> dict[str, Any]:
    def of(name: str, latency: float | None = None) -> list[Run]:
        return [r for r in runs if r.contender == name and (latency is None or r.latency_ms == latency) and r.ok]

    def figures(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for latency in config.latencies:
            k = _lat_key(latency)
            rs = of(name, latency)
            out[f"drain_msgs_per_s_{k}"] = _median([r.drain_per_s for r in rs])
            out[f"rss_mb_{k}"] = _median([r.rss_mb for r in rs])
            out[f"pss_mb_{k}"] = _median([r.pss_mb for r in rs])
            out[f"cpu_s_{k}"] = _median([r.cpu_s for r in rs])
            out[f"cpu_ms_per_msg_{k}"] = _median([r.cpu_ms_per_msg for r in rs])
            out[f"startup_s_{k}"] = _median([r.startup_s for r in rs])
            if name in CEILINGS:
                out[f"post_p50_ms_{k}"] = _median([r.post_p50_ms or 0.0 for r in rs])
                out[f"post_p99_ms_{k}"] = _median([r.post_p99_ms or 0.0 for r in rs])
            else:
                out[f"p50_ms_{k}"] = _median([r.latency_p50_ms or 0.0 for r in rs])
                out[f"p99_ms_{k}"] = _median([r.latency_p99_ms or 0.0 for r in rs])
        everything = [r for r in runs if r.contender == name]
        rss_key = f"rss_mb_{_lat_key(50.0)}" if 50.0 in config.latencies else f"rss_mb_{_lat_key(config.latencies[-1])}"
        out["rss_mb"] = out.get(rss_key)
        out["pss_mb"] = out.get(rss_key.replace("rss", "pss"))
        out["messages"] = everything[0].messages if everything else None
        out["runs_clean"] = sum(1 for r in everything if r.ok)
        out["runs_total"] = len(everything)
        out["duplicates"] = sum(r.duplicates for r in everything)
        out["missing"] = sum(r.missing for r in everything)
        out["processes"] = max((r.processes for r in everything), default=0)
        out["per_run"] = [
            {
                "latency_ms": r.latency_ms,
                "round": r.round,
                "drain_msgs_per_s": round(r.drain_per_s, 1),
                "enqueue_per_s": round(r.enqueue_per_s, 1) if r.enqueue_per_s else None,
                "p50_ms": round(r.latency_p50_ms, 1) if r.latency_p50_ms is not None else None,
                "p99_ms": round(r.latency_p99_ms, 1) if r.latency_p99_ms is not None else None,
                "rss_mb": round(r.rss_mb, 1),
                "pss_mb": round(r.pss_mb, 1),
                "cpu_s": round(r.cpu_s, 3),
                "startup_s": round(r.startup_s, 3),
                "other_share": round(r.other_share, 3),
                "cpu_other": r.cpu_other,
                "problems": r.problems,
            }
            for r in everything
        ]
        return out

    result: dict[str, Any] = {"peers": {}, "errors": dict(errors)}
    for name, peer in peers.items():
        item: dict[str, Any] = {
            "version": peer.version(),
            "enqueue_per_s": _median([r.enqueue_per_s for r in of(name) if r.enqueue_per_s]),
            "enqueue_mode": peer.enqueue_mode,
            "configuration": peer.configuration,
            "http_client": peer.http(config.http),
        }
        item.update(figures(name))
        if name in errors:
            item["error"] = errors[name]
        result["peers"][name] = item
    for name, mode in CEILINGS.items():
        ceil = figures(name)
        ceil["version"] = f"httpx {_version('httpx')}"
        ceil["configuration"] = ceiling.describe(mode)
        result[name.replace("-", "_")] = ceil
    for latency in config.latencies:
        k = _lat_key(latency)
        result[f"ceiling_msgs_per_s_{k}"] = result["ceiling"].get(f"drain_msgs_per_s_{k}")
        result[f"ceiling_shared_msgs_per_s_{k}"] = result["ceiling_shared"].get(f"drain_msgs_per_s_{k}")
        rated = [(p[f"drain_msgs_per_s_{k}"], name) for name, p in result["peers"].items() if p.get(f"drain_msgs_per_s_{k}")]
        if rated:
            best, best_name = max(rated)
            result[f"best_peer_{k}"] = {"name": best_name, "drain_msgs_per_s": best}
    result.update(
        {
            "concurrency": config.concurrency,
            "n": config.n,
            "serial_n": config.serial_n,
            "runs": config.runs,
            "latencies_ms": list(config.latencies),
            "quick": config.quick,
            "http": config.http,
            "ok": not errors and all(r.ok for r in runs),
            "runs_not_clean": sum(1 for r in runs if not r.ok),
            "runs_disturbed_by_other_work": sum(1 for r in runs if r.other_share > sp.DISTURBED),
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "cpu": sp.cpu_model(),
            },
        }
    )
    return result


def _version(package: str) -> str:
    return importlib.metadata.version(package)


# Markdown --------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def render(result: dict[str, Any]) -> str:
    """Markdown rows for RESULTS.md: the table, then how each peer ran (no heading)."""
    lats = result["latencies_ms"]
    hi = _lat_key(max(lats))
    ceil_hi = result.get(f"ceiling_msgs_per_s_{hi}")
    head = ["contender", "version", "enqueue/s"]
    head += [f"drain {_lat_key(x).replace('ms', ' ms')}" for x in lats]
    head += [f"% of ceiling ({hi.replace('ms', ' ms')})", f"enqueue->carrier p50 / p99 ({hi.replace('ms', ' ms')})"]
    head += ["peak RSS (PSS)", f"CPU/msg ({hi.replace('ms', ' ms')})", "start-up", "N", "clean runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def row(name: str, p: dict[str, Any], enqueue: str, latency: str) -> None:
        drains = [_fmt(p.get(f"drain_msgs_per_s_{_lat_key(x)}")) for x in lats]
        share = p.get(f"drain_msgs_per_s_{hi}")
        pct = f"{share / ceil_hi:.0%}" if share and ceil_hi else "n/a"
        cells = [name, p.get("version", ""), enqueue, *drains, pct, latency]
        rss = f"{_fmt(p.get('rss_mb'), '.0f')} MB ({_fmt(p.get('pss_mb'), '.0f')})"
        cells += [rss, _fmt(p.get(f"cpu_ms_per_msg_{hi}"), ".2f", " ms")]
        cells += [_fmt(p.get(f"startup_s_{hi}"), ".1f", " s"), _fmt(p.get("messages"))]
        cells.append(f"{p.get('runs_clean')}/{p.get('runs_total')}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    for key, label in (("ceiling", "**no queue (ceiling)**"), ("ceiling_shared", "no queue, one shared client")):
        ceil = result[key]
        post = f"POST {_fmt(ceil.get(f'post_p50_ms_{hi}'), '.0f')} / {_fmt(ceil.get(f'post_p99_ms_{hi}'), '.0f')} ms"
        row(label, ceil, "—", post)
    for name, p in result["peers"].items():
        row(name, p, _fmt(p.get("enqueue_per_s")), f"{_fmt(p.get(f'p50_ms_{hi}'))} / {_fmt(p.get(f'p99_ms_{hi}'))} ms")

    notes = [
        "",
        f"Peers: each delivers N SMS (one `POST /v2/messages` per job, a distinct `to` each) to the same sandbox "
        f"process through the same Redis, one worker process each, {result['concurrency']} jobs in flight "
        f"(RQ: see below); figures are medians of {result['runs']} run(s) per latency, contenders interleaved. "
        "Drain = N / (last - first ledger `received_at`); the worker starts after all N are enqueued, so "
        "enqueue->carrier includes the whole backlog's wait and the worker's start-up (shown); peak RSS = the "
        "kernel's VmHWM summed over the worker's processes, which counts a forking peer's shared pages once per "
        "process (PSS, the peak of the summed proportional set size, splits them); "
        "CPU/msg = worker CPU from its first delivery to its last, per message. Every run checked: all N in "
        "the ledger exactly once. The peers only POST: no database, no claim or outcome writes.",
        "",
        f"HTTP (`{result['http']}`): "
        + (
            "each worker's jobs share one httpx client with C connections, the idiomatic setup. httpcore's pool "
            "walks all its connections on every request (bench/RESULTS.md, Carrier client cost), so at C = 200 "
            "httpx itself bounds the async peers: compare them with the shared-client no-queue row, or run with "
            "`--http per-connection`."
            if result["http"] == "shared"
            else "each job in flight holds one of C single-connection httpx clients (threads: one per thread), "
            "which takes httpcore's per-request pool bookkeeping out of the comparison; the idiomatic shared "
            "client is `--http shared`."
        ),
        "",
    ]
    for name, p in result["peers"].items():
        notes.append(
            f"- **{name}** {p.get('version', '')}: {p.get('configuration', '')}; enqueue {p.get('enqueue_mode', '')}; "
            f"HTTP: {p.get('http_client', '')}." + (f" **Not measured: {p['error']}**" if p.get("error") else "")
        )
    for key in ("ceiling", "ceiling_shared"):
        notes.append(f"- **{key.replace('_', ' ')}**: {result[key].get('configuration', '')}, {result[key].get('version', '')}.")
    return "\n".join(lines + notes) + "\n"
