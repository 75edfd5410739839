"""How the reports count messages: every status of the state machine (common/messages/states.py) in one group.

The broadcast report (``reports.py``) and the daily aggregates (``aggregates.py``) read these, so a report and
an aggregate can never disagree on what "failed" or "pending" means::

    pending      scheduled, queued, sending, retrying    still on its way to the carrier
    sent         sent                                    the carrier took it; no receipt yet
    unconfirmed  delivery_unconfirmed                    the carrier took it and could not confirm delivery
    delivered    delivered
    failed       failed, delivery_failed                 never accepted by the carrier (permanent error or
                                                         attempts exhausted), or accepted and not delivered
    expired      expired                                 its deadline passed before the carrier took it
    suppressed   suppressed                              opted out: never sent

"Carrier accepted" (the aggregates' ``sent`` column, the denominator of the delivery rate) is
``sent | unconfirmed | delivered | delivery_failed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from common.messages.states import MessageStatus

S = MessageStatus


class StatusGroup(StrEnum):
    pending = "pending"
    sent = "sent"
    unconfirmed = "unconfirmed"
    delivered = "delivered"
    failed = "failed"
    expired = "expired"
    suppressed = "suppressed"


GROUP_OF: dict[MessageStatus, StatusGroup] = {
    S.scheduled: StatusGroup.pending,
    S.queued: StatusGroup.pending,
    S.sending: StatusGroup.pending,
    S.retrying: StatusGroup.pending,
    S.sent: StatusGroup.sent,
    S.delivery_unconfirmed: StatusGroup.unconfirmed,
    S.delivered: StatusGroup.delivered,
    S.failed: StatusGroup.failed,
    S.delivery_failed: StatusGroup.failed,
    S.expired: StatusGroup.expired,
    S.suppressed: StatusGroup.suppressed,
}

CARRIER_ACCEPTED: frozenset[MessageStatus] = frozenset({S.sent, S.delivery_unconfirmed, S.delivered, S.delivery_failed})


def statuses(group: StatusGroup) -> frozenset[MessageStatus]:
    return frozenset(status for status, g in GROUP_OF.items() if g == group)


def sql_list(values: Iterable[str]) -> str:
    """``'a', 'b'``: literals for an ``IN (...)``. Only ever fed the constants above."""
    return ", ".join(f"'{v}'" for v in sorted(str(v) for v in values))
