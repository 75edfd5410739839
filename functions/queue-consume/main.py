"""queue-consume: drain the Redis queue through the carrier for one budget, then answer with a report.

Invoked by the scheduler tick, by an SQS wake-up (``POST /events`` with ``Records``), or by hand:
``POST /`` with ``{"max_messages": 5000, "max_seconds": 50, "stop_when_idle": true}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import flask
import functions_framework

from common.config import get_settings
from common.consume import ConsumeEvent, ConsumeRequest, run_consumer
from common.logs import configure_logging
from common.metrics.route import metrics_route
from common.openapi import openapi_route
from common.request_models import parse_model
from common.runtime import get_runtime
from common.web import Reply, alive_route, dispatch, json_body, json_http_errors, route

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
get_settings()


def consume(request: flask.Request) -> Reply:
    """``POST /``: a budget (strict, no unknown fields); ``POST /events``: the cloud's envelope (common/consume.py)."""
    payload: Any = json_body(request) if request.content_length else {}
    parsed = parse_model(ConsumeEvent if request.path.rstrip("/") == "/events" else ConsumeRequest, payload)
    report = asyncio.run(run_consumer(get_runtime(), parsed.budget()))
    body: dict[str, Any] = {"report": report.as_dict()}
    if isinstance(parsed, ConsumeEvent) and parsed.Records is not None:
        body["batchItemFailures"] = []  # a wake-up carries no work of its own; never redeliver it
    return Reply(body)


ROUTES = [route("POST", "/", consume), route("POST", "/events", consume)]
ROUTES.append(alive_route())  # the Lambda Web Adapter's readiness check (common/web.py)
ROUTES.append(openapi_route("queue-consume", ROUTES))
# GET /metrics (common/metrics): read by scrapers, not clients; a new list, so it stays out of the document above
ROUTES = [*ROUTES, metrics_route()]


@functions_framework.http
def queue_consume(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
