"""Celery with the threads pool: one worker process, ``--concurrency`` threads, Redis broker, no results."""

from __future__ import annotations

import time

from celery import Celery

from .base import PYTHON, Enqueued, Peer, Setup


def make_app(name: str, redis_url: str, queue: str, prefix: str) -> Celery:
    """The app as both sides configure it. ``global_keyprefix`` puts every broker key (queue, unacked
    index, bindings) under the run's prefix; results are off (no backend, ``task_ignore_result``)."""
    app = Celery(name, broker=redis_url)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


class CeleryThreads(Peer):
    name = "celery"
    package = "celery"
    enqueue_mode = "one by one (send_task, as .delay() does: Celery has no bulk publish)"
    configuration = (
        "`celery worker --pool=threads --concurrency=C` (threads are Celery's pool for I/O-bound work "
        "without monkey-patching), Redis broker, results off, default prefetch (4 x C), "
        "`--without-mingle --without-gossip --without-heartbeat --loglevel=WARNING`"
    )
    http_client = "one httpx.Client per worker process shared by its threads (httpx's pool is thread-safe)"
    kind = "threads"

    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        app = make_app("peers-driver", setup.redis_url, setup.queue, setup.prefix)
        try:
            with app.producer_or_acquire() as producer:  # one connection for all publishes, as a web worker holds
                at: list[float] = []
                started = time.perf_counter()
                for to in numbers:
                    app.send_task("send_sms", args=(to,), queue=setup.queue, producer=producer)
                    at.append(time.time())
                return Enqueued(time.perf_counter() - started, at)
        finally:
            app.close()

    def worker_command(self, setup: Setup) -> list[str]:
        return [
            PYTHON, "-m", "celery", "-A", "bench.peers.celery_tasks", "worker",
            "--pool=threads", f"--concurrency={setup.concurrency}", "-Q", setup.queue,
            "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel=WARNING",
        ]  # fmt: skip


PEER = CeleryThreads()
