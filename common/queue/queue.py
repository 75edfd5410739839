"""``MessageQueue``: the queue over a synchronous ``redis.Redis`` (``send`` under Flask/gthread, the scheduler).

Every method is one round trip (several script calls of one method go in one pipeline) and raises
redis-py's ``ConnectionError``/``TimeoutError`` when Redis is away: callers fall back to PostgreSQL
(wrap calls in ``RedisGate.call`` for its circuit breaker). Everything is idempotent to retry except
``dequeue``, whose lost reply only costs a lease expiry (the ids come back via reclaim).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from common.queue.calls import Calls, ScriptCall, total
from common.queue.keys import QueueKeys
from common.queue.scripts import SCRIPT_NAMES, ScriptName, source
from common.queue.types import Dequeued, Lease, QueueConfig, QueueDepths, QueueItem, SenderKey, SenderLimit

DEFAULT_CONFIG = QueueConfig()
NO_LIMITS: Mapping[SenderKey, SenderLimit] = MappingProxyType({})


def blocking_slices(client_kwargs: Mapping[str, Any], timeout_s: float) -> list[float]:
    """BLPOP timeouts adding up to ``timeout_s``, each shorter than the client's socket timeout.

    A blocking pop longer than the socket timeout would end in ``TimeoutError`` instead of "no work";
    ``RedisGate`` clients use 0.5 s socket timeouts, so a long wait becomes several short BLPOPs. Each
    is at most half the socket timeout: the other half is the margin for the "nothing" reply to arrive
    on a loaded server (0.1 s of margin was seen to run out under a parallel test run).
    """
    socket_timeout = client_kwargs.get("socket_timeout")
    step = timeout_s if not socket_timeout else max(0.01, min(timeout_s, float(socket_timeout) / 2))
    slices: list[float] = []
    left = timeout_s
    while left > 1e-6:
        # Redis 6.2 reads a BLPOP timeout below 10 ms as 0, "block forever": never ask for less.
        slices.append(max(0.01, round(min(step, left), 3)))
        left -= step
    return slices


class MessageQueue:
    def __init__(self, client: redis.Redis, prefix: str, config: QueueConfig = DEFAULT_CONFIG) -> None:
        self.client = client
        self.keys = QueueKeys(prefix)
        self.config = config
        self._calls = Calls(self.keys, config)
        self._scripts: dict[ScriptName, Script] = {name: client.register_script(source(name)) for name in SCRIPT_NAMES}

    # -- running script calls -------------------------------------------------------------------

    def _run(self, call: ScriptCall) -> Any:
        # Script.__call__ is EVALSHA, and on NOSCRIPT (Redis restarted, SCRIPT FLUSH) loads and retries.
        return self._scripts[call.script](keys=call.keys, args=call.args)

    def _run_all(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run calls in one pipeline (one round trip), reloading scripts Redis has forgotten.

        redis-py's own pipeline script support sends SCRIPT EXISTS before every pipeline (a second
        round trip), so EVALSHA goes out directly and only the calls answered NOSCRIPT are reloaded
        and re-run: NOSCRIPT means the call did not run, so re-running it cannot apply it twice.
        """
        if len(calls) <= 1:
            return [self._run(call) for call in calls]
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _attempt in range(3):
            pipe = self.client.pipeline(transaction=False)
            for i in pending:
                call = calls[i]
                pipe.evalsha(self._scripts[call.script].sha, len(call.keys), *call.keys, *call.args)
            replies = pipe.execute(raise_on_error=False)
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
                script.sha = str(self.client.script_load(script.script))
            pending = missing
        raise NoScriptError("queue scripts keep disappearing from Redis (SCRIPT FLUSH in a loop?)")

    # -- producers (send, scheduler) ------------------------------------------------------------

    def enqueue(self, items: Sequence[QueueItem], sender_limits: Mapping[SenderKey, SenderLimit] = NO_LIMITS) -> int:
        """Add items (ids already held are left alone); returns how many were new. Wakes consumers.

        ``sender_limits``: the rate of each ``(channel, sender)`` the items use (stored for dequeue; a sender
        and channel without one gets ``QueueConfig.default_sender``)."""
        return total(self._run_all(self._calls.enqueue(items, sender_limits)))

    def holds(self, message_ids: Sequence[str]) -> list[bool]:
        """Per id: is it anywhere in the queue (ready, delayed or inflight)?"""
        chunks = self._calls.holds_chunks(message_ids)
        if not chunks:
            return []
        pipe = self.client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.hmget(self.keys.msg, list(chunk))
        return self._calls.parse_holds(pipe.execute())

    def remove(self, message_ids: Sequence[str]) -> int:
        """Forget ids wherever they are (cancelled); returns how many were held."""
        return total(self._run_all(self._calls.remove(message_ids)))

    def depths(self) -> QueueDepths:
        return self._calls.parse_depths(self._run(self._calls.depths()))

    # -- housekeeping (scheduler; every dequeue also does a bounded share) ----------------------

    def promote_due(self, limit: int = 1000) -> int:
        """Delayed -> ready for ids whose due time has passed; returns how many."""
        return int(self._run(self._calls.promote_due(limit)))

    def reclaim_expired(self, limit: int = 1000) -> int:
        """Inflight past its lease -> front of ready (the consumer died); returns how many."""
        return int(self._run(self._calls.reclaim_expired(limit)))

    # -- consumers (the async class is the usual one; these mirror it) --------------------------

    def dequeue(self, max_items: int, lease_ms: int) -> Dequeued:
        return self._calls.parse_dequeue(self._run(self._calls.dequeue(max_items, lease_ms)))

    def ack(self, leases: Sequence[Lease]) -> int:
        return total(self._run_all(self._calls.ack(leases)))

    def retry_later(self, retries: Sequence[tuple[Lease, int]]) -> int:
        return total(self._run_all(self._calls.retry_later(retries)))

    def renew(self, leases: Sequence[Lease], lease_ms: int) -> int:
        return total(self._run_all(self._calls.renew(leases, lease_ms)))

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until an enqueue (or promote/reclaim/retry) wakes us, or ``timeout_s`` passes."""
        if timeout_s <= 0:
            return self.client.lpop(self.keys.wake) is not None
        deadline = time.monotonic() + timeout_s
        for step in blocking_slices(self.client.connection_pool.connection_kwargs, timeout_s):
            if self.client.blpop([self.keys.wake], timeout=step) is not None:
                return True
            if time.monotonic() >= deadline:
                break
        return False
