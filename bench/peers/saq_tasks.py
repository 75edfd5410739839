"""saq worker: ``python -m saq bench.peers.saq_tasks.settings``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from saq.queue.redis import RedisQueue

from bench.peers import job

SETTINGS = job.settings()


async def startup(ctx: dict[str, Any]) -> None:
    ctx["http"] = job.AsyncSender(SETTINGS)  # one AsyncClient per worker, shared by all jobs


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


async def send_sms(ctx: dict[str, Any], *, to: str) -> None:
    await ctx["http"].send(to)


settings = {
    # Queue.from_url(url) would take redis-py's default pool, which (redis-py 8) stops at 100
    # connections and raises beyond: C workers' blocking dequeues need C of them, plus updates.
    "queue": RedisQueue(Redis.from_url(SETTINGS.redis_url, max_connections=2 * SETTINGS.concurrency), name=SETTINGS.queue),
    "functions": [send_sms],
    "concurrency": SETTINGS.concurrency,
    "startup": startup,
    "shutdown": shutdown,
}
