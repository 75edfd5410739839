"""Metrics: message counts, carrier latency and queue gauges, out as CloudWatch EMF or Prometheus text.

One registry per process (``registry.py``), read two ways by ``METRICS_FORMAT``:

- ``prometheus`` (the default, local): every function answers ``GET /metrics`` (``route.py``) with totals
  since the process started and the queue gauges read from PostgreSQL at scrape time;
- ``emf`` (the cloud): ``flush()`` writes what changed as one JSON line on stdout, once per invocation
  (``common/web.py`` after each request, ``common/consume.py`` after a consumer run); ``STAGE`` is its one
  dimension;
- ``off``: nothing is written or served.

Each fact is counted once, where it is committed (``catalog.py`` names the place of each)::

    from common import metrics
    metrics.count(metrics.Metric.accepted, 250, channel="sms")  # once per batch, never per message in a loop
    metrics.observe_latency(0.042, channel="sms")  # one carrier request

Recording is a lock and a dict update, whatever the format; only the output depends on it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import flask

from common.config import get_settings
from common.metrics import emf
from common.metrics.catalog import Metric
from common.metrics.registry import REGISTRY

if TYPE_CHECKING:
    from common.config import Settings
    from common.db.pool import Pool
    from common.send.service import Accepted

__all__ = [
    "Metric", "count", "count_accepted", "count_outcomes", "count_receipt", "flush", "observe_latency",
    "record_backlog",
]  # fmt: skip

logger = logging.getLogger("koinonia.metrics")


def count(metric: Metric, n: int = 1, *, channel: str = "") -> None:
    REGISTRY.count(metric, n, channel)


def observe_latency(seconds: float, *, channel: str) -> None:
    """One carrier request (Telnyx or SES) took ``seconds``, whatever it answered."""
    REGISTRY.observe_latency(seconds, channel)


def count_accepted(accepted: Accepted) -> None:
    """A send's messages, after its commit: what will go (queued now or scheduled), not the suppressed ones."""
    REGISTRY.count(Metric.accepted, len(accepted.queued_ids) + len(accepted.scheduled), accepted.channel)


def count_outcomes(statuses: Iterable[str]) -> None:
    """Outcomes written by one ``record_outcomes`` batch: sent, retrying, failed (each one a dead letter)."""
    written = Counter(statuses)
    REGISTRY.count(Metric.sent, written["sent"])
    REGISTRY.count(Metric.retried, written["retrying"])
    REGISTRY.count(Metric.failed, written["failed"])
    REGISTRY.count(Metric.dead, written["failed"])


def count_receipt(status: str) -> None:
    """A delivery receipt recorded for the first time (a message's final word from the carrier comes once)."""
    if status == "delivered":
        REGISTRY.count(Metric.delivered)
    elif status == "delivery_failed":
        REGISTRY.count(Metric.failed)


def record_backlog(pool: Pool, settings: Settings) -> None:
    """The queue gauges, for the next EMF flush (the retry-scheduler, once per invocation; ``gauges.py``)."""
    from common.metrics.gauges import record_backlog as record

    record(pool, settings)


def flush(function: str | None = None) -> int:
    """With ``METRICS_FORMAT=emf``: write what changed since the last flush as EMF on stdout; the lines written
    (0 when nothing changed or in another format). Never raises: metrics must not fail a request."""
    try:
        settings = get_settings()
        if settings.metrics_format != "emf":
            return 0
        delta = REGISTRY.take_delta()
        if not delta:
            return 0
        return emf.write(delta, stage=settings.stage, function=function or _function_name())
    except Exception:
        logger.exception("metrics not flushed")
        return 0


def _function_name() -> str:
    """The functions-framework target serving this process (its Flask app is named after it), as the logs say."""
    if flask.has_app_context():
        return flask.current_app.name
    return os.environ.get("FUNCTION_TARGET") or "cli"
