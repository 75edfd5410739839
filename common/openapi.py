"""An OpenAPI 3.1 document per function, built from its routes and the pydantic request models.

Every function serves its own at ``GET /openapi.json`` (``openapi_route`` for the functions that route with
``common.web``; the health function adds an entry of its own). A document has one operation per route the
function really has (read from its ``ROUTES``), so it cannot list a route that does not exist; what it says
about each one comes from ``OPERATIONS`` below: the request body (a pydantic model: its ``model_json_schema``
*is* the schema, the same model that validates the body), query, path and header parameters, and every 4xx
the route can answer with the error codes it carries, all in the one shape of common/api_errors.py:
``{"error": {"code", "message", "field"?, "details"?}}``.

A route with no entry here is still listed, marked ``x-undocumented``, and tests/test_openapi.py fails until
it is described: add its ``Operation`` when you add a route. Errors any JSON body can hit (common/web.py
``parse_json``) are added to every operation with a body; ``DISPATCH_ERRORS`` holds answers the shared
dispatch gives on any route (a hook there adds its own).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from common.analytics.api import DAILY_400
from common.analytics.api import max_days as analytics_max_days
from common.auth.api import KeyCreateRequest
from common.consume import ConsumeEvent, ConsumeRequest
from common.dead_letters.api import ArchiveBody, PurgeBody, ReplayBody, TickEvent
from common.dead_letters.queries import max_limit as dlq_max_limit
from common.media import MESSAGES as MEDIA_MESSAGES
from common.media import WARNING_CODES as MEDIA_WARNING_CODES
from common.messages.read_api import max_limit
from common.privacy.api import DELETION_422, DeletionRequest
from common.scheduler import SchedulerEvent, SchedulerRequest
from common.send.models import SendRequest
from common.web import Reply, Route, route
from common.webhooks.events import TelnyxWebhook
from common.webhooks.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER

OPENAPI_VERSION = "3.1.0"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "stable: branch on it"},
                "message": {"type": "string", "description": "what went wrong and what to do"},
                "field": {"type": "string", "description": "the field at fault: to[3], filter.from, Idempotency-Key"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
Errors = dict[int, tuple[str, ...]]
JSON_BODY_ERRORS: Errors = {
    400: ("invalid_json", "json_too_deep", "duplicate_key"),
    413: ("payload_too_large",),
    422: ("validation_failed", "invalid_string"),
}
AUTH_ERRORS: Errors = {401: ("unauthorized",)}
DB_ERRORS: Errors = {503: ("database_unavailable",)}
# Answers common.web.dispatch may give on any route: an address past its failed-authentication limit is
# refused before the handler runs (common/limits/auth_failures.py). The health function does not dispatch.
DISPATCH_ERRORS: Errors = {429: ("too_many_auth_failures",)}
NOT_DISPATCHED = frozenset({"health"})
_REASONS = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    422: "Unprocessable",
    429: "Too many requests",
    503: "Unavailable",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # query | header | path
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    summary: str
    errors: Errors = field(default_factory=dict)  # beyond the automatic ones (auth, body, database)
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    auth: bool = True  # ``Authorization: Bearer <church API key>`` (or the operator token where said)
    database: bool = True  # may answer 503 database_unavailable
    success: int = 200
    responses: dict[int, str] = field(default_factory=dict)  # other answers that are not errors (health's 503)
    description: str = ""


# -- the functions' routes ---------------------------------------------------------------------------------------

def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


_LIMIT = Param("limit", schema={"type": "integer", "minimum": 1, "maximum": max_limit}, description="page size (default 50)")
_CURSOR = Param("cursor", description="next_cursor from the previous page")
_PAGES: Errors = {400: ("invalid_limit", "invalid_cursor")}
_SPEC = Operation("this function's OpenAPI document", auth=False, database=False)
_ALIVE = Operation("the process answers (no dependency checked; the adapter's readiness path)", auth=False, database=False)
_HEALTH = {503: "unhealthy or not ready: the body says which check failed"}
_SEND_422 = (
    "invalid_idempotency_key", "text_too_long", "invalid_recipients", "no_recipients", "recipients_opted_out",
    "invalid_from", "unknown_sender", "no_sender", "unknown_group",
    *sorted(MEDIA_MESSAGES.keys() - MEDIA_WARNING_CODES),  # an MMS's media check refuses (common/media.py)
)  # fmt: skip

# API keys and the audit trail (common/auth/api.py): a church's own, and the operator's for any church.
_CHURCH_ONLY: Errors = {403: ("church_key_required",)}
_OPERATOR_ONLY: Errors = {403: ("operator_only",), 404: ("not_found",)}
_AUDIT_PAGES: Errors = {400: ("invalid_parameter", "invalid_limit", "invalid_cursor")}
_KEY_SHOWN_ONCE = "The answer holds the whole key, once: it is stored only as a SHA-256 hash."
_KEYS_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/keys"): Operation(
        "make another API key for the calling church (rotation: make, move apps over, revoke the old one)",
        body=KeyCreateRequest, body_required=False, success=201, errors={**_CHURCH_ONLY, 409: ("too_many_keys",)},
        description=_KEY_SHOWN_ONCE,
    ),
    ("GET", "/keys"): Operation("the church's API keys, revoked ones included (never a key or hash)", errors=_CHURCH_ONLY),
    ("DELETE", "/keys/{key_id}"): Operation(
        "revoke one of the church's keys, at once (idempotent)",
        errors={**_CHURCH_ONLY, 404: ("not_found",), 409: ("last_active_key",)},
    ),
    ("GET", "/audit"): Operation(
        "the church's audit trail, newest first", params=(_LIMIT, _CURSOR), errors={**_AUDIT_PAGES, **_CHURCH_ONLY}
    ),
    ("POST", "/churches/{church_id}/keys"): Operation(
        "operator: make an API key for a church", body=KeyCreateRequest, body_required=False, success=201,
        errors={**_OPERATOR_ONLY, 409: ("too_many_keys",)}, description=_KEY_SHOWN_ONCE + " Operator token only.",
    ),
    ("GET", "/churches/{church_id}/keys"): Operation("operator: a church's API keys", errors=_OPERATOR_ONLY),
    ("DELETE", "/churches/{church_id}/keys/{key_id}"): Operation(
        "operator: revoke a church's key", errors={**_OPERATOR_ONLY, 409: ("last_active_key",)}
    ),
    ("GET", "/churches/{church_id}/audit"): Operation(
        "operator: a church's audit trail", params=(_LIMIT, _CURSOR), errors={**_AUDIT_PAGES, **_OPERATOR_ONLY}
    ),
}  # fmt: skip

# Usage, broadcast reports and daily aggregates (common/analytics/api.py): the calling church's own.
_DAY_PARAM = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_ANALYTICS_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/usage"): Operation(
        "the current billing period: plan, period, allowance, used, remaining, billed segments by channel",
        errors={404: ("no_subscription",)},
        description="Counted from the messages when asked (the numbers the quota enforces), not from the aggregates.",
    ),
    ("GET", "/broadcasts/{broadcast_id}/report"): Operation(
        "one broadcast's delivery: delivered, sent, failed (per error code), opted out, expired, pending",
        errors={404: ("not_found",)},
        description="Counted from the broadcast's messages when asked. Another church's broadcast is 404.",
    ),
    ("GET", "/analytics/daily"): Operation(
        "per day (the church's calendar) and channel: counts, segments, billed segments, cost, delivery rate, "
        "median time to delivery, replies, opt-outs",
        params=(
            Param("from", schema=_or_empty(_DAY_PARAM), description="first day, inclusive (default: 29 days before to)"),
            Param("to", schema=_or_empty(_DAY_PARAM), description="last day, inclusive (default: today)"),
            Param("channel", schema=_or_empty({"type": "string", "enum": ["sms", "mms", "mail"]})),
        ),
        errors={400: DAILY_400},
        description=f"At most {analytics_max_days} days per call. Rows are recomputed from the messages as they change "
        "(each says when: computed_at); a day with nothing has no row.",
    ),
}

OPERATIONS: dict[str, dict[tuple[str, str], Operation]] = {
    "send": {
        ("POST", "/messages"): Operation(
            "accept an SMS/MMS for numbers and/or groups, or a mail for email addresses and/or groups",
            body=SendRequest,
            success=202,
            params=(
                Param(
                    "Idempotency-Key",
                    "header",
                    {"type": "string", "pattern": "^[A-Za-z0-9_:.-]{1,255}$"},
                    "the same key and body answer with the first answer and send nothing new",
                ),
            ),
            errors={
                402: ("quota_exceeded", "no_subscription"),
                409: ("idempotency_conflict",),
                422: _SEND_422,
                429: ("send_rate_limited", "bulk_recipients_limited"),
                503: ("mail_not_configured",),  # channel mail without MAIL_FROM (common/send/service.py)
            },
            description="An MMS's media_urls are checked before anything is written (https, at most 10, each URL's "
            "type and size probed where reachable, under 1 MB in all): a problem is 422 naming media_urls[i] (every "
            "problem in details). What could not be checked, and a total over the 600 KB carrier-safe size, come back "
            "in the 202 answer as warnings: [{field, code, message}].",
        ),
        ("GET", "/messages"): Operation(
            "the church's messages, newest first, or one broadcast's recipients",
            params=(_LIMIT, _CURSOR, Param("broadcast_id", schema={"type": "string", "format": "uuid"})),
            errors={400: ("invalid_limit", "invalid_cursor", "invalid_id")},
        ),
        ("GET", "/messages/{message_id}"): Operation("one message (another church's id is 404)", errors={404: ("not_found",)}),
        ("GET", "/conversations"): Operation("the inbox, most recent first", params=(_LIMIT, _CURSOR), errors=_PAGES),
        ("GET", "/conversations/{conversation_id}/messages"): Operation(
            "one conversation's thread, newest first", params=(_LIMIT, _CURSOR), errors={**_PAGES, 404: ("not_found",)}
        ),
        ("POST", "/privacy/deletions"): Operation(
            "erase one person (by phone number) from the church: texts, conversations, contact, opt-out history",
            body=DeletionRequest,
            success=202,
            errors={422: DELETION_422},
            description="Idempotent: a repeat finds nothing left and answers erased: false. Billing counts stay.",
        ),
        **_ANALYTICS_OPERATIONS,
        **_KEYS_OPERATIONS,
        ("GET", "/openapi.json"): _SPEC,
        ("GET", "/alive"): _ALIVE,
    },
    "dlq-drain": {
        ("GET", "/dead-letters"): Operation(
            "dead letters, newest first (church key: its own; operator token: all)",
            params=(
                # Here an empty value is the same as no value (church_id=&error_code=: no filter on them).
                Param("church_id", schema=_or_empty({"type": "string", "format": "uuid"})),
                Param("error_code", schema={"type": "string", "maxLength": 64, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}),
                Param("from", schema=_or_empty({"type": "string", "format": "date-time"}), description="inclusive"),
                Param("to", schema=_or_empty({"type": "string", "format": "date-time"}), description="exclusive"),
                Param("limit", schema=_or_empty({"type": "integer", "minimum": 1, "maximum": dlq_max_limit})),
                _CURSOR,
            ),
            errors={400: ("invalid_parameter", "invalid_id", "invalid_time", "invalid_limit", "invalid_cursor")},
        ),
        ("POST", "/dead-letters/replay"): Operation("put dead letters back on the queue, once", body=ReplayBody),
        ("POST", "/dead-letters/purge"): Operation("delete dead-letter rows (their messages stay failed)", body=PurgeBody),
        ("POST", "/dead-letters/archive"): Operation(
            "move dead letters past retention to the archive", body=ArchiveBody, body_required=False
        ),
        ("POST", "/events"): Operation(
            "the scheduler's tick: archive past retention, then alert", body=TickEvent, body_required=False, auth=False
        ),
        ("GET", "/openapi.json"): _SPEC,
        ("GET", "/alive"): _ALIVE,
    },
    "queue-consume": {
        ("POST", "/"): Operation("drain the queue for one budget", body=ConsumeRequest, body_required=False, auth=False),
        ("POST", "/events"): Operation(
            "an SQS wake-up or a scheduler event: drain for one budget", body=ConsumeEvent, body_required=False, auth=False
        ),
        ("GET", "/openapi.json"): _SPEC,
        ("GET", "/alive"): _ALIVE,
    },
    "retry-scheduler": {
        ("POST", "/"): Operation("one scheduler run", body=SchedulerRequest, body_required=False, auth=False),
        ("POST", "/events"): Operation("the scheduler's tick", body=SchedulerEvent, body_required=False, auth=False),
        ("GET", "/openapi.json"): _SPEC,
        ("GET", "/alive"): _ALIVE,
    },
    "webhooks": {
        ("POST", "/webhooks/telnyx"): Operation(
            "a Telnyx event (delivery receipt, member's text), signed with Ed25519",
            body=TelnyxWebhook,
            auth=False,
            params=(
                Param(TIMESTAMP_HEADER, "header", {"type": "string", "pattern": "^[0-9]{1,12}$"}, "Unix seconds", True),
                Param(SIGNATURE_HEADER, "header", {"type": "string"}, "base64 Ed25519 over 'timestamp|body'", True),
            ),
            errors={
                400: ("invalid_json", "invalid_event"),
                401: ("signature_missing", "timestamp_invalid", "signature_invalid"),
                403: ("signature_mismatch", "timestamp_out_of_tolerance"),
                413: ("payload_too_large",),
                503: ("webhook_key_missing", "webhook_key_invalid"),
            },
            description="The body is checked against the signature before it is read; nothing is stored for a refused one.",
        ),
        ("GET", "/openapi.json"): _SPEC,
        ("GET", "/alive"): _ALIVE,
    },
    "health": {
        ("GET", "/health"): Operation("liveness and dependencies, under one deadline", auth=False, responses=_HEALTH),
        ("GET", "/health/detailed"): Operation("every check with its timing", auth=False, responses=_HEALTH),
        ("GET", "/ready"): Operation("ready to take traffic", auth=False, responses=_HEALTH),
        ("GET", "/alive"): _ALIVE,
        ("GET", "/"): Operation("as /health", auth=False, responses=_HEALTH),
        ("GET", "/openapi.json"): _SPEC,
    },
}

# -- building ---------------------------------------------------------------------------------------------------

_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>\[\^/\]\+\)")


def route_template(r: Route) -> str:
    """``route("GET", "/messages/{message_id}", ...)`` back to ``/messages/{message_id}``."""
    text = r.pattern.pattern.removeprefix("^").removesuffix("$").removesuffix("/?")
    return _NAMED_GROUP.sub(r"{\1}", text) or "/"


def route_list(routes: Iterable[Route]) -> list[tuple[str, str]]:
    return [(r.method, route_template(r)) for r in routes]


def document(function: str, routes: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``function`` serving ``routes`` (``(method, path template)`` pairs)."""
    return copy.deepcopy(_document(function, tuple(routes)))


@functools.cache
def _document(function: str, routes: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    documented = OPERATIONS.get(function, {})
    for method, path in routes:
        op = documented.get((method, path))
        paths.setdefault(path, {})[method.lower()] = _operation(function, method, path, op, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"Koinonia {function}",
            "version": "1",
            "description": 'Errors are always JSON: {"error": {"code", "message", "field"?, "details"?}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "a church API key"}},
        },
    }


def _operation(function: str, method: str, path: str, op: Operation | None, schemas: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": _operation_id(function, method, path)}
    if op is None:
        op = Operation("undocumented: describe it in common/openapi.py OPERATIONS", auth=False)
        out["x-undocumented"] = True
    out["summary"] = op.summary
    if op.description:
        out["description"] = op.description
    params = [_path_param(name) for name in re.findall(r"\{(\w+)\}", path)]
    params += [_param(p) for p in op.params]
    if params:
        out["parameters"] = params
    errors: dict[int, set[str]] = {}
    for table in (
        op.errors,
        AUTH_ERRORS if op.auth else {},
        JSON_BODY_ERRORS if op.body is not None else {},
        DB_ERRORS if op.database else {},
        DISPATCH_ERRORS if function not in NOT_DISPATCHED else {},
    ):
        for status, codes in table.items():
            errors.setdefault(status, set()).update(codes)
    if op.auth:
        out["security"] = [{"bearer": []}]
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": _model_schema(op.body, schemas)}},
        }
    responses: dict[str, Any] = {str(op.success): _json_response("the answer", {"type": "object"})}
    for status, description in op.responses.items():
        responses[str(status)] = _json_response(description, {"type": "object"})
    for status in sorted(errors):
        listed = sorted(errors[status])
        reason = _REASONS.get(status, "Error")
        error = _json_response(f"{reason}: {', '.join(listed)}", {"$ref": "#/components/schemas/Error"})
        responses.setdefault(str(status), error)
        responses[str(status)]["x-error-codes"] = listed
    out["responses"] = responses
    return out


def _operation_id(function: str, method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{function.replace('-', '_')}_{method.lower()}_{words}"


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _param(p: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema}
    if p.description:
        out["description"] = p.description
    return out


def _model_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_route(function: str, routes: list[Route]) -> Route:
    """``GET /openapi.json`` for a function whose ``ROUTES`` is ``routes`` (read at request time, so the
    list may be appended to after this call, as main.py does with this very route)."""

    def serve(_request: object) -> Reply:
        return Reply(document(function, route_list(routes)))

    return route("GET", "/openapi.json", serve)
