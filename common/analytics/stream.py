"""The analytics queue: one Redis Stream under the deployment's prefix, read by one consumer group.

    {p}:a:events    STREAM   entries {t: type, k: kind, ids: "id,id,..."}    (``{p}``: the prefix's hash tag,
                             group "aggregates"                               the queue's slot; "a": analytics)

- Emitters ``XADD ... MAXLEN ~ stream_max_entries`` (approximate trim: O(1), bounded memory even if no
  processor runs), one pipeline per call site, at most ``max_ids_per_entry`` ids per entry.
- Processors read through ``read.lua``: first the entries another processor read and never acked for
  ``reclaim_idle_ms`` (``XAUTOCLAIM``: it died mid-batch), then new ones (``XREADGROUP >``), and whether the
  stream lost entries before they were read (the group missing: Redis lost its data; or MAXLEN trimmed
  unread entries). ``ack.lua`` acks after the PostgreSQL commit and trims what nobody needs any more.

At least once: an entry is acked only after its recompute committed, so a processor dying anywhere
leaves it pending for the next one; reading it twice costs a second recompute and changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import Script
from redis.typing import EncodableT, FieldT

from common.analytics.scripts import SCRIPT_NAMES, ScriptName, source
from common.analytics.types import Event, Kind

logger = logging.getLogger("koinonia.analytics")

NAMESPACE = "a"
GROUP = "aggregates"
stream_max_entries = 100_000  # the cap if no processor runs; a processor keeps the stream near empty
max_ids_per_entry = 200  # ~7.4 kB of ids: one consumer flush of outcomes fits in an entry or two
reclaim_idle_ms = 30_000  # an entry read and not acked for this long belongs to a dead processor
forget_idle_ms = 3_600_000  # a consumer (a process) idle this long and holding nothing leaves the group

LOST_NOTHING, LOST_STREAM, LOST_TRIMMED = 0, 1, 2
_UUID_KINDS = frozenset({Kind.message, Kind.broadcast, Kind.reply, Kind.conversation})


def stream_key(prefix: str) -> str:
    return f"{{{prefix}}}:{NAMESPACE}:events"


def entry_fields(events: Iterable[Event]) -> list[dict[FieldT, EncodableT]]:
    """The stream entries for ``events``: long id lists split, events without ids dropped."""
    fields: list[dict[FieldT, EncodableT]] = []
    for event in events:
        for start in range(0, len(event.ids), max_ids_per_entry):
            chunk = event.ids[start : start + max_ids_per_entry]
            fields.append({"t": str(event.type), "k": str(event.kind), "ids": ",".join(chunk)})
    return fields


def add(client: redis.Redis, prefix: str, events: Iterable[Event]) -> int:
    """XADD every entry in one pipeline (one round trip); raises redis-py's errors (``emit`` catches them)."""
    fields = entry_fields(events)
    if fields:
        pipe = client.pipeline(transaction=False)
        for f in fields:
            pipe.xadd(stream_key(prefix), f, maxlen=stream_max_entries, approximate=True)
        pipe.execute()
    return len(fields)


async def aadd(client: redis.asyncio.Redis, prefix: str, events: Iterable[Event]) -> int:
    fields = entry_fields(events)
    if fields:
        pipe = client.pipeline(transaction=False)
        for f in fields:
            pipe.xadd(stream_key(prefix), f, maxlen=stream_max_entries, approximate=True)
        await pipe.execute()
    return len(fields)


@dataclass(frozen=True)
class Entry:
    entry_id: str
    event: Event | None  # None: malformed (acked and dropped; logged)

    @property
    def at(self) -> datetime:
        """When the entry was added: Redis's clock, from the entry id (``<ms>-<seq>``)."""
        return datetime.fromtimestamp(int(self.entry_id.split("-", 1)[0]) / 1000, UTC)


@dataclass(frozen=True)
class Batch:
    lost: int  # LOST_NOTHING, LOST_STREAM or LOST_TRIMMED (read.lua)
    entries: list[Entry]


def parse_entry(entry_id: str, raw: Any) -> Entry:
    fields = dict(zip(raw[0::2], raw[1::2], strict=True)) if isinstance(raw, list) else dict(raw or {})
    try:
        kind = Kind(fields.get("k", ""))
        ids = tuple(i for i in str(fields.get("ids", "")).split(",") if i)
        if kind in _UUID_KINDS:
            ids = tuple(str(uuid.UUID(i)) for i in ids)
        return Entry(entry_id, Event(str(fields.get("t", "")), kind, ids))
    except ValueError:
        logger.warning("malformed analytics entry dropped", extra={"fields": {"entry": entry_id}})
        return Entry(entry_id, None)


class AnalyticsStream:
    """The processor's side of the stream, over a synchronous client with ``decode_responses=True``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = stream_key(prefix)
        self._scripts: dict[ScriptName, Script] = {name: client.register_script(source(name)) for name in SCRIPT_NAMES}

    def read(self, consumer: str, count: int, *, idle_ms: int = reclaim_idle_ms) -> Batch:
        status, raw = self._scripts["read"](keys=[self.key], args=[GROUP, consumer, count, idle_ms, forget_idle_ms])
        return Batch(int(status), [parse_entry(str(e[0]), e[1]) for e in raw or []])

    def ack(self, entry_ids: Sequence[str]) -> int:
        return int(self._scripts["ack"](keys=[self.key], args=[GROUP, *entry_ids]))

    def pending(self) -> int:
        """Entries read and not acked (tests, benches)."""
        try:
            return int(self.client.xpending(self.key, GROUP)["pending"])
        except redis.ResponseError:  # no stream or group yet
            return 0

    def length(self) -> int:
        return int(self.client.xlen(self.key))
