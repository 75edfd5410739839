"""retry-scheduler: one invocation per cloud tick; loops for its budget (see common/scheduler.py)."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from common.config import get_settings
from common.logs import configure_logging
from common.metrics.route import metrics_route
from common.openapi import openapi_route
from common.request_models import parse_model
from common.runtime import get_runtime
from common.scheduler import SchedulerEvent, SchedulerRequest, run_scheduler
from common.web import Reply, alive_route, dispatch, json_body, json_http_errors, route

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
get_settings()


def tick(request: flask.Request) -> Reply:
    """``POST /``: a budget (strict, no unknown fields); ``POST /events``: the scheduler's envelope (common/scheduler.py)."""
    payload: Any = json_body(request) if request.content_length else {}
    parsed = parse_model(SchedulerEvent if request.path.rstrip("/") == "/events" else SchedulerRequest, payload)
    rt = get_runtime()
    budget_s = parsed.budget_s if parsed.budget_s is not None else rt.settings.scheduler_budget_s
    return Reply({"report": run_scheduler(rt, budget_s).as_dict()})


ROUTES = [route("POST", "/", tick), route("POST", "/events", tick)]
ROUTES.append(alive_route())  # the Lambda Web Adapter's readiness check (common/web.py)
ROUTES.append(openapi_route("retry-scheduler", ROUTES))
# GET /metrics (common/metrics): read by scrapers, not clients; a new list, so it stays out of the document above
ROUTES = [*ROUTES, metrics_route()]


@functions_framework.http
def retry_scheduler(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
