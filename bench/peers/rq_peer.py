"""RQ: its plain worker (one job at a time, a forked work-horse per job: serial by design) and its
worker-pool (several such workers under one supervisor)."""

from __future__ import annotations

import os
import time

from redis import Redis
from rq import Queue

from .base import PYTHON, Enqueued, Peer, Setup

BULK = 1000  # jobs per enqueue_many (one Redis pipeline each)
POOL_WORKERS = 4 * (os.cpu_count() or 1)  # see RqPool


class Rq(Peer):
    name = "rq"
    package = "rq"
    enqueue_mode = f"bulk (Queue.enqueue_many, {BULK} jobs per pipeline)"
    configuration = (
        "`rq worker` (plain: one job at a time, a forked work-horse per job; RQ has no in-process concurrency "
        "setting), `result_ttl=0`, `--quiet`; measured with fewer messages, its rate is steady after a few dozen"
    )
    http_client = "one httpx.Client made when the worker loads its settings module, inherited by each forked work-horse"
    kind = "fork"

    def messages(self, n: int, serial_n: int) -> int:
        return min(n, serial_n)

    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        redis = Redis.from_url(setup.redis_url)
        try:
            queue = Queue(setup.queue, connection=redis)
            at: list[float] = []
            started = time.perf_counter()
            for start in range(0, len(numbers), BULK):
                chunk = numbers[start : start + BULK]
                queue.enqueue_many(
                    [
                        Queue.prepare_data(
                            "bench.peers.rq_tasks.send_sms", (to,), result_ttl=0, job_id=f"{setup.token}-{start + i}"
                        )
                        for i, to in enumerate(chunk)
                    ]
                )
                at.extend([time.time()] * len(chunk))
            return Enqueued(time.perf_counter() - started, at)
        finally:
            redis.close()

    def worker_command(self, setup: Setup) -> list[str]:
        return [
            PYTHON, "-m", "rq.cli", "worker", "-c", "bench.peers.rq_tasks", "--url", setup.redis_url,
            "--name", f"{setup.token}-w", "--quiet", setup.queue,
        ]  # fmt: skip


class RqPool(Rq):
    """``rq worker-pool -n W``: W plain workers (each still one job at a time, a fork per job) under one
    supervisor process. W = 4 per core: a worker spends most of a 50 ms job waiting on the carrier, so
    a core can keep about four forking workers busy; more would only add ~40 MB of process per worker
    and fork contention on 2 cores, and C = 200 processes (the other peers' concurrency) is not a
    configuration anyone runs."""

    name = "rq-pool"
    configuration = (
        f"`rq worker-pool -n {POOL_WORKERS}` ({POOL_WORKERS} plain workers, 4 per core: each waits on the carrier "
        "most of a job, so a core keeps about four busy; 200 forking processes is not a real setup), "
        "`result_ttl=0`, `--quiet`; measured with fewer messages, as the plain worker"
    )

    def messages(self, n: int, serial_n: int) -> int:
        return min(n, serial_n * 2)  # a few dozen jobs per worker: its rate is steady by then

    def worker_command(self, setup: Setup) -> list[str]:
        return [
            PYTHON, "-m", "rq.cli", "worker-pool", "-c", "bench.peers.rq_tasks", "--url", setup.redis_url,
            "-n", str(POOL_WORKERS), "--quiet", setup.queue,
        ]  # fmt: skip


PEER = Rq()
POOL = RqPool()
