"""The message state machine: the only place that says which status may follow which.

```
suppressed (opted out; never queued)
scheduled ──► queued ──► sending ──► sent ──► delivered | delivery_failed | delivery_unconfirmed
                 ▲          │
                 │          ├──► retrying ──(due)──► queued
                 │          ├──► failed  (dead letter: permanent error or attempts exhausted)
                 └──────────┴──► expired (deadline passed)
```

``sending ──► queued`` is the lease reclaim (a consumer died holding the claim). ``failed ──► queued``
is a dead-letter replay. ``queued | retrying | sending ──► scheduled`` is the quiet-hours deferral
(the claim found a bulk text outside its recipient's send window). ``queued | retrying ──► sent ...``
is a delivery receipt proving that an earlier attempt, whose answer we never got, reached the carrier:
the pending retry is dropped instead of sending the text twice. Receipts only ever move a message
forward (``RECEIPT_RANK``): a late ``sent`` after ``delivered`` changes nothing. The SQL CHECK
constraint on ``messages.status`` lists the same values.
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    retrying = "retrying"
    sent = "sent"
    delivered = "delivered"
    delivery_failed = "delivery_failed"
    delivery_unconfirmed = "delivery_unconfirmed"
    failed = "failed"
    expired = "expired"
    suppressed = "suppressed"


S = MessageStatus

# What a carrier receipt can say, and how far along each is. A receipt applies only if it ranks above
# the message's current status (queued/retrying rank 0), which is what makes out-of-order and duplicate
# webhooks harmless. common/messages/receipts.py mirrors this table in SQL.
RECEIPT_RANK: dict[MessageStatus, int] = {
    S.queued: 0,
    S.retrying: 0,
    S.sent: 1,
    S.delivery_unconfirmed: 2,
    S.delivered: 3,
    S.delivery_failed: 3,
}
_RECEIPT_STATES = (S.sent, S.delivery_unconfirmed, S.delivered, S.delivery_failed)

TRANSITIONS: dict[MessageStatus, frozenset[MessageStatus]] = {
    S.scheduled: frozenset({S.queued, S.sending, S.expired, S.suppressed}),
    S.queued: frozenset({S.sending, S.expired, S.suppressed, S.scheduled, *_RECEIPT_STATES}),
    S.sending: frozenset({S.sent, S.retrying, S.failed, S.expired, S.queued, S.suppressed, S.scheduled}),
    S.retrying: frozenset({S.queued, S.sending, S.expired, S.suppressed, S.scheduled, S.failed, *_RECEIPT_STATES}),
    S.sent: frozenset({S.delivered, S.delivery_failed, S.delivery_unconfirmed}),
    S.delivery_unconfirmed: frozenset({S.delivered, S.delivery_failed}),
    S.failed: frozenset({S.queued}),
    S.delivered: frozenset(),
    S.delivery_failed: frozenset(),
    S.expired: frozenset(),
    S.suppressed: frozenset(),
}

# Waiting for (another) carrier attempt: what the scheduler's reconcile looks for.
ACTIVE_STATES: frozenset[MessageStatus] = frozenset({S.scheduled, S.queued, S.retrying, S.sending})
FINAL_STATES: frozenset[MessageStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class IllegalTransition(Exception):
    """A status change the state machine does not allow (a bug, or an out-of-order event)."""


def check_transition(current: MessageStatus, new: MessageStatus) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"message status cannot move from {current} to {new}")
