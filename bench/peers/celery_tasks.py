"""Celery worker: ``python -m celery -A bench.peers.celery_tasks worker --pool=threads ...``."""

from __future__ import annotations

from bench.peers import job
from bench.peers.celery_peer import make_app

SETTINGS = job.settings()
HTTP = job.SyncSender(SETTINGS)  # one Client shared by the threads (or one per thread: PEERS_HTTP)

app = make_app("peers", SETTINGS.redis_url, SETTINGS.queue, SETTINGS.prefix)


@app.task(name="send_sms")  # type: ignore[untyped-decorator]
def send_sms(to: str) -> None:
    HTTP.send(to)
