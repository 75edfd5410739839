"""Dramatiq: one worker process with ``--threads`` threads, Redis broker, no results middleware."""

from __future__ import annotations

import time

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from .base import PYTHON, Enqueued, Peer, Setup


class Dramatiq(Peer):
    name = "dramatiq"
    package = "dramatiq"
    enqueue_mode = "one by one (broker.enqueue of the actor's message, as actor.send does: no bulk enqueue)"
    configuration = (
        "`dramatiq bench.peers.dramatiq_tasks --processes 1 --threads C` (the CLI's supervisor plus one worker "
        "process; threads are Dramatiq's concurrency model), RedisBroker, default middleware, no Results"
    )
    http_client = "one httpx.Client per worker process shared by its threads (httpx's pool is thread-safe)"
    kind = "threads"

    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        broker = RedisBroker(url=setup.redis_url, namespace=setup.prefix)  # type: ignore[no-untyped-call]
        broker.declare_queue(setup.queue)
        try:
            at: list[float] = []
            started = time.perf_counter()
            for to in numbers:
                broker.enqueue(Message(queue_name=setup.queue, actor_name="send_sms", args=(to,), kwargs={}, options={}))
                at.append(time.time())
            return Enqueued(time.perf_counter() - started, at)
        finally:
            broker.close()

    def worker_command(self, setup: Setup) -> list[str]:
        return [
            PYTHON, "-m", "dramatiq", "bench.peers.dramatiq_tasks",
            "--processes", "1", "--threads", str(setup.concurrency), "--queues", setup.queue,
        ]  # fmt: skip


PEER = Dramatiq()
