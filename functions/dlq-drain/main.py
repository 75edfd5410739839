"""dlq-drain: list, replay, purge and archive dead letters; on the scheduler's tick, archive and alert.

    GET  /dead-letters              filtered, keyset-paginated list (church key: its own; operator: all)
    POST /dead-letters/replay       {"ids": [...]} or {"filter": {...}}: back on the queue, once
    POST /dead-letters/purge        delete dead-letter rows (their messages stay failed)
    POST /dead-letters/archive      move rows past retention to dead_letters_archive
    POST /events                    the scheduler's tick (any body): archive past retention, then alert

Authorization: ``Bearer <church API key>`` or ``Bearer <OPERATOR_TOKEN>``. The logic is in
``common.dead_letters``.
"""

from __future__ import annotations

import flask
import functions_framework

from common.auth.cache import key_cache
from common.config import get_settings
from common.dead_letters import api
from common.dead_letters.access import Scope, authorize
from common.logs import configure_logging
from common.metrics.route import metrics_route
from common.openapi import openapi_route
from common.request_models import parse_model
from common.runtime import get_runtime
from common.web import Reply, alive_route, dispatch, json_body, json_http_errors, route

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
get_settings()  # a bad configuration stops the process here, with one line


def _scope(request: flask.Request) -> Scope:
    rt = get_runtime()
    return authorize(rt.pool, rt.settings, request.headers.get("Authorization"), cache=key_cache(rt))


def list_dead_letters(request: flask.Request) -> Reply:
    scope = _scope(request)
    return Reply(api.list_dead_letters(get_runtime(), scope, dict(request.args)))


def replay(request: flask.Request) -> Reply:
    scope = _scope(request)
    return Reply(api.replay_request(get_runtime(), scope, json_body(request)))


def purge(request: flask.Request) -> Reply:
    scope = _scope(request)
    return Reply(api.purge_request(get_runtime(), scope, json_body(request)))


def archive(request: flask.Request) -> Reply:
    scope = _scope(request)
    payload = json_body(request) if request.content_length else {}  # no body: the defaults; a JSON null is refused
    return Reply(api.archive_request(get_runtime(), scope, payload))


def tick(request: flask.Request) -> Reply:
    if request.content_length:  # the scheduler's event: its content is not used, but it must be a JSON object
        parse_model(api.TickEvent, json_body(request))
    return Reply(api.scheduled_tick(get_runtime()))


ROUTES = [
    route("GET", "/dead-letters", list_dead_letters),
    route("POST", "/dead-letters/replay", replay),
    route("POST", "/dead-letters/purge", purge),
    route("POST", "/dead-letters/archive", archive),
    route("POST", "/events", tick),
]
ROUTES.append(alive_route())  # the Lambda Web Adapter's readiness check (common/web.py)
ROUTES.append(openapi_route("dlq-drain", ROUTES))
# GET /metrics (common/metrics): read by scrapers, not clients; a new list, so it stays out of the document above
ROUTES = [*ROUTES, metrics_route()]


@functions_framework.http
def dlq_drain(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
