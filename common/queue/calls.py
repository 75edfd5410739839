"""Script calls, built and parsed in one place: what goes to Redis (KEYS, ARGV) and what comes back.

``MessageQueue`` (sync) and ``AsyncMessageQueue`` (asyncio) only *run* the calls built here, so the two
can never disagree about argument order, chunking or reply shapes. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.queue.keys import QueueKeys, parse_queue_name, queue_name, sender_id
from common.queue.scripts import ScriptName
from common.queue.types import CHANNELS, Dequeued, Lease, QueueConfig, QueueDepths, QueueItem, SenderKey, SenderLimit

Arg = str | int | float

# Ids per ack/renew/retry_later/remove/holds call. Keeps one script call short (Redis serves nobody
# else while a script runs) and the argument list far below Lua's unpack/stack limits.
BATCH = 1000


@dataclass(frozen=True)
class ScriptCall:
    script: ScriptName
    keys: list[str]
    args: list[Arg]


def text(value: Any) -> str:
    """A reply element as ``str`` whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def total(replies: Sequence[Any]) -> int:
    return sum(int(reply) for reply in replies)


def _chunks(values: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


class Calls:
    def __init__(self, keys: QueueKeys, config: QueueConfig) -> None:
        for name in ("enqueue_chunk", "dequeue_scan", "housekeeping_limit", "discard_limit", "wake_tokens", "wake_ttl_ms"):
            if getattr(config, name) < 1:
                raise ValueError(f"QueueConfig.{name} must be >= 1")
        for channel in CHANNELS:
            if not config.account_rate(channel) > 0:
                raise ValueError(f"QueueConfig.account_{channel}_per_s must be > 0")
        self.keys = keys
        self.config = config

    @property
    def _wake_args(self) -> list[Arg]:
        return [self.config.wake_tokens, self.config.wake_ttl_ms]

    def enqueue(self, items: Sequence[QueueItem], sender_limits: Mapping[SenderKey, SenderLimit]) -> list[ScriptCall]:
        rows: list[Arg] = []
        for item in items:
            if not item.message_id:
                raise ValueError("QueueItem.message_id must be non-empty")
            rows += [
                item.message_id,
                queue_name(item.lane, item.channel, item.church_id, item.sender),
                "" if item.due_at_ms is None else int(item.due_at_ms),
            ]
        limits: list[Arg] = []
        for (channel, sender), limit in sender_limits.items():
            limits += [sender_id(channel, sender), limit.encode()]
        keys = [*self.keys.rings, self.keys.msg, self.keys.delayed, self.keys.limits, self.keys.wake]
        head: list[Arg] = [self.keys.tag, *self._wake_args]
        chunks = _chunks(rows, 3 * self.config.enqueue_chunk) or ([[]] if limits else [])
        # Sender limits ride with the first chunk only (they are a few HSETs, not per message).
        return [
            ScriptCall("enqueue", keys, [*head, *([len(limits) // 2, *limits] if i == 0 else [0]), *chunk])
            for i, chunk in enumerate(chunks)
        ]

    def dequeue(self, max_items: int, lease_ms: int) -> ScriptCall:
        if max_items < 1 or lease_ms < 1:
            raise ValueError("dequeue needs max_items >= 1 and lease_ms >= 1")
        c = self.config
        keys = [
            *self.keys.rings, self.keys.msg, self.keys.delayed, self.keys.inflight, self.keys.limits, self.keys.seq,
            *self.keys.accounts,
        ]  # fmt: skip
        args: list[Arg] = [
            self.keys.tag, max_items, lease_ms, repr(c.default_sender.per_second), c.default_sender.burst,
            *(repr(c.account_rate(ch)) for ch in CHANNELS), *(c.account_burst(ch) for ch in CHANNELS),
            max_items + c.dequeue_scan, c.housekeeping_limit, c.discard_limit,
        ]  # fmt: skip
        return ScriptCall("dequeue", keys, args)

    @staticmethod
    def parse_dequeue(reply: Sequence[Any]) -> Dequeued:
        now_ms, next_ms, seq = int(reply[0]), int(reply[1]), text(reply[2])
        leases: list[Lease] = []
        i = 3
        while i < len(reply):
            lane, channel, church_id, sender = parse_queue_name(text(reply[i]))
            count = int(reply[i + 1])
            for raw in reply[i + 2 : i + 2 + count]:
                message_id = text(raw)
                leases.append(Lease(message_id, church_id, lane, sender, channel, member=f"{seq}:{message_id}"))
            i += 2 + count
        return Dequeued(leases=leases, next_ready_ms=None if next_ms < 0 else next_ms, now_ms=now_ms)

    def ack(self, leases: Sequence[Lease]) -> list[ScriptCall]:
        keys = [self.keys.inflight, self.keys.msg]
        return [ScriptCall("ack", keys, [lease.member for lease in chunk]) for chunk in _chunks(leases, BATCH)]

    def renew(self, leases: Sequence[Lease], lease_ms: int) -> list[ScriptCall]:
        if lease_ms < 1:
            raise ValueError("lease_ms must be >= 1")
        return [
            ScriptCall("renew", [self.keys.inflight], [lease_ms, *(lease.member for lease in chunk)])
            for chunk in _chunks(leases, BATCH)
        ]

    def retry_later(self, retries: Sequence[tuple[Lease, int]]) -> list[ScriptCall]:
        keys = [self.keys.inflight, self.keys.msg, self.keys.delayed, self.keys.wake]
        calls = []
        for chunk in _chunks(retries, BATCH):
            args: list[Arg] = [*self._wake_args]
            for lease, due_at_ms in chunk:
                args += [lease.member, int(due_at_ms)]
            calls.append(ScriptCall("retry_later", keys, args))
        return calls

    def promote_due(self, limit: int) -> ScriptCall:
        keys = [*self.keys.rings, self.keys.msg, self.keys.delayed, self.keys.wake]
        return ScriptCall("promote_due", keys, [self.keys.tag, max(0, limit), *self._wake_args])

    def reclaim_expired(self, limit: int) -> ScriptCall:
        keys = [*self.keys.rings, self.keys.msg, self.keys.inflight, self.keys.wake]
        return ScriptCall("reclaim_expired", keys, [self.keys.tag, max(0, limit), *self._wake_args])

    def remove(self, message_ids: Sequence[str]) -> list[ScriptCall]:
        keys = [*self.keys.rings, self.keys.msg, self.keys.delayed, self.keys.inflight]
        head: list[Arg] = [self.keys.tag, self.config.eager_remove_max]
        return [ScriptCall("remove", keys, [*head, *chunk]) for chunk in _chunks(message_ids, BATCH)]

    def depths(self) -> ScriptCall:
        return ScriptCall("depths", [*self.keys.rings, self.keys.delayed, self.keys.inflight], [self.keys.tag])

    @staticmethod
    def parse_depths(reply: Sequence[Any]) -> QueueDepths:
        ready_conv, ready_bulk, delayed, inflight, churches = (int(value) for value in reply)
        return QueueDepths(ready_conv, ready_bulk, delayed, inflight, churches)

    @staticmethod
    def holds_chunks(message_ids: Sequence[str]) -> list[Sequence[str]]:
        """``holds`` is a plain HMGET on the msg hash (one per chunk, pipelined): no script needed."""
        return _chunks(message_ids, BATCH)

    @staticmethod
    def parse_holds(replies: Sequence[Sequence[Any]]) -> list[bool]:
        return [value is not None for reply in replies for value in reply]
