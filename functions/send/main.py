"""send: ``POST /messages`` (accept a send); reads: ``GET /messages[/{id}]``, ``GET /conversations[/{id}/messages]``."""

from __future__ import annotations

import flask
import functions_framework

from common.auth.authenticate import authenticate
from common.config import get_settings
from common.conversations import read_api as conversations_api
from common.logs import configure_logging
from common.messages import read_api
from common.runtime import get_runtime
from common.send.models import parse_send_request
from common.send.submit import submit
from common.web import Reply, dispatch, json_body, route

configure_logging()
get_settings()  # a bad configuration stops the process here, with one line


def post_messages(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate(rt.pool, request.headers.get("Authorization"))
    payload = json_body(request)
    send_request = parse_send_request(payload)
    return submit(rt, caller.church_id, send_request, payload, request.headers.get("Idempotency-Key"))


def get_message(request: flask.Request, message_id: str) -> Reply:
    rt = get_runtime()
    caller = authenticate(rt.pool, request.headers.get("Authorization"))
    return Reply(read_api.get_one(rt.pool, caller.church_id, message_id))


def list_messages(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate(rt.pool, request.headers.get("Authorization"))
    return Reply(read_api.list_page(rt.pool, caller.church_id, dict(request.args)))


def list_conversations(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = authenticate(rt.pool, request.headers.get("Authorization"))
    return Reply(conversations_api.list_page(rt.pool, caller.church_id, dict(request.args)))


def conversation_thread(request: flask.Request, conversation_id: str) -> Reply:
    rt = get_runtime()
    caller = authenticate(rt.pool, request.headers.get("Authorization"))
    return Reply(conversations_api.thread_page(rt.pool, caller.church_id, conversation_id, dict(request.args)))


ROUTES = [
    route("POST", "/messages", post_messages),
    route("GET", "/messages", list_messages),
    route("GET", "/messages/{message_id}", get_message),
    route("GET", "/conversations", list_conversations),
    route("GET", "/conversations/{conversation_id}/messages", conversation_thread),
]


@functions_framework.http
def send(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
