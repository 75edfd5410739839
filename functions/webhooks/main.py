"""webhooks: Telnyx events in (``POST /webhooks/telnyx``): delivery receipts and members' texts.

Signed with Ed25519 (``TELNYX_PUBLIC_KEY``; fail-closed), de-duplicated by event id, applied in one
transaction, answered 2xx at once. The logic is in ``common.webhooks.handler``.
"""

from __future__ import annotations

import flask
import functions_framework

from common.config import get_settings
from common.logs import configure_logging
from common.metrics.route import metrics_route
from common.openapi import openapi_route
from common.runtime import get_runtime
from common.web import Reply, alive_route, dispatch, json_http_errors, route
from common.webhooks.handler import handle, max_webhook_bytes

configure_logging()
json_http_errors()  # Flask's own 404/405 in our JSON shape
get_settings()  # a bad configuration stops the process here, with one line


def telnyx_event(request: flask.Request) -> Reply:
    body = request.stream.read(max_webhook_bytes + 1)
    return handle(get_runtime(), dict(request.headers.items()), body)


ROUTES = [route("POST", "/webhooks/telnyx", telnyx_event)]
ROUTES.append(alive_route())  # the Lambda Web Adapter's readiness check (common/web.py)
ROUTES.append(openapi_route("webhooks", ROUTES))
# GET /metrics (common/metrics): read by scrapers, not clients; a new list, so it stays out of the document above
ROUTES = [*ROUTES, metrics_route()]


@functions_framework.http
def webhooks(request: flask.Request) -> flask.Response:
    return dispatch(request, ROUTES)
