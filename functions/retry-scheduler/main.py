"""retry-scheduler: one invocation per cloud tick; loops for its budget (see common/scheduler.py)."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from common.api_errors import Unprocessable
from common.config import get_settings
from common.logs import configure_logging
from common.runtime import get_runtime
from common.scheduler import run_scheduler
from common.web import Reply, dispatch, json_body, route

configure_logging()
get_settings()


def tick(request: flask.Request) -> Reply:
    payload: Any = json_body(request) if request.content_length else {}
    rt = get_runtime()
    try:
        budget_s = float(payload.get("budget_s", rt.settings.scheduler_budget_s)) if isinstance(payload, dict) else None
    except (TypeError, ValueError):
        budget_s = None
    if budget_s is None or not 0 < budget_s <= 900:
        raise Unprocessable("validation_failed", "budget_s must be a number of seconds from 0 to 900", field="budget_s")
    return Reply({"report": run_scheduler(rt, budget_s).as_dict()})


ROUTES = [route("POST", "/", tick), route("POST", "/events", tick)]


@functions_framework.http
def retry_scheduler(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
