"""send: ``POST /messages`` (accept a send); reads: ``GET /messages[/{id}]``, ``GET /conversations[/{id}/messages]``;
analytics: ``GET /usage``, ``GET /broadcasts/{id}/report``, ``GET /analytics/daily``; keys and audit: ``/keys[/{id}]``,
``/audit``, and the operator's ``/churches/{church_id}/keys[/{id}]``, ``/audit``."""

from __future__ import annotations

import flask
import functions_framework

from common.analytics import api as analytics_api
from common.auth import api as keys_api
from common.auth.authenticate import authenticate_runtime
from common.config import get_settings
from common.conversations import read_api as conversations_api
from common.logs import configure_logging
from common.messages import read_api
from common.metrics.route import metrics_route
from common.openapi import openapi_route
from common.privacy import api as privacy_api
from common.runtime import get_runtime
from common.send.models import parse_send_request
from common.send.submit import submit
from common.web import Reply, alive_route, dispatch, json_body, json_http_errors, route

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
get_settings()  # a bad configuration stops the process here, with one line


def post_messages(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    payload = json_body(request)
    send_request = parse_send_request(payload)
    return submit(rt, caller.church_id, send_request, payload, request.headers.get("Idempotency-Key"))


def get_message(request: flask.Request, message_id: str) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return Reply(read_api.get_one(rt.pool, caller.church_id, message_id))


def list_messages(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return Reply(read_api.list_page(rt.pool, caller.church_id, dict(request.args)))


def list_conversations(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return Reply(conversations_api.list_page(rt.pool, caller.church_id, dict(request.args)))


def conversation_thread(request: flask.Request, conversation_id: str) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return Reply(conversations_api.thread_page(rt.pool, caller.church_id, conversation_id, dict(request.args)))


def post_privacy_deletion(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return privacy_api.deletion_request(rt, caller.church_id, caller.actor, json_body(request))


def get_usage(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return analytics_api.usage(rt, caller.church_id)


def broadcast_report(request: flask.Request, broadcast_id: str) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return analytics_api.report(rt, caller.church_id, broadcast_id)


def analytics_daily(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate_runtime(rt, request.headers.get("Authorization"))
    return analytics_api.daily(rt, caller.church_id, dict(request.args))


ROUTES = [
    route("POST", "/messages", post_messages),
    route("GET", "/messages", list_messages),
    route("GET", "/messages/{message_id}", get_message),
    route("GET", "/conversations", list_conversations),
    route("GET", "/conversations/{conversation_id}/messages", conversation_thread),
    route("POST", "/privacy/deletions", post_privacy_deletion),  # erase one person (common/privacy/api.py)
    # Usage, reports and daily aggregates (common/analytics/api.py)
    route("GET", "/usage", get_usage),
    route("GET", "/broadcasts/{broadcast_id}/report", broadcast_report),
    route("GET", "/analytics/daily", analytics_daily),
    # API keys and the audit trail (common/auth/api.py): a church's own, and the operator's for any church
    route("POST", "/keys", keys_api.create_own_key),
    route("GET", "/keys", keys_api.list_own_keys),
    route("DELETE", "/keys/{key_id}", keys_api.revoke_own_key),
    route("GET", "/audit", keys_api.own_audit),
    route("POST", "/churches/{church_id}/keys", keys_api.create_church_key),
    route("GET", "/churches/{church_id}/keys", keys_api.list_church_keys),
    route("DELETE", "/churches/{church_id}/keys/{key_id}", keys_api.revoke_church_key),
    route("GET", "/churches/{church_id}/audit", keys_api.church_audit),
]
ROUTES.append(alive_route())  # the Lambda Web Adapter's readiness check (common/web.py)
ROUTES.append(openapi_route("send", ROUTES))
# GET /metrics (common/metrics): read by scrapers, not clients; a new list, so it stays out of the document above
ROUTES = [*ROUTES, metrics_route()]


@functions_framework.http
def send(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
