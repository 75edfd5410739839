"""The dead-letter alert: too many waiting, or too many arriving.

Fires when the dead letters waiting (not replayed) reach ``DLQ_ALERT_THRESHOLD``, or the ones created in
the last hour reach ``DLQ_ALERT_GROWTH``. An alert is two lines on stdout, no phone numbers or bodies:

- one structured log line (logger ``koinonia.alerts``, WARNING) with ``alert="dead_letters"``,
  ``count``, ``last_hour`` and ``top_error_codes`` (``[{code, count}]``, the five commonest);
- one CloudWatch Embedded Metric Format line (namespace ``Koinonia``, dimension ``Service=dlq-drain``,
  metrics ``DeadLetters`` and ``DeadLettersLastHour``), which CloudWatch Logs turns into metrics to
  alarm on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from common.config import Settings
from common.db.pool import Pool

logger = logging.getLogger("koinonia.alerts")

metric_namespace = "Koinonia"
metric_service = "dlq-drain"
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


def check(pool: Pool, settings: Settings, *, out: TextIO | None = None) -> AlertCheck:
    """Measure, and emit the alert (log line + metric) if a limit is reached."""
    current = stats(pool)
    fired = current.count >= settings.dlq_alert_threshold or current.last_hour >= settings.dlq_alert_growth
    result = AlertCheck(current, settings.dlq_alert_threshold, settings.dlq_alert_growth, fired)
    if fired:
        emit(result, out=out)
    return result


def emit(result: AlertCheck, *, out: TextIO | None = None) -> None:
    s = result.stats
    logger.warning(
        "dead letters need attention",
        extra={"fields": {
            "alert": "dead_letters", "count": s.count, "last_hour": s.last_hour,
            "top_error_codes": s.top_error_codes, "threshold": result.threshold, "growth": result.growth,
        }},
    )  # fmt: skip
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps(emf_document(s)) + "\n")
    stream.flush()


def emf_document(s: DeadLetterStats, *, timestamp_ms: int | None = None) -> dict[str, Any]:
    return {
        "_aws": {
            "Timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": metric_namespace,
                    "Dimensions": [["Service"]],
                    "Metrics": [
                        {"Name": "DeadLetters", "Unit": "Count"},
                        {"Name": "DeadLettersLastHour", "Unit": "Count"},
                    ],
                }
            ],
        },
        "Service": metric_service,
        "DeadLetters": s.count,
        "DeadLettersLastHour": s.last_hour,
    }
