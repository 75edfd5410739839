"""BullMQ (Python) worker: ``python -m bench.peers.bullmq_tasks``. BullMQ has no worker CLI: a Worker
is an object an application creates in its own process, as here, and closes on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from bullmq import Worker

from bench.peers import job


async def main() -> None:
    s = job.settings()
    http = job.AsyncSender(s)  # one AsyncClient per worker, shared by all jobs

    async def process(task: Any, _token: str) -> None:
        await http.send(task.data["to"])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(s.queue, process, {"connection": s.redis_url, "prefix": s.prefix, "concurrency": s.concurrency})
    try:
        await stop.wait()
    finally:
        await worker.close()
        await http.aclose()


if __name__ == "__main__":
    asyncio.run(main())
