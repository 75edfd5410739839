"""BullMQ's Python port: asyncio Worker with ``concurrency`` jobs at once."""

from __future__ import annotations

import asyncio
import time

from bullmq import Queue

from .base import PYTHON, Enqueued, Peer, Setup

BULK = 1000  # jobs per addBulk call (one Lua script per job, sent in one pipeline)


class BullMQ(Peer):
    name = "bullmq"
    package = "bullmq"
    enqueue_mode = f"bulk (Queue.addBulk, {BULK} jobs per call)"
    configuration = (
        "`Worker(queue, processor, {'concurrency': C})` in its own process (BullMQ has no worker CLI), "
        "jobs `removeOnComplete` (results off)"
    )
    http_client = "one httpx.AsyncClient per worker, shared by all jobs"
    kind = "asyncio"

    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        return asyncio.run(self._enqueue(setup, numbers))

    async def _enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        queue = Queue(setup.queue, {"connection": setup.redis_url, "prefix": setup.prefix})
        try:
            at: list[float] = []
            started = time.perf_counter()
            for start in range(0, len(numbers), BULK):
                chunk = numbers[start : start + BULK]
                await queue.addBulk(
                    [{"name": "send_sms", "data": {"to": to}, "opts": {"removeOnComplete": True}} for to in chunk]
                )
                at.extend([time.time()] * len(chunk))
            return Enqueued(time.perf_counter() - started, at)
        finally:
            await queue.close()

    def worker_command(self, setup: Setup) -> list[str]:
        return [PYTHON, "-m", "bench.peers.bullmq_tasks"]


PEER = BullMQ()
