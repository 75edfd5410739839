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
is a dead-letter replay. The SQL CHECK constraint on ``messages.status`` lists the same values.
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

TRANSITIONS: dict[MessageStatus, frozenset[MessageStatus]] = {
    S.scheduled: frozenset({S.queued, S.sending, S.expired, S.suppressed}),
    S.queued: frozenset({S.sending, S.expired, S.suppressed}),
    S.sending: frozenset({S.sent, S.retrying, S.failed, S.expired, S.queued, S.suppressed}),
    S.retrying: frozenset({S.queued, S.sending, S.expired, S.suppressed}),
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
