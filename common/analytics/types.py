"""The analytics records: an event (what changed, named by ids), and the buckets the processor recomputes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


class Kind(StrEnum):
    """What the ids of an event are, and so how the processor finds the (church, day) buckets they touch."""

    message = "m"  # messages.id: the message's church and local day of created_at
    provider = "p"  # messages.provider_message_id: a carrier receipt that did not carry our id
    broadcast = "b"  # broadcasts.id: every message of one accepted request (they share its created_at)
    reply = "r"  # conversation_messages.id of a member's text: its church and local day
    # conversations.id: a change recorded in that conversation's church when the event was made (a STOP's
    # opt-out): that day. Named by the conversation, not the church: no church id is ever written to Redis,
    # so deleting a church leaves no trace of it there.
    conversation = "v"


class EventType(StrEnum):
    """What happened. Informative (logs, benches): the processor recomputes whatever the ids touch."""

    accepted = "accepted"  # a send request's messages were written
    held = "held"  # a bulk text put back until its recipient's send window opens
    sent = "sent"
    retrying = "retrying"
    failed = "failed"
    expired = "expired"
    suppressed = "suppressed"  # opted out (at the claim, or the carrier's 40300)
    delivered = "delivered"
    delivery_failed = "delivery_failed"
    delivery_unconfirmed = "delivery_unconfirmed"
    receipt = "receipt"  # a carrier receipt moved the message (the scheduler's sweep: sent, delivered or failed)
    replayed = "replayed"  # a dead letter put back on the queue
    cancelled = "cancelled"  # a pending message of an erased person
    replied = "replied"  # a member texted the church
    opted_out = "opted_out"


# Message events that also record an opt-out now (the carrier's 40300 writes opt_out_events at the outcome
# write; a claim-time suppression does not, and recomputing today for it too costs one bucket, nothing else):
# besides the messages' own days, the day the event was made is recomputed (its ``opt_outs``).
DATED_TYPES = frozenset({EventType.suppressed, EventType.opted_out})


@dataclass(frozen=True)
class Event:
    """One change, by ids and type only: never a number, a text or an amount (the processor reads those from
    PostgreSQL, which is why a duplicated, late or lost event cannot make an aggregate wrong)."""

    type: str
    kind: Kind
    ids: tuple[str, ...]

    @classmethod
    def messages(cls, type: str, ids: Iterable[str]) -> Event:
        return cls(type, Kind.message, tuple(ids))

    @classmethod
    def broadcast(cls, broadcast_id: str) -> Event:
        return cls(EventType.accepted, Kind.broadcast, (broadcast_id,))

    @classmethod
    def provider(cls, type: str, provider_message_ids: Iterable[str]) -> Event:
        return cls(type, Kind.provider, tuple(provider_message_ids))

    @classmethod
    def reply(cls, conversation_message_id: str) -> Event:
        return cls(EventType.replied, Kind.reply, (conversation_message_id,))

    @classmethod
    def conversation(cls, type: str, conversation_id: str) -> Event:
        return cls(type, Kind.conversation, (conversation_id,))


@dataclass
class Targets:
    """The ids of a batch of events, by kind: the parameters of the one statement that finds their buckets.
    A ``conversation`` event is dated: when it was put on the stream (its entry id), or now (written directly)."""

    message_ids: list[str] = field(default_factory=list)
    provider_ids: list[str] = field(default_factory=list)
    broadcast_ids: list[str] = field(default_factory=list)
    reply_ids: list[str] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)
    conversation_at: list[datetime] = field(default_factory=list)
    dated_ids: list[str] = field(default_factory=list)  # message ids of DATED_TYPES events
    dated_at: list[datetime] = field(default_factory=list)

    def add(self, event: Event, at: datetime) -> None:
        if event.kind is Kind.message:
            self.message_ids.extend(event.ids)
            if event.type in DATED_TYPES:
                self.dated_ids.extend(event.ids)
                self.dated_at.extend(at for _ in event.ids)
        elif event.kind is Kind.provider:
            self.provider_ids.extend(event.ids)
        elif event.kind is Kind.broadcast:
            self.broadcast_ids.extend(event.ids)
        elif event.kind is Kind.reply:
            self.reply_ids.extend(event.ids)
        else:
            self.conversation_ids.extend(event.ids)
            self.conversation_at.extend(at for _ in event.ids)

    def __bool__(self) -> bool:
        return bool(self.message_ids or self.provider_ids or self.broadcast_ids or self.reply_ids or self.conversation_ids)

    @classmethod
    def of(cls, events: Sequence[tuple[Event, datetime]]) -> Targets:
        targets = cls()
        for event, at in events:
            targets.add(event, at)
        return targets


@dataclass(frozen=True, order=True)
class Bucket:
    """What is recomputed as a whole: one church's local day (every channel of it)."""

    church_id: str
    day: date
