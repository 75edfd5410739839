"""saq: asyncio jobs on Redis; the worker runs ``concurrency`` jobs at once."""

from __future__ import annotations

import asyncio
import time

from saq import Queue

from .base import PYTHON, Enqueued, Peer, Setup


class Saq(Peer):
    name = "saq"
    package = "saq"
    enqueue_mode = "one by one (Queue.enqueue, awaited in turn: saq has no bulk enqueue)"
    configuration = "`python -m saq ...settings`, `concurrency=C` (asyncio, one process), job `ttl=-1` (results off)"
    http_client = "one httpx.AsyncClient per worker, made in the `startup` hook, shared by all jobs"
    kind = "asyncio"

    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        return asyncio.run(self._enqueue(setup, numbers))

    async def _enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        queue = Queue.from_url(setup.redis_url, name=setup.queue)
        await queue.connect()
        try:
            at: list[float] = []
            started = time.perf_counter()
            for to in numbers:
                await queue.enqueue("send_sms", to=to, ttl=-1)
                at.append(time.time())
            return Enqueued(time.perf_counter() - started, at)
        finally:
            await queue.disconnect()

    def worker_command(self, setup: Setup) -> list[str]:
        return [PYTHON, "-m", "saq", "bench.peers.saq_tasks.settings"]


PEER = Saq()
