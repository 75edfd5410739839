"""``GET /metrics`` on every function: the Prometheus text of this process (``METRICS_FORMAT=prometheus``).

Public like ``/health``: it holds counts, latencies and queue sizes of the whole system, nothing of any church,
and answers every caller alike. It is not part of the API, so it stays out of the functions' OpenAPI documents
(a scraper reads it, not a client, and it answers text, not JSON). With ``METRICS_FORMAT=emf`` (the cloud) it
answers 404: metrics go to CloudWatch, and a public function URL must not run PostgreSQL queries for whoever
asks.
"""

from __future__ import annotations

from common.api_errors import NotFound
from common.config import get_settings
from common.db import get_pool
from common.metrics import prometheus
from common.metrics.gauges import try_read_backlog
from common.metrics.registry import REGISTRY
from common.web import Reply, Route, route

METRICS_PATH = "/metrics"


def metrics_route() -> Route:
    """The route a function appends to its ``ROUTES`` (after its OpenAPI route: see functions/send/main.py)."""
    return route("GET", METRICS_PATH, lambda _request: scrape())


def scrape() -> Reply:
    """The exposition; ``NotFound`` when this process reports another way."""
    metrics_format = get_settings().metrics_format
    if metrics_format != "prometheus":
        raise NotFound(
            "metrics_not_served",
            f"GET /metrics answers with METRICS_FORMAT=prometheus; this process reports as {metrics_format}"
            " (emf: CloudWatch metrics in the function's logs)",
        )
    text = prometheus.render(REGISTRY.snapshot(), try_read_backlog(get_pool()))
    return Reply({}, headers={"Content-Type": prometheus.CONTENT_TYPE}, text=text)
