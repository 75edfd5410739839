"""The no-queue ceiling: the same N POSTs with no queue at all, from C asyncio tasks in a process of
its own (``python -m bench.peers.ceiling --n N``; the harness starts it like a worker, with the same
``PEERS_*`` variables). The tasks send through :class:`bench.peers.job.AsyncSender`, as the async
peers' jobs do: ``PEERS_HTTP=per-connection`` (C single-connection clients) is the ceiling proper,
what httpx from one asyncio process can reach; ``shared`` (one C-connection client) is the limit the
async peers run into in their idiomatic setup. The gap between a peer and the ceiling in the same
mode is what the peer's queue costs.

Prints one JSON line when done: POST round trips (p50/p99 ms) and the wall time of the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench.peers`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers import job


def describe(http: str) -> str:
    clients = "one shared httpx.AsyncClient with C connections" if http == "shared" else "C single-connection httpx.AsyncClients"
    return f"no queue: C asyncio tasks posting through {clients}, in a process of its own"


async def post_all(s: job.WorkerSettings, numbers: list[str]) -> tuple[list[float], float]:
    """(round trip of each POST in seconds, wall seconds of the whole loop)."""
    pending = iter(numbers)
    round_trips: list[float] = []

    async def task() -> None:
        for to in pending:  # one shared iterator: each number is taken by exactly one task
            started = time.perf_counter()
            await sender.send(to)
            round_trips.append(time.perf_counter() - started)

    sender = job.AsyncSender(s)
    try:
        started = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(s.concurrency)))
        return round_trips, time.perf_counter() - started
    finally:
        await sender.aclose()


def _rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, required=True, help="messages to post (numbers as bench.peers.job.numbers)")
    args = parser.parse_args()
    s = job.settings()  # the carrier URL and C, as for the peers' workers
    round_trips, wall = asyncio.run(post_all(s, job.numbers(args.n)))
    report = {"posted": len(round_trips), "wall_s": wall, "post_p50_ms": _rank(round_trips, 0.5) * 1000,
              "post_p99_ms": _rank(round_trips, 0.99) * 1000}  # fmt: skip
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
