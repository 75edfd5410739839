"""Dramatiq worker: ``python -m dramatiq bench.peers.dramatiq_tasks --processes 1 --threads C``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import job

SETTINGS = job.settings()
HTTP = job.SyncSender(SETTINGS)  # one Client shared by the threads (or one per thread: PEERS_HTTP)

dramatiq.set_broker(RedisBroker(url=SETTINGS.redis_url, namespace=SETTINGS.prefix))  # type: ignore[no-untyped-call]


@dramatiq.actor(actor_name="send_sms", queue_name=SETTINGS.queue)
def send_sms(to: str) -> None:
    HTTP.send(to)
