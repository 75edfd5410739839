"""Every metric, named once: its CloudWatch name and unit, its Prometheus name and help, what it counts.

The CloudWatch names are a contract: template.yaml's alarms read ``MessagesDead``, ``DeadLetterBacklog`` and
``QueueAgeSeconds`` in namespace ``Koinonia`` with the one dimension ``Stage``; renaming one here silently
leaves an alarm without data. Each fact is counted at one place, after its commit, so no message is counted
twice for one fact:

- accepted: ``common/send/submit.py`` (a send) and ``common/webhooks/handler.py`` (a keyword reply);
- sent, retried, failed, dead: ``common/messages/store.py`` ``record_outcomes``, which every sending path
  (consumer, inline, scheduler) writes its outcomes through, dead letters included;
- delivered, and failed for a ``delivery_failed`` receipt: ``common/webhooks/handler.py``, when the receipt is
  recorded for the first time (``carrier_receipts`` keeps one row per message and only news changes it), whether
  it moves the message at once or when our own outcome write lands;
- carrier latency: ``common/carrier/telnyx.py`` and ``common/mail/ses.py``, around the request itself (not the
  wait for a free connection or thread);
- the gauges: ``gauges.py``, from PostgreSQL.

The channel is a label only where it is at hand when the fact is counted: accepted and carrier latency.
Outcomes are written in batches that do not carry it, and Telnyx's receipts do not say it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

NAMESPACE = "Koinonia"
CHANNELS: tuple[str, ...] = ("sms", "mms", "mail")

Unit = Literal["Count", "Seconds", "Milliseconds"]
Kind = Literal["counter", "gauge", "histogram"]


class Metric(StrEnum):
    """A metric, by its CloudWatch name."""

    accepted = "MessagesAccepted"
    sent = "MessagesSent"
    delivered = "MessagesDelivered"
    failed = "MessagesFailed"
    retried = "MessagesRetried"
    dead = "MessagesDead"
    queue_depth = "QueueDepth"
    queue_age = "QueueAgeSeconds"
    dead_letter_backlog = "DeadLetterBacklog"
    carrier_latency = "CarrierLatency"


@dataclass(frozen=True)
class Definition:
    prometheus: str
    kind: Kind
    unit: Unit  # CloudWatch's; Prometheus names carry theirs (seconds)
    help: str
    by_channel: bool = False  # counted per channel (label ``channel``: sms, mms, mail)


CATALOG: dict[Metric, Definition] = {
    Metric.accepted: Definition(
        "koinonia_messages_accepted_total", "counter", "Count",
        "Messages accepted for sending (POST /messages, and the replies to STOP/START/HELP), counted at the commit; "
        "suppressed recipients and idempotent replays are not.",
        by_channel=True,
    ),
    Metric.sent: Definition(
        "koinonia_messages_sent_total", "counter", "Count",
        "Messages the carrier (Telnyx, or SES for mail) accepted, counted when the outcome is recorded.",
    ),
    Metric.delivered: Definition(
        "koinonia_messages_delivered_total", "counter", "Count",
        "Messages the carrier's receipt says were delivered (once per message, when the receipt is first recorded).",
    ),
    Metric.failed: Definition(
        "koinonia_messages_failed_total", "counter", "Count",
        "Messages that failed for good: refused by the carrier or out of attempts (each also a dead letter), "
        "or reported delivery_failed by the carrier's receipt.",
    ),
    Metric.retried: Definition(
        "koinonia_messages_retried_total", "counter", "Count",
        "Carrier attempts that failed and were scheduled to be tried again (status retrying recorded).",
    ),
    Metric.dead: Definition(
        "koinonia_messages_dead_total", "counter", "Count",
        "Dead letters written (a replayed message that fails again counts again).",
    ),
    Metric.queue_depth: Definition(
        "koinonia_queue_depth", "gauge", "Count",
        "Messages waiting in PostgreSQL (queued, scheduled, retrying; not those being sent).",
    ),
    Metric.queue_age: Definition(
        "koinonia_queue_oldest_age_seconds", "gauge", "Seconds",
        "How long the most overdue waiting message has been due (0: none is overdue).",
    ),
    Metric.dead_letter_backlog: Definition(
        "koinonia_dead_letters", "gauge", "Count", "Dead-letter rows waiting for a replay, an archive or a purge."
    ),
    Metric.carrier_latency: Definition(
        "koinonia_carrier_latency_seconds", "histogram", "Milliseconds",
        "Time of one carrier request (Telnyx POST /v2/messages, SES SendEmail), from the request to its answer "
        "or failure.",
        by_channel=True,
    ),
}  # fmt: skip

COUNTERS: tuple[Metric, ...] = tuple(m for m, d in CATALOG.items() if d.kind == "counter")
GAUGES: tuple[Metric, ...] = tuple(m for m, d in CATALOG.items() if d.kind == "gauge")

# Prometheus histogram buckets (seconds): a carrier answers in tens of milliseconds; its timeouts are 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
