"""health: ``/health``, ``/health/detailed``, ``/ready``, ``/alive`` (and ``/metrics``). No authentication, no secrets."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flask
import functions_framework

from common import log_context
from common.config import get_settings
from common.db import get_pool
from common.health import HealthChecker, Report
from common.logs import configure_logging
from common.metrics.route import METRICS_PATH, metrics_route
from common.openapi import document
from common.redis_client import get_redis
from common.web import dispatch, json_http_errors

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
settings = get_settings()  # a bad configuration stops the process here, with one line


@functools.cache
def _checker() -> HealthChecker:
    return HealthChecker(settings, get_pool(), get_redis())


ROUTES: dict[str, Callable[[], Report | flask.Response]] = {
    "/health": lambda: _checker().health(),
    "/health/detailed": lambda: _checker().detailed(),
    "/ready": lambda: _checker().ready(),
    "/alive": HealthChecker.alive,
    "/": lambda: _checker().health(),
}
ROUTES["/openapi.json"] = lambda: Report(document("health", [("GET", path) for path in ROUTES if path != METRICS_PATH]), 200)
# GET /metrics is answered through common.web, as on every function: Prometheus text for scrapers, not in the document
ROUTES[METRICS_PATH] = lambda: dispatch(flask.request, [metrics_route()])


@functions_framework.http
def health(request: flask.Request) -> flask.Response:
    # Not routed by common.web.dispatch: its request ids (logs, X-Request-Id) are bound here (common/log_context.py).
    with log_context.bound(log_context.from_headers(request.headers, "health")):
        route = ROUTES.get(request.path.rstrip("/") or "/")
        if route is None or request.method not in ("GET", "HEAD"):
            message = f"no route {request.method} {request.path}; try GET /health, /health/detailed, /ready, /alive"
            return _json(Report({"error": {"code": "not_found", "message": message}}, 404))
        answer = route()
        return answer if isinstance(answer, flask.Response) else _json(answer)


def _json(report: Report) -> flask.Response:
    response = flask.jsonify(report.body)
    response.status_code = report.http_status
    response.headers["Cache-Control"] = "no-store"
    if (request_id := log_context.request_id()) is not None:
        response.headers[log_context.REQUEST_ID_HEADER] = request_id
    return response
