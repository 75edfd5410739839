"""arq worker: ``python -m arq bench.peers.arq_tasks.WorkerSettings --custom-log-dict bench.peers.arq_tasks.LOG_CONFIG``."""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from bench.peers import job

SETTINGS = job.settings()

# arq's CLI logs every job at INFO by default; nobody draining hundreds of jobs a second keeps that on,
# and no other peer logs per job here.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": "WARNING"}},
}


async def startup(ctx: dict[str, Any]) -> None:
    ctx["http"] = job.AsyncSender(SETTINGS)  # one AsyncClient per worker, shared by all jobs (arq's docs do this)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


async def send_sms(ctx: dict[str, Any], to: str) -> None:
    await ctx["http"].send(to)


class WorkerSettings:
    functions = [send_sms]
    redis_settings = RedisSettings.from_dsn(SETTINGS.redis_url)
    queue_name = SETTINGS.queue
    max_jobs = SETTINGS.concurrency
    keep_result = 0  # results off, as for every peer
    on_startup = startup
    on_shutdown = shutdown
