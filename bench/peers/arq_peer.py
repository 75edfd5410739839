"""arq: asyncio jobs on Redis; the worker runs ``max_jobs`` coroutines at once."""

from __future__ import annotations

import asyncio
import time

from arq import create_pool
from arq.connections import RedisSettings

from .base import PYTHON, Enqueued, Peer, Setup


class Arq(Peer):
    name = "arq"
    package = "arq"
    enqueue_mode = "one by one (ArqRedis.enqueue_job, awaited in turn: arq has no bulk enqueue)"
    configuration = (
        "`python -m arq ...WorkerSettings`, `max_jobs=C` (asyncio: C jobs in flight in one process), "
        "`keep_result=0`, per-job INFO logging off"
    )
    http_client = "one httpx.AsyncClient per worker, made in `on_startup`, shared by all jobs"
    kind = "asyncio"

    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        return asyncio.run(self._enqueue(setup, numbers))

    async def _enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        redis = await create_pool(RedisSettings.from_dsn(setup.redis_url), default_queue_name=setup.queue)
        try:
            at: list[float] = []
            started = time.perf_counter()
            for i, to in enumerate(numbers):
                # Our own job id only so every key holds the run token (cleanup); arq checks ids either way.
                await redis.enqueue_job("send_sms", to, _job_id=f"{setup.token}:{i}")
                at.append(time.time())
            return Enqueued(time.perf_counter() - started, at)
        finally:
            await redis.aclose()

    def worker_command(self, setup: Setup) -> list[str]:
        module = "bench.peers.arq_tasks"
        return [PYTHON, "-m", "arq", f"{module}.WorkerSettings", "--custom-log-dict", f"{module}.LOG_CONFIG"]


PEER = Arq()
