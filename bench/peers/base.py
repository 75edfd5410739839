"""What the harness needs from each peer: enqueue N jobs from the driver, and the command line of one
worker process. Each peer module (``<name>_peer.py``) implements :class:`Peer`; its worker-side code
(the task module the peer's CLI imports by name) is ``<name>_tasks.py``, kept apart so a worker
imports only its queue library, httpx and :mod:`bench.peers.job`."""

from __future__ import annotations

import importlib.metadata
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass

PYTHON = sys.executable


@dataclass(frozen=True)
class Setup:
    """One measured run's names and addresses: the driver uses them directly, the worker gets them as
    ``PEERS_*`` variables (read back by :func:`bench.peers.job.settings`). Every Redis key a peer
    creates holds ``token``, which is how the harness cleans up after it."""

    redis_url: str
    queue: str
    prefix: str
    concurrency: int
    carrier_url: str
    token: str
    http: str = "shared"  # how jobs hold HTTP connections (bench.peers.job.HTTP_MODES)

    def worker_env(self) -> dict[str, str]:
        return {
            "PEERS_REDIS_URL": self.redis_url,
            "PEERS_QUEUE": self.queue,
            "PEERS_PREFIX": self.prefix,
            "PEERS_CONCURRENCY": str(self.concurrency),
            "PEERS_CARRIER_URL": self.carrier_url,
            "PEERS_HTTP": self.http,
        }


@dataclass
class Enqueued:
    seconds: float  # the enqueue calls alone: connecting before and closing after are not counted
    at: list[float]  # wall clock (time.time()) when each job was in Redis, in the order of the numbers given


class Peer(ABC):
    name: str  # as reported (results.json key)
    package: str  # distribution whose version is reported
    enqueue_mode: str  # how the driver enqueues: "bulk (...)" or "one by one (...)"
    configuration: str  # the worker as started, and why it is the idiomatic high-concurrency setup
    http_client: str  # which httpx client the task uses (PEERS_HTTP=shared), and why
    kind: str  # "asyncio", "threads" or "fork" (a process per job: RQ)

    def version(self) -> str:
        return importlib.metadata.version(self.package)

    def http(self, mode: str) -> str:
        """How the jobs reach the carrier in HTTP ``mode`` (bench.peers.job.HTTP_MODES)."""
        if mode == "shared" or self.kind == "fork":
            return self.http_client
        if self.kind == "asyncio":
            return "C single-connection httpx.AsyncClients, one lent to each job in flight (PEERS_HTTP=per-connection)"
        return "one single-connection httpx.Client per thread (PEERS_HTTP=per-connection)"

    def messages(self, n: int, serial_n: int) -> int:
        """How many messages this peer is measured with (serial peers: fewer, see ``serial_n``)."""
        return n

    @abstractmethod
    def enqueue(self, setup: Setup, numbers: list[str]) -> Enqueued:
        """Put one job per number on the peer's queue, no worker running."""

    @abstractmethod
    def worker_command(self, setup: Setup) -> list[str]:
        """One worker process (it may fork helpers of its own) running ``setup.concurrency`` jobs at once."""
