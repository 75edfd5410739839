"""Analytics and reports: daily aggregates per church, day and channel, kept by recomputing, never counting.

``types`` (events and buckets), ``events`` (``emit``/``aemit``: after a commit, best effort), ``stream`` (the
Redis Stream and its Lua in ``scripts/``), ``processor`` (entries -> buckets -> recompute -> ack),
``aggregates`` (every statement on ``daily_aggregates``; the column definitions), ``status_groups`` (how
statuses are counted), ``reports`` (a broadcast's delivery report), ``rebuild`` and ``cli`` (``koinonia
analytics rebuild``), ``api`` (``GET /usage``, ``/broadcasts/{id}/report``, ``/analytics/daily``).
"""

from common.analytics.events import aemit, emit
from common.analytics.processor import BatchReport, Processor, process_batch
from common.analytics.types import Bucket, Event, EventType, Kind

__all__ = ["BatchReport", "Bucket", "Event", "EventType", "Kind", "Processor", "aemit", "emit", "process_batch"]
