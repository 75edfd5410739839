"""Key naming for one queue (one Redis key prefix).

Every key starts with the hash tag ``{prefix}`` (the same form as ``RedisGate.key``), so the whole queue
lives in one Redis Cluster slot and a Lua script may touch any of its keys atomically. A *queue name*
identifies one ready list: ``<lane>:<channel>:<church>:<sender>``. Lane and channel come from fixed
sets and the church id may not contain ``:``, so the sender, last, may hold anything (an e-mail
address, a ``:``): the Lua side splits on the first three colons only.

A sender's token bucket and its limit are per channel: ``<channel>|<sender>`` (:func:`sender_id`), the
name ``dequeue.lua`` builds from the queue name it serves. The channel comes from a fixed set without
``|``, so the first ``|`` splits it off whatever the sender holds.
"""

from __future__ import annotations

from common.queue.types import CHANNELS, LANES, Channel, Lane

# Namespace under the prefix: other parts of the system share the prefix (and its slot).
NAMESPACE = "q"

# str -> Literal, so parsed names are typed without casts.
_LANE_OF: dict[str, Lane] = {lane: lane for lane in LANES}
_CHANNEL_OF: dict[str, Channel] = {channel: channel for channel in CHANNELS}


class QueueKeys:
    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"queue prefix must be non-empty and free of braces (it becomes the hash tag): {prefix!r}")
        self.prefix = prefix
        self.tag = f"{{{prefix}}}"
        """What the Lua scripts get as ARGV[1] to build the per-queue keys (ready lists, buckets)."""

    def key(self, *parts: str) -> str:
        return ":".join((self.tag, NAMESPACE, *parts))

    @property
    def msg(self) -> str:
        return self.key("msg")

    @property
    def delayed(self) -> str:
        return self.key("delayed")

    @property
    def inflight(self) -> str:
        return self.key("inflight")

    @property
    def limits(self) -> str:
        return self.key("limits")

    @property
    def seq(self) -> str:
        return self.key("seq")

    @property
    def wake(self) -> str:
        return self.key("wake")

    def ring(self, lane: Lane, channel: Channel) -> str:
        return self.key("ring", lane, channel)

    @property
    def rings(self) -> list[str]:
        """All six rings in the fixed order the scripts expect (conv sms, conv mms, conv mail, bulk ...)."""
        return [self.ring(lane, channel) for lane in LANES for channel in CHANNELS]

    def ready(self, queue: str) -> str:
        return self.key("ready", queue)

    def bucket(self, channel: Channel, sender: str) -> str:
        """The token bucket of ``sender`` on ``channel`` (its field in :attr:`limits` is :func:`sender_id`)."""
        return self.key("bucket", sender_id(channel, sender))

    def account(self, channel: Channel) -> str:
        return self.key("account", channel)

    @property
    def accounts(self) -> list[str]:
        return [self.account(channel) for channel in CHANNELS]


def queue_name(lane: Lane, channel: Channel, church_id: str, sender: str) -> str:
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}; expected one of {LANES}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    if not church_id or ":" in church_id:
        raise ValueError(f"church id must be non-empty and free of ':': {church_id!r}")
    if not sender:
        raise ValueError("sender must be non-empty")
    return f"{lane}:{channel}:{church_id}:{sender}"


def sender_id(channel: Channel, sender: str) -> str:
    """``<channel>|<sender>``: names one sender's bucket and its field in the limits hash (see the module doc)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    if not sender:
        raise ValueError("sender must be non-empty")
    return f"{channel}|{sender}"


def parse_queue_name(name: str) -> tuple[Lane, Channel, str, str]:
    """``(lane, channel, church_id, sender)`` of a queue name."""
    lane, channel, church_id, sender = name.split(":", 3)
    if lane not in _LANE_OF or channel not in _CHANNEL_OF:
        raise ValueError(f"not a queue name: {name!r}")
    return _LANE_OF[lane], _CHANNEL_OF[channel], church_id, sender
