"""The one job every contender runs: POST one Telnyx-shaped SMS to the sandbox carrier.

Imported by the peers' worker processes, so it stays small (httpx, json, os): whatever a worker
imports shows in the peak RSS we report for that peer. Workers learn where Redis, their queue and the
carrier are from ``PEERS_*`` environment variables the harness sets, since Celery, Dramatiq and RQ
import their task modules by name and take no other arguments.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from dataclasses import dataclass

import httpx

API_KEY = "KEY_sandbox"  # the sandbox's default key
FROM = "+13125550100"
TEXT = "Sunday service moves to 10am this week. Bring a friend! Reply STOP to opt out."
TIMEOUT = httpx.Timeout(30.0)  # far above any answer at 50 ms; a stuck request shows as a failed run, not a hang
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
HTTP_MODES = ("shared", "per-connection")


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str  # redis://host:port/db
    queue: str  # the peer's queue name for this run (holds the run token)
    prefix: str  # key prefix / namespace for peers that take one (holds the run token)
    concurrency: int  # in-flight jobs (and HTTP connections) per worker process
    carrier_url: str  # the sandbox, http://127.0.0.1:<port>
    http: str = "shared"  # HTTP_MODES: see AsyncSender / SyncSender


def settings() -> WorkerSettings:
    """The worker's settings from the ``PEERS_*`` variables (set by bench/peers/harness.py)."""
    try:
        return WorkerSettings(
            redis_url=os.environ["PEERS_REDIS_URL"],
            queue=os.environ["PEERS_QUEUE"],
            prefix=os.environ["PEERS_PREFIX"],
            concurrency=int(os.environ["PEERS_CONCURRENCY"]),
            carrier_url=os.environ["PEERS_CARRIER_URL"],
            http=os.environ.get("PEERS_HTTP", "shared"),
        )
    except KeyError as exc:
        raise SystemExit(
            f"{exc.args[0]} is not set: peer workers are started by the benchmark (python -m bench.peers), not by hand"
        ) from None


def numbers(count: int, start: int = 0) -> list[str]:
    """Distinct recipients, one per message, so the sandbox ledger can be joined by ``to``
    (the same format as tests/factories.numbers)."""
    return [f"+1312{2000000 + start + i:07d}" for i in range(count)]


def payload(to: str) -> dict[str, str]:
    return {"from": FROM, "to": to, "text": TEXT}


_SSL: ssl.SSLContext | None = None


def _ssl() -> ssl.SSLContext:
    """One TLS context for every client of the process (the carrier is plain HTTP, but httpx builds a
    context per client otherwise: ~18 ms of CPU each, which per-connection clients would pay C times)."""
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context()
    return _SSL


def limits(connections: int) -> httpx.Limits:
    """Every connection kept alive: a contender never reconnects between jobs."""
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


def async_client(s: WorkerSettings, connections: int | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=s.carrier_url, limits=limits(connections or s.concurrency), timeout=TIMEOUT, headers=HEADERS, verify=_ssl()
    )


def sync_client(s: WorkerSettings, connections: int | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=s.carrier_url, limits=limits(connections or s.concurrency), timeout=TIMEOUT, headers=HEADERS, verify=_ssl()
    )


async def send_async(client: httpx.AsyncClient, to: str) -> None:
    response = await client.post("/v2/messages", json=payload(to))
    response.raise_for_status()


def send_sync(client: httpx.Client, to: str) -> None:
    response = client.post("/v2/messages", json=payload(to))
    response.raise_for_status()


class AsyncSender:
    """How an asyncio worker's jobs reach the carrier. ``shared`` (the idiomatic setup, and the
    default): one ``httpx.AsyncClient`` with C connections shared by every job. ``per-connection``:
    C single-connection clients, one lent to each job in flight. httpcore's pool does bookkeeping over
    all its connections on every request (bench/RESULTS.md "Carrier client cost": ~2.7-5 ms of CPU per
    request with 200 connections, ~0.7 ms with one), so the second mode shows what the queue itself
    costs once that is out of the way."""

    def __init__(self, s: WorkerSettings) -> None:
        self.mode = s.http
        if self.mode == "shared":
            self.clients = [async_client(s)]
        else:
            self.clients = [async_client(s, 1) for _ in range(s.concurrency)]
            self.free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
            for client in self.clients:
                self.free.put_nowait(client)

    async def send(self, to: str) -> None:
        if self.mode == "shared":
            await send_async(self.clients[0], to)
            return
        client = await self.free.get()
        try:
            await send_async(client, to)
        finally:
            self.free.put_nowait(client)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class SyncSender:
    """How a threaded worker's jobs reach the carrier: ``shared``, one ``httpx.Client`` with C
    connections for all threads (httpx's pool is thread-safe); ``per-connection``, one
    single-connection client per thread, made on the thread's first job."""

    def __init__(self, s: WorkerSettings) -> None:
        self.settings = s
        self.shared = sync_client(s) if s.http == "shared" else None
        self.local = threading.local()

    def send(self, to: str) -> None:
        client = self.shared
        if client is None:
            client = getattr(self.local, "client", None)
            if client is None:
                client = self.local.client = sync_client(self.settings, 1)
        send_sync(client, to)
