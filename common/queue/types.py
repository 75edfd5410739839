"""The queue's value types: what callers hand in (items, limits, config) and get back (leases, depths)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Lane = Literal["conv", "bulk"]
Channel = Literal["sms", "mms", "mail"]

# Fixed orders: the Lua scripts receive the six rings and three account buckets in exactly these
# orders (lanes first, then channels), so Python and Lua agree on KEYS positions. Do not reorder.
LANES: tuple[Lane, ...] = get_args(Lane)
CHANNELS: tuple[Channel, ...] = get_args(Channel)

SenderKey = tuple[Channel, str]
"""Whose token bucket: ``(channel, sender)``. One number has its own SMS and MMS rates (``sender_numbers``),
so each channel of a number has its own bucket; an MMS backlog never spends the number's SMS tokens."""


@dataclass(frozen=True)
class QueueItem:
    """One message for the queue (what ``send`` enqueues after the row is committed in PostgreSQL)."""

    message_id: str
    church_id: str
    lane: Lane
    sender: str
    channel: Channel
    due_at_ms: int | None = None
    """Epoch ms. ``None`` or past: ready now; future: delayed (scheduled send or retry)."""


@dataclass(frozen=True)
class SenderLimit:
    """A sending number's token bucket: ``per_second`` sustained, ``burst`` at once (>= 1)."""

    per_second: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError(f"SenderLimit needs per_second > 0 and burst >= 1, got {self}")

    @classmethod
    def for_rate(cls, per_second: float) -> SenderLimit:
        """A number's configured rate (``sender_numbers.sms_per_second`` / ``mms_per_second``) with a tenth
        of a second of burst: a fast sender is not served one message per dequeue, and over any one second
        it still never exceeds rate + burst."""
        return cls(per_second, max(1, int(per_second // 10)))

    def encode(self) -> str:
        """How it is stored in the limits hash (and parsed by the dequeue script): ``"<rate> <burst>"``."""
        return f"{self.per_second!r} {self.burst}"


@dataclass(frozen=True)
class QueueConfig:
    account_sms_per_s: float = 50.0
    account_mms_per_s: float = 15.0
    account_mail_per_s: float = 14.0
    default_sender: SenderLimit = SenderLimit(1.0, 1)
    account_burst_s: float = 0.2
    """Account buckets hold this many seconds of tokens (at least 1): 10 SMS, 3 MMS, 2 mail by default.
    Over any 1 s window the account sends at most ``rate + burst``; a sender at most ``per_second + burst - 1``."""
    enqueue_chunk: int = 1000
    """Items per enqueue script call; chunks of one ``enqueue`` go in one pipeline (one round trip)."""
    dequeue_scan: int = 256
    """Ring visits a dequeue may spend on top of ``max_items`` (parking throttled queues, skipping ids
    removed while ready). Bounds the script's running time however many queues are waiting."""
    housekeeping_limit: int = 100
    """Due delayed ids promoted and expired leases reclaimed by every dequeue, before it takes work."""
    discard_limit: int = 1000
    """Removed ids (tombstones) a dequeue may pop and drop before it gives up for this call."""
    eager_remove_max: int = 128
    """``remove`` takes an id out of its ready list at once only if the list is at most this long;
    in longer lists it leaves a tombstone that dequeue drops (LREM scans the whole list)."""
    wake_tokens: int = 8
    """Most tokens the wake list holds: one enqueue wakes up to this many blocked consumers."""
    wake_ttl_ms: int = 60_000

    def account_rate(self, channel: Channel) -> float:
        return {"sms": self.account_sms_per_s, "mms": self.account_mms_per_s, "mail": self.account_mail_per_s}[channel]

    def account_burst(self, channel: Channel) -> int:
        return max(1, int(self.account_rate(channel) * self.account_burst_s))


@dataclass(frozen=True)
class Lease:
    """One message a consumer now holds until ``ack``, ``retry_later`` or the lease deadline."""

    message_id: str
    church_id: str
    lane: Lane
    sender: str
    channel: Channel
    member: str
    """Opaque inflight member (``"<lease seq>:<message id>"``): the fence ack/renew/retry_later check,
    so a consumer whose lease was reclaimed and handed to another cannot ack or renew the new lease."""


@dataclass(frozen=True)
class Dequeued:
    leases: list[Lease]
    next_ready_ms: int | None
    """Epoch ms (Redis clock) when more work could be available: ``now_ms`` if some is ready already,
    ``None`` if the queue holds nothing at all (wait for an enqueue)."""
    now_ms: int = 0
    """Redis server time of this dequeue (epoch ms): sleep ``next_ready_ms - now_ms``, no clock skew."""


@dataclass(frozen=True)
class QueueDepths:
    ready_conv: int
    ready_bulk: int
    delayed: int
    inflight: int
    churches_waiting: int
    """Distinct churches with ready work. Ready counts include ids removed from long ready lists that
    no dequeue has popped yet (removal is lazy there; see ``QueueConfig.eager_remove_max``)."""
