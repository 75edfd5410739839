"""The dead-letter alert: too many waiting, or too many arriving.

Fires when the dead letters waiting (not replayed) reach ``DLQ_ALERT_THRESHOLD``, or the ones created in
the last hour reach ``DLQ_ALERT_GROWTH``. An alert is one structured log line, no phone numbers or bodies
(logger ``koinonia.alerts``, WARNING) with ``alert="dead_letters"``, ``count``, ``last_hour`` and
``top_error_codes`` (``[{code, count}]``, the five commonest): what to look at first.

It writes no metric of its own. CloudWatch alarms on the same two facts from common/metrics (namespace
``Koinonia``, dimension ``Stage``; template.yaml): ``DeadLetterBacklog`` (the dead-letter rows, a gauge the
retry-scheduler records every minute) and ``MessagesDead`` (dead letters written, summed over an hour), which,
unlike a metric written only when this alert fires, have data whether or not anything is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from common.config import Settings
from common.db.pool import Pool

logger = logging.getLogger("koinonia.alerts")

top_codes = 5

_STATS_SQL = """
SELECT (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL),
       (SELECT count(*) FROM dead_letters WHERE created_at >= now() - interval '1 hour')
"""

_TOP_CODES_SQL = """
SELECT coalesce(error_code, 'unknown') AS code, count(*) AS n
FROM dead_letters
WHERE replayed_at IS NULL
GROUP BY 1
ORDER BY n DESC, code
LIMIT :limit
"""


@dataclass(frozen=True)
class DeadLetterStats:
    count: int  # waiting: not replayed
    last_hour: int  # created (or failed again after a replay) in the last hour
    top_error_codes: list[dict[str, Any]]


@dataclass(frozen=True)
class AlertCheck:
    stats: DeadLetterStats
    threshold: int
    growth: int
    fired: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert": self.fired,
            "count": self.stats.count,
            "last_hour": self.stats.last_hour,
            "top_error_codes": self.stats.top_error_codes,
            "threshold": self.threshold,
            "growth": self.growth,
        }


def stats(pool: Pool) -> DeadLetterStats:
    count, last_hour = pool.run(_STATS_SQL)[0]
    codes = [{"code": code, "count": int(n)} for code, n in pool.run(_TOP_CODES_SQL, limit=top_codes)]
    return DeadLetterStats(int(count), int(last_hour), codes)


def check(pool: Pool, settings: Settings) -> AlertCheck:
    """Measure, and emit the alert (its log line) if a limit is reached."""
    current = stats(pool)
    fired = current.count >= settings.dlq_alert_threshold or current.last_hour >= settings.dlq_alert_growth
    result = AlertCheck(current, settings.dlq_alert_threshold, settings.dlq_alert_growth, fired)
    if fired:
        emit(result)
    return result


def emit(result: AlertCheck) -> None:
    s = result.stats
    logger.warning(
        "dead letters need attention",
        extra={"fields": {
            "alert": "dead_letters", "count": s.count, "last_hour": s.last_hour,
            "top_error_codes": s.top_error_codes, "threshold": result.threshold, "growth": result.growth,
        }},
    )  # fmt: skip
