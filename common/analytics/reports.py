"""A broadcast's delivery report, counted from its messages when asked (not from the aggregates).

One statement: the broadcast (church-scoped: another church's id finds nothing, a 404) and its messages
grouped by status and error code, read through ``messages_broadcast (broadcast_id)``. A broadcast has at
most 10,000 recipients (the send API's limit), so the count is exact and costs one index range; the
aggregates are per day, and a broadcast is not a day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.analytics.status_groups import CARRIER_ACCEPTED, GROUP_OF, StatusGroup
from common.db.pool import Pool
from common.messages.states import MessageStatus

REPORT_SQL = """
SELECT b.channel, b.created_at, s.status, s.code, s.n
FROM broadcasts b
LEFT JOIN LATERAL (
    SELECT m.status, m.last_error_code AS code, count(*) AS n
    FROM messages m
    WHERE m.broadcast_id = b.id AND m.church_id = b.church_id
    GROUP BY m.status, m.last_error_code
) s ON true
WHERE b.id = CAST(:broadcast_id AS uuid) AND b.church_id = CAST(:church_id AS uuid)
"""

UNKNOWN_CODE = "unknown"


@dataclass
class BroadcastReport:
    broadcast_id: str
    channel: str
    created_at: datetime
    counts: dict[StatusGroup, int] = field(default_factory=lambda: dict.fromkeys(StatusGroup, 0))
    by_status: dict[str, int] = field(default_factory=dict)
    failed_by_code: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def carrier_accepted(self) -> int:
        return sum(n for status, n in self.by_status.items() if status in CARRIER_ACCEPTED)

    def as_json(self) -> dict[str, Any]:
        accepted = self.carrier_accepted
        c = self.counts
        return {
            "broadcast_id": self.broadcast_id,
            "channel": self.channel,
            "created_at": self.created_at.isoformat(),
            "total": self.total,
            "delivered": c[StatusGroup.delivered],
            "sent": c[StatusGroup.sent],  # the carrier took it; no delivery receipt yet
            "unconfirmed": c[StatusGroup.unconfirmed],
            "failed": {
                "total": c[StatusGroup.failed],
                "rejected": self.by_status.get(MessageStatus.failed, 0),  # never accepted by the carrier
                "undelivered": self.by_status.get(MessageStatus.delivery_failed, 0),  # accepted, not delivered
                "by_code": dict(sorted(self.failed_by_code.items())),
            },
            "opted_out": c[StatusGroup.suppressed],
            "expired": c[StatusGroup.expired],
            "pending": c[StatusGroup.pending],
            "carrier_accepted": accepted,
            "delivery_rate": round(c[StatusGroup.delivered] / accepted, 5) if accepted else None,
        }


def broadcast_report(pool: Pool, church_id: str, broadcast_id: str) -> BroadcastReport | None:
    """The church's broadcast's report; ``None`` if the church has no such broadcast."""
    rows = pool.run(REPORT_SQL, church_id=church_id, broadcast_id=broadcast_id)
    if not rows:
        return None
    report = BroadcastReport(broadcast_id, rows[0][0], rows[0][1])
    for _channel, _created, status, code, n in rows:
        if status is None:  # a broadcast without messages (every recipient refused at accept: none are written)
            continue
        group = GROUP_OF[MessageStatus(status)]
        report.counts[group] += int(n)
        report.by_status[status] = report.by_status.get(status, 0) + int(n)
        if group is StatusGroup.failed:
            key = code or UNKNOWN_CODE
            report.failed_by_code[key] = report.failed_by_code.get(key, 0) + int(n)
    return report
