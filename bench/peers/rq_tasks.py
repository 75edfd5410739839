"""RQ worker settings and job: ``python -m rq.cli worker -c bench.peers.rq_tasks <queue>`` (or ``worker-pool``).

Given as the worker's ``-c`` settings module, this is imported by the worker before it forks a
work-horse per job, so httpx and the client are loaded once (RQ's "preload libraries" advice), not
per job. The parent never sends, so each horse starts with an empty connection pool and opens one.
"""

from __future__ import annotations

from bench.peers import job

SETTINGS = job.settings()
HTTP = job.sync_client(SETTINGS)

REDIS_URL = SETTINGS.redis_url
QUEUES = [SETTINGS.queue]


def send_sms(to: str) -> None:
    job.send_sync(HTTP, to)
