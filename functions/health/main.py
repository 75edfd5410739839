"""health: ``/health``, ``/health/detailed``, ``/ready``, ``/alive``. No authentication, no secrets."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flask
import functions_framework

from common.config import get_settings
from common.db import get_pool
from common.health import HealthChecker, Report
from common.logs import configure_logging
from common.openapi import document
from common.redis_client import get_redis
from common.web import json_http_errors

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
settings = get_settings()  # a bad configuration stops the process here, with one line


@functools.cache
def _checker() -> HealthChecker:
    return HealthChecker(settings, get_pool(), get_redis())


ROUTES: dict[str, Callable[[], Report]] = {
    "/health": lambda: _checker().health(),
    "/health/detailed": lambda: _checker().detailed(),
    "/ready": lambda: _checker().ready(),
    "/alive": HealthChecker.alive,
    "/": lambda: _checker().health(),
}
ROUTES["/openapi.json"] = lambda: Report(document("health", [("GET", path) for path in ROUTES]), 200)


@functions_framework.http
def health(request: flask.Request) -> flask.Response:
    route = ROUTES.get(request.path.rstrip("/") or "/")
    if route is None or request.method not in ("GET", "HEAD"):
        message = f"no route {request.method} {request.path}; try GET /health, /health/detailed, /ready, /alive"
        return _json(Report({"error": {"code": "not_found", "message": message}}, 404))
    return _json(route())


def _json(report: Report) -> flask.Response:
    response = flask.jsonify(report.body)
    response.status_code = report.http_status
    response.headers["Cache-Control"] = "no-store"
    return response
