"""The Python queues people use, doing our job side by side: ``python -m bench.peers [--quick]``.

Each peer (arq, saq, Celery threads, Dramatiq threads, RQ and its worker-pool, BullMQ's Python port)
delivers N SMS to the same Telnyx sandbox process through the same Redis server, one worker process
each at the same in-flight concurrency C; the no-queue ceiling posts the same N from C asyncio tasks.
bench/peers/harness.py measures (enqueue rate, drain rate at each carrier latency, enqueue-to-carrier
p50/p99, worker peak RSS and CPU; medians of runs; every run checked against the sandbox ledger).

This module stays import-light: the peers' worker processes import ``bench.peers.<peer>_tasks``, which
runs this file first, and whatever it imported would count in their RSS. The harness is imported only
when :func:`run`, :func:`render` or :func:`main` is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PEER_NAMES = ("arq", "saq", "celery", "dramatiq", "rq", "rq-pool", "bullmq")

FULL_N = 5_000
QUICK_N = 300
FULL_SERIAL_N = 250
QUICK_SERIAL_N = 20


@dataclass
class PeersConfig:
    n: int = FULL_N  # messages per run (serial peers: see serial_n)
    runs: int = 3  # figures are medians of these
    concurrency: int = 200  # C: jobs in flight per worker process (and HTTP connections)
    latencies: tuple[float, ...] = (0.0, 50.0)  # sandbox latency, ms
    quick: bool = False
    peers: tuple[str, ...] = PEER_NAMES  # which to run (the ceiling always runs)
    # RQ is serial by design (~10-50 jobs/s): its plain worker gets min(n, serial_n) messages, its pool
    # min(n, 2 x serial_n); the rate of a serial worker is steady after a few dozen jobs.
    serial_n: int = FULL_SERIAL_N
    wait_quiet: bool = True  # before each run, wait (bounded) for the shared machine to be nearly idle
    redis_db: int = 9  # a Redis db index of its own on the machine's server; keys removed by run token
    # How the peers' jobs hold connections: "shared" (one httpx client per worker with C connections, the
    # idiomatic setup) or "per-connection" (C single-connection clients); see bench/peers/job.py.
    http: str = "shared"

    @classmethod
    def make(
        cls,
        n: int | None = None,
        runs: int | None = None,
        concurrency: int | None = None,
        latencies: tuple[float, ...] | list[float] | None = None,
        quick: bool = False,
        peers: tuple[str, ...] | list[str] | None = None,
        http: str | None = None,
    ) -> PeersConfig:
        """From the orchestrator's arguments; ``None`` takes the mode's default (``quick``: N=300, one
        run, no waiting for an idle machine)."""
        return cls(
            n=n or (QUICK_N if quick else FULL_N),
            runs=runs or (1 if quick else 3),
            concurrency=concurrency or 200,
            latencies=tuple(float(x) for x in latencies) if latencies else (0.0, 50.0),
            quick=quick,
            peers=tuple(peers) if peers else PEER_NAMES,
            serial_n=QUICK_SERIAL_N if quick else FULL_SERIAL_N,
            wait_quiet=not quick,
            http=http or "shared",
        )


def run(config: PeersConfig) -> dict[str, Any]:
    from .harness import run as _run

    return _run(config)


def render(result: dict[str, Any]) -> str:
    from .report import render as _render

    return _render(result)


def main(argv: list[str] | None = None) -> int:
    from .harness import main as _main

    return _main(argv)


__all__ = ["PEER_NAMES", "PeersConfig", "main", "render", "run"]
