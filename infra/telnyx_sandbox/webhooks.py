"""Signed webhook delivery: ``message.sent`` / ``message.finalized`` for accepted sends,
``message.received`` for simulated inbound messages.

Contract (shared/reference/telnyx.md section 3):

- Envelope ``{"data": {"event_type", "id", "occurred_at", "payload", "record_type": "event"},
  "meta": {"attempt", "delivered_to"}}``; ``payload`` is the message object of the send answer
  (same ``id``, cost, carriers) with ``to[0].status`` ``sent`` or the final status.
- Signed per attempt (see signing.py) over the exact bytes sent.
- A 2xx within ``webhook_timeout_s`` is success; any other answer (3xx included), a timeout or a
  connection error is a failed attempt. ``webhook_attempts`` attempts per URL with exponential
  backoff from ``webhook_retry_base_ms`` (doubling), then the next URL of the chain at once.
  ``meta.attempt`` counts every attempt of one delivery across URLs (1 .. attempts x URLs).
- URL chain of a send: its ``webhook_url`` (or, without one, the profile's
  ``default_webhook_url`` unless ``use_profile_webhooks`` is false), then its
  ``webhook_failover_url``, then the profile URL when the message had its own ("attempted first,
  then those on the profile"). Inbound: ``inbound_webhook_url`` only.

Timing and order: ``message.sent`` is due ``webhook_delay_ms`` after accept, ``message.finalized``
``finalize_delay_ms`` after accept (never before ``message.sent``'s due time). The events of one
message are delivered one after the other: the second starts when the first is done (delivered
or given up) and is due. ``occurred_at`` (and ``sent_at`` / ``completed_at``) are the logical
times, accept time plus the delays, whatever the delivery order. ``sending_failed`` and
``expired`` messages never reached a carrier: they get only ``message.finalized``, ``sent_at`` null.

Faults, drawn from a per-message RNG that is itself drawn, when the message is accepted, from a
stream seeded with ``seed`` (so a message's fate does not depend on how deliveries interleave):
``webhook_reorder_rate`` delivers ``message.finalized`` first, ``webhook_duplicate_rate`` delivers
an event a second time right after the first (same bytes in ``data``: same ``data.id`` and
``occurred_at``; its own attempts, signature and timestamp), ``webhook_fail_rate`` drops an
attempt before it is sent (counted as failure ``injected`` and retried like any failure).

Threads: scheduling runs on the sandbox's loop (from the request handler); ``pending``,
``wait_idle`` and ``cancel_all`` may be called from any thread. Nothing is logged but the exception
type of a sandbox bug (never numbers, bodies or URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from .config import SandboxConfig
from .errors import DEFAULT_DELIVERY_ERRORS, delivery_error
from .faults import STATUSES_WITH_ERRORS
from .ledger import Ledger
from .payload import format_timestamp, status_payload
from .signing import Signer

__all__ = ["EVENT_FINALIZED", "EVENT_RECEIVED", "EVENT_SENT", "MAX_IN_FLIGHT", "WebhookDispatcher", "outbound_urls"]

EVENT_SENT = "message.sent"
EVENT_FINALIZED = "message.finalized"
EVENT_RECEIVED = "message.received"

_log = logging.getLogger(__name__)
_NEVER_SENT = frozenset({"sending_failed", "expired"})
_RNG_SALT = 0x7E1E_400C  # a stream apart from the send faults' RNG
_USER_AGENT = "telnyx-webhooks"
# At most this many attempts are in flight at once; the rest wait their turn (not counted against
# webhook_timeout_s). Deliveries share the loop with POST /v2/messages: a small bound keeps a flood
# of sends to a dead URL from starving the send path (each failing attempt costs ~1 ms of CPU).
MAX_IN_FLIGHT = 16
_LIMITS = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)


def outbound_urls(
    webhook_url: str | None,
    failover_url: str | None,
    use_profile_webhooks: bool,
    profile_url: str | None,
) -> tuple[str, ...]:
    """The delivery chain of a send (empty: no webhooks)."""
    profile = profile_url if use_profile_webhooks else None
    primary = webhook_url or profile
    if not primary:
        return ()
    urls = [primary]
    for url in (failover_url, profile):
        if url and url not in urls:
            urls.append(url)
    return tuple(urls)


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _envelope(data: bytes, attempt: int, url: str) -> bytes:
    meta = b'{"attempt":' + str(attempt).encode() + b',"delivered_to":' + _dumps(url) + b"}"
    return b'{"data":' + data + b',"meta":' + meta + b"}"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()


class WebhookDispatcher:
    """Schedules, signs, sends and retries webhooks on the sandbox's event loop."""

    def __init__(self, ledger: Ledger, signer: Signer, seed: int) -> None:
        self.ledger = ledger
        self.signer = signer  # swapped by SandboxApp when the signing key changes
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._generation = 0  # bumped by cancel_all: older deliveries stop and record nothing
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._rng = random.Random(seed ^ _RNG_SALT)

    # Any thread --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages and inbound events whose deliveries are not finished."""
        with self._lock:
            return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending; False on timeout. Not on the sandbox's own loop."""
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("wait_idle would block the sandbox's event loop")
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed ^ _RNG_SALT)

    def cancel_all(self) -> None:
        """Drop every pending delivery at once (reset): nothing of them is sent or counted after."""
        tasks = self._forget_all()
        loop = self._loop
        if not tasks or loop is None:
            return
        if _running_loop() is loop:
            _cancel(tasks)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: its tasks are gone with it
            loop.call_soon_threadsafe(_cancel, tasks)

    def _forget_all(self) -> list[asyncio.Task[None]]:
        with self._lock:
            self._generation += 1
            tasks = list(self._tasks)
            self._tasks.clear()
            self._pending = 0
            self._idle.notify_all()
        return tasks

    # On the loop -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancel pending deliveries and close the HTTP client (server shutdown)."""
        tasks = self._forget_all()
        _cancel(tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        self._slots = None
        if client is not None:
            await client.aclose()

    def schedule_outbound(
        self,
        config: SandboxConfig,
        payload: dict[str, Any],
        received: datetime,
        urls: tuple[str, ...],
        final_status: str,
        error_code: str | None,
    ) -> None:
        """``message.sent`` then ``message.finalized`` for an accepted send (the handler's call)."""
        admitted = self._admit(config)
        if admitted is None:
            return
        loop, generation, rng = admitted
        due = loop.time()
        self._spawn(
            loop,
            generation,
            self._outbound(generation, config, rng, payload, received, due, urls, final_status, error_code),
        )

    def schedule_inbound(self, config: SandboxConfig, payload: dict[str, Any], received: datetime, url: str) -> None:
        """``message.received`` for a simulated inbound message, delivered at once."""
        admitted = self._admit(config)
        if admitted is None:
            return
        loop, generation, rng = admitted
        self._spawn(loop, generation, self._inbound(generation, config, rng, payload, received, (url,)))

    def _admit(self, config: SandboxConfig) -> tuple[asyncio.AbstractEventLoop, int, random.Random | None] | None:
        loop = _running_loop()
        if loop is not None:
            with self._lock:
                if self._pending < config.webhook_max_pending:
                    self._pending += 1
                    self._loop = loop
                    rng = random.Random(self._rng.getrandbits(64)) if config.webhook_faults else None
                    return loop, self._generation, rng
        self.ledger.record_webhook_dropped()
        return None

    def _spawn(self, loop: asyncio.AbstractEventLoop, generation: int, coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        with self._lock:
            if generation == self._generation:
                self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:  # a sandbox bug: name it, never the numbers, bodies or URLs
                _log.error("webhook delivery task failed: %s", type(exc).__name__)

    def _finish(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()

    def _record(self, generation: int, record: Callable[..., None], *args: Any) -> None:
        """Count in the ledger unless a reset came in between."""
        with self._lock:
            if generation == self._generation:
                record(*args)

    # Deliveries --------------------------------------------------------------------------------

    async def _outbound(
        self,
        generation: int,
        config: SandboxConfig,
        rng: random.Random | None,
        payload: dict[str, Any],
        received: datetime,
        due: float,
        urls: tuple[str, ...],
        final_status: str,
        error_code: str | None,
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
            sent_s = config.webhook_delay_ms / 1000.0
            final_s = max(config.finalize_delay_ms / 1000.0, sent_s)
            sent_at = None if final_status in _NEVER_SENT else format_timestamp(received + timedelta(seconds=sent_s))
            events = [(final_s, EVENT_FINALIZED)]
            if sent_at is not None:
                events.insert(0, (sent_s, EVENT_SENT))
                if rng is not None and rng.random() < config.webhook_reorder_rate:
                    events.reverse()
                    self._record(generation, self.ledger.record_webhook_reordered)
            for offset, event_type in events:
                wait = due + offset - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if event_type == EVENT_SENT:
                    data = status_payload(payload, status="sent", sent_at=sent_at, completed_at=None, errors=[])
                    final: str | None = None
                else:
                    errors: list[dict[str, object]] = []
                    if final_status in STATUSES_WITH_ERRORS:
                        errors.append(delivery_error(error_code or DEFAULT_DELIVERY_ERRORS[final_status]))
                    completed_at = format_timestamp(received + timedelta(seconds=final_s))
                    data = status_payload(payload, status=final_status, sent_at=sent_at, completed_at=completed_at, errors=errors)
                    final = final_status
                occurred = received + timedelta(seconds=offset)
                await self._event(generation, config, rng, event_type, occurred, data, urls, final)
        finally:
            self._finish(generation)

    async def _inbound(
        self,
        generation: int,
        config: SandboxConfig,
        rng: random.Random | None,
        payload: dict[str, Any],
        received: datetime,
        urls: tuple[str, ...],
    ) -> None:
        try:
            await self._event(generation, config, rng, EVENT_RECEIVED, received, payload, urls, None)
        finally:
            self._finish(generation)

    async def _event(
        self,
        generation: int,
        config: SandboxConfig,
        rng: random.Random | None,
        event_type: str,
        occurred: datetime,
        payload: dict[str, Any],
        urls: tuple[str, ...],
        final_status: str | None,
    ) -> None:
        if generation != self._generation:
            return
        self._record(generation, self.ledger.record_webhook_event, event_type, final_status)
        data = _dumps(
            {
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": format_timestamp(occurred),
                "payload": payload,
                "record_type": "event",
            }
        )
        duplicate = rng is not None and rng.random() < config.webhook_duplicate_rate
        await self._deliver(generation, config, rng, data, urls)
        if duplicate and generation == self._generation:
            self._record(generation, self.ledger.record_webhook_duplicate)
            await self._deliver(generation, config, rng, data, urls)

    async def _deliver(
        self,
        generation: int,
        config: SandboxConfig,
        rng: random.Random | None,
        data: bytes,
        urls: tuple[str, ...],
    ) -> None:
        """One delivery of ``data``: every URL in turn, ``webhook_attempts`` attempts each."""
        attempt = 0
        backoff_s = config.webhook_retry_base_ms / 1000.0
        for url in urls:
            for n in range(config.webhook_attempts):
                if n:
                    await asyncio.sleep(backoff_s * 2 ** (n - 1))
                if generation != self._generation:
                    return
                attempt += 1
                if rng is not None and rng.random() < config.webhook_fail_rate:
                    failure: str | None = "injected"
                else:
                    slots = self._slots
                    if slots is None:
                        slots = self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
                    async with slots:
                        if generation != self._generation:
                            return
                        failure = await self._post(config, url, _envelope(data, attempt, url))
                self._record(generation, self.ledger.record_webhook_attempt, failure)
                if failure is None:
                    return
        self._record(generation, self.ledger.record_webhook_undelivered)

    async def _post(self, config: SandboxConfig, url: str, body: bytes) -> str | None:
        """POST one signed attempt; None on a 2xx, else the status code or the error kind."""
        client = self._client
        if client is None:
            # trust_env=False: never route webhooks through a proxy from the environment.
            client = self._client = httpx.AsyncClient(trust_env=False, limits=_LIMITS, headers={"user-agent": _USER_AGENT})
        headers = self.signer.headers(body)
        timeout = httpx.Timeout(config.webhook_timeout_s, pool=None)
        try:
            response = await client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.ConnectError:
            return "connect_error"
        except httpx.RemoteProtocolError:
            return "connection_dropped"
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            return "invalid_url"
        except httpx.HTTPError:
            return "http_error"
        except Exception:  # a broken URL or receiver must never kill the delivery task
            return "error"
        if 200 <= response.status_code < 300:
            return None
        return str(response.status_code)
