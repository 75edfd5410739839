"""queue-consume: drain the Redis queue through the carrier for one budget, then answer with a report.

Invoked by the scheduler tick, by an SQS wake-up (``POST /events`` with ``Records``), or by hand:
``POST /`` with ``{"max_messages": 5000, "max_seconds": 50, "stop_when_idle": true}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import flask
import functions_framework

from common.api_errors import Unprocessable
from common.config import get_settings
from common.consume import ConsumeBudget, run_consumer
from common.logs import configure_logging
from common.runtime import get_runtime
from common.web import Reply, dispatch, json_body, route

configure_logging()
get_settings()


def consume(request: flask.Request) -> Reply:
    payload: Any = json_body(request) if request.content_length else {}
    if not isinstance(payload, dict):
        raise Unprocessable("validation_failed", "the body must be a JSON object", field="")
    try:
        budget = ConsumeBudget(
            max_messages=int(payload.get("max_messages", 100_000)),
            max_seconds=float(payload.get("max_seconds", 50.0)),
            stop_when_idle=bool(payload.get("stop_when_idle", True)),
        )
    except (TypeError, ValueError):
        raise Unprocessable(
            "validation_failed", "max_messages and max_seconds must be numbers", field="max_messages"
        ) from None
    report = asyncio.run(run_consumer(get_runtime(), budget))
    body: dict[str, Any] = {"report": report.as_dict()}
    if "Records" in payload:
        body["batchItemFailures"] = []  # a wake-up carries no work of its own; never redeliver it
    return Reply(body)


ROUTES = [route("POST", "/", consume), route("POST", "/events", consume)]


@functions_framework.http
def queue_consume(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
