"""``AsyncMessageQueue``: the queue over ``redis.asyncio.Redis`` (``queue-consume``).

Same operations, same script calls (built by ``calls.Calls``) as ``MessageQueue``; only the I/O is
awaited. Consumer loop, in outline::

    batch = await q.dequeue(max_items, lease_ms)
    ...claim in PostgreSQL, send, record...
    await q.ack(done); await q.retry_later(later)
    if not batch.leases and batch.next_ready_ms is not None:
        await q.wait_for_work((batch.next_ready_ms - batch.now_ms) / 1000)   # woken early by enqueue
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from common.queue.calls import Calls, ScriptCall, total
from common.queue.keys import QueueKeys
from common.queue.queue import DEFAULT_CONFIG, NO_LIMITS, blocking_slices
from common.queue.scripts import SCRIPT_NAMES, ScriptName, source
from common.queue.types import Dequeued, Lease, QueueConfig, QueueDepths, QueueItem, SenderKey, SenderLimit


class AsyncMessageQueue:
    def __init__(self, client: redis.asyncio.Redis, prefix: str, config: QueueConfig = DEFAULT_CONFIG) -> None:
        self.client = client
        self.keys = QueueKeys(prefix)
        self.config = config
        self._calls = Calls(self.keys, config)
        self._scripts: dict[ScriptName, AsyncScript] = {name: client.register_script(source(name)) for name in SCRIPT_NAMES}

    async def _run(self, call: ScriptCall) -> Any:
        return await self._scripts[call.script](keys=call.keys, args=call.args)

    async def _run_all(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """One pipeline for several calls; see ``MessageQueue._run_all`` for the NOSCRIPT handling."""
        if len(calls) <= 1:
            return [await self._run(call) for call in calls]
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _attempt in range(3):
            pipe = self.client.pipeline(transaction=False)
            for i in pending:
                call = calls[i]
                pipe.evalsha(self._scripts[call.script].sha, len(call.keys), *call.keys, *call.args)
            replies = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                return results
            for name in {calls[i].script for i in missing}:
                script = self._scripts[name]
                script.sha = str(await self.client.script_load(script.script))
            pending = missing
        raise NoScriptError("queue scripts keep disappearing from Redis (SCRIPT FLUSH in a loop?)")

    async def enqueue(self, items: Sequence[QueueItem], sender_limits: Mapping[SenderKey, SenderLimit] = NO_LIMITS) -> int:
        return total(await self._run_all(self._calls.enqueue(items, sender_limits)))

    async def dequeue(self, max_items: int, lease_ms: int) -> Dequeued:
        """Lease up to ``max_items`` (conv first, round-robin across churches, within rate limits)."""
        return self._calls.parse_dequeue(await self._run(self._calls.dequeue(max_items, lease_ms)))

    async def ack(self, leases: Sequence[Lease]) -> None:
        """Done (sent, or failed for good): forget these messages. Leases no longer held are skipped."""
        await self._run_all(self._calls.ack(leases))

    async def retry_later(self, retries: Sequence[tuple[Lease, int]]) -> None:
        """``(lease, due_at_ms)``: inflight -> delayed, for leases still held."""
        await self._run_all(self._calls.retry_later(retries))

    async def renew(self, leases: Sequence[Lease], lease_ms: int) -> int:
        """Extend leases still held to now + ``lease_ms``; returns how many are still held."""
        return total(await self._run_all(self._calls.renew(leases, lease_ms)))

    async def promote_due(self, limit: int = 1000) -> int:
        return int(await self._run(self._calls.promote_due(limit)))

    async def reclaim_expired(self, limit: int = 1000) -> int:
        return int(await self._run(self._calls.reclaim_expired(limit)))

    async def holds(self, message_ids: Sequence[str]) -> list[bool]:
        chunks = self._calls.holds_chunks(message_ids)
        if not chunks:
            return []
        pipe = self.client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.hmget(self.keys.msg, list(chunk))
        return self._calls.parse_holds(await pipe.execute())

    async def remove(self, message_ids: Sequence[str]) -> int:
        return total(await self._run_all(self._calls.remove(message_ids)))

    async def depths(self) -> QueueDepths:
        return self._calls.parse_depths(await self._run(self._calls.depths()))

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Block (BLPOP on the wake list) until an enqueue happens or ``timeout_s`` passes.

        True means "something was added since a consumer last looked" (a wake token), not that a
        dequeue will find work: another consumer may have taken it. Tokens are capped at
        ``QueueConfig.wake_tokens``, so after a busy period a few wake-ups are spurious (cheap).
        """
        if timeout_s <= 0:
            return await self.client.lpop(self.keys.wake) is not None
        deadline = time.monotonic() + timeout_s
        for step in blocking_slices(self.client.connection_pool.connection_kwargs, timeout_s):
            if await self.client.blpop([self.keys.wake], timeout=step) is not None:
                return True
            if time.monotonic() >= deadline:
                break
        return False
