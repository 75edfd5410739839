"""The HTTP edge every function shares: routing, body limits, JSON parsing, error answers.

Functions stay thin: ``functions/<name>/main.py`` declares its routes and calls ``dispatch``.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from common import log_context, metrics
from common.api_errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
)
from common.db.pool import DatabaseUnavailable
from common.limits.auth_failures import guard

logger = logging.getLogger("koinonia.web")

max_body_bytes = 2 * 1024 * 1024  # 10,000 recipients of JSON fit in well under 1 MiB


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]
    status: int = 200
    headers: dict[str, str] | None = None
    text: str | None = None  # answered instead of ``body`` as JSON, typed by headers' Content-Type (GET /metrics)


Handler = Callable[..., Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def route(method: str, path: str, handler: Handler) -> Route:
    """``route("GET", "/messages/{id}", fn)``: path parameters become keyword arguments."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path.rstrip("/") or "/")
    return Route(method, re.compile(f"^{regex}/?$"), handler)


ALIVE_PATH = "/alive"


def alive_route() -> Route:
    """``GET /alive`` on every function: 200 once the process serves, touching nothing (no database, no Redis).

    The Lambda Web Adapter's readiness check (``AWS_LWA_READINESS_CHECK_PATH`` in infra/Dockerfile and
    template.yaml) polls it before the first invocation; the health function's ``/alive`` answers the same.
    """
    return route("GET", ALIVE_PATH, lambda _request: Reply({"status": "alive"}))


def dispatch(request: flask.Request, routes: list[Route]) -> flask.Response:
    # Failed authentication is limited per client address (common/limits/auth_failures.py): every 401
    # counts, and an address over the limit is answered 429 before the handler (and its key lookup) runs.
    # Every line logged meanwhile carries the request's ids, and the answer its X-Request-Id (common/log_context.py).
    ids = log_context.from_headers(request.headers, _function_name())
    if flask.has_request_context():
        flask.g.request_ids = ids  # for the error handlers below, which run after this block has reset them
    with log_context.bound(ids):
        return guard(request, lambda: _answer(request, routes), _error_response)


def _function_name() -> str | None:
    """The functions-framework target serving this process (its Flask app is named after it)."""
    return flask.current_app.name if flask.has_app_context() else None


def _request_ids() -> log_context.RequestIds:
    """In a Flask error handler: the ids ``dispatch`` bound for this request (a generated id stays the same one),
    else (Flask refused the request before it reached ``dispatch``) the ids its headers give."""
    ids = flask.g.get("request_ids")
    if isinstance(ids, log_context.RequestIds):
        return ids
    return log_context.from_headers(flask.request.headers, _function_name())


def _error_response(exc: ApiError) -> flask.Response:
    return _respond(Reply(exc.body(), exc.status, exc.headers))


def _answer(request: flask.Request, routes: list[Route]) -> flask.Response:
    try:
        return _respond(_dispatch(request, routes))
    except ApiError as exc:
        return _error_response(exc)
    except DatabaseUnavailable as exc:
        logger.error("database unavailable: %s", exc)
        err = ServiceUnavailable("database_unavailable", "the database is unavailable; retry shortly")
        return _respond(Reply(err.body(), err.status, {"Retry-After": "5"}))
    finally:
        metrics.flush()  # METRICS_FORMAT=emf: what this invocation counted, as one EMF line (common/metrics)


def _dispatch(request: flask.Request, routes: list[Route]) -> Reply:
    path = request.path
    allowed = []
    for r in routes:
        match = r.pattern.match(path)
        if match is None:
            continue
        if r.method != request.method:
            allowed.append(r.method)
            continue
        return r.handler(request, **match.groupdict())
    if allowed:
        raise MethodNotAllowed("method_not_allowed", f"{request.method} is not allowed here; use {', '.join(allowed)}")
    raise NotFound("not_found", f"no route {request.method} {path}")


def json_body(request: flask.Request) -> Any:
    """The request's JSON, refusing oversized or malformed bodies before reading them whole."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise PayloadTooLarge(
            "payload_too_large",
            f"the body is {length:,} bytes; the limit is {max_body_bytes:,}. Send fewer recipients per request",
        )
    raw = request.stream.read(max_body_bytes + 1)
    if len(raw) > max_body_bytes:
        raise PayloadTooLarge("payload_too_large", f"the body is over the {max_body_bytes:,}-byte limit")
    return parse_json(raw)


max_json_depth = 32  # our deepest body nests 3 levels; json.loads recurses, so depth is checked on the bytes first
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN_ONE = bytes(1 if b in b"[{" else 0 for b in range(256))
_CLOSE_ONE = bytes(1 if b in b"]}" else 0 for b in range(256))
_OPENERS = re.compile(rb"[\[{]{%d}" % (max_json_depth + 1))
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # \u0000 or a UTF-16 surrogate half


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, strictly (RFC 8259 and what PostgreSQL can store), or a documented 4xx.

    400 ``invalid_json``: not UTF-8 (no BOM, no UTF-16/32 guessing), malformed, ``NaN``/``Infinity`` or a
    number out of range (``1e999``, ints over 4,300 digits); 400 ``json_too_deep``: nesting past
    ``max_json_depth``, refused before parsing; 400 ``duplicate_key``: an object naming a key twice
    (parsers disagree on which one wins); 422 ``invalid_string``: a string holding ``\\u0000`` or a lone
    surrogate, which no UTF-8 text column can hold.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("invalid_json", f"the body is not UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    if _too_deep(raw):
        raise BadRequest("json_too_deep", f"the body nests arrays/objects more than {max_json_depth} deep")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"the body is not valid JSON ({exc}); send a JSON object") from None
    except (ValueError, RecursionError):  # an integer past Python's 4,300-digit limit; nesting is checked above
        raise BadRequest("invalid_json", "the body has a number too long to read; send a JSON object") from None
    if _SUSPECT_ESCAPE.search(text):
        _check_strings(value, "")
    return value


def _too_deep(raw: bytes) -> bool:
    """Nesting depth over the limit, counted on the brackets outside strings: C-speed passes (regex, translate,
    accumulate), no recursion; ~0.1 s for the worst 2 MiB body, microseconds for ordinary ones."""
    if raw.count(b"[") + raw.count(b"{") <= max_json_depth:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if _OPENERS.search(brackets):
        return True
    depths = map(operator.sub, accumulate(brackets.translate(_OPEN_ONE)), accumulate(brackets.translate(_CLOSE_ONE)))
    return max(depths, default=0) > max_json_depth


def _no_constant(name: str) -> Any:
    raise BadRequest("invalid_json", f"{name} is not a JSON number; send a finite number")


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise BadRequest("invalid_json", f"the number {literal[:40]} is out of range")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest("duplicate_key", f"the key {key!r} appears twice in one object; send it once", field=key)
            seen.add(key)
    return obj


def _check_strings(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise Unprocessable("invalid_string", "a string holds \\u0000 (NUL), which cannot be stored; remove it", field=where)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Unprocessable(
                "invalid_string", "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode", field=where
            ) from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, f"{where}.{key}" if where else key)


def json_http_errors() -> None:
    """Answer what Flask itself refuses (a path no rule matches, such as one with a line break in it, or
    functions-framework's ``/favicon.ico``), and any exception nothing else caught (a bug), in our JSON error
    shape with ``X-Request-Id``, not Werkzeug's HTML or functions-framework's crash text. Call it from a
    function's main.py: functions-framework runs that module inside its new app's context."""
    if flask.has_app_context():  # imported on its own (a test, a tool): there is no app to configure
        flask.current_app.register_error_handler(HTTPException, _werkzeug_error)
        flask.current_app.register_error_handler(Exception, _unexpected_error)


def _werkzeug_error(exc: HTTPException) -> flask.Response:
    status = exc.code or 400
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(status, "bad_request")
    message = f"{exc.name}: {flask.request.method} {flask.request.path!r}"
    with log_context.bound(_request_ids()):
        return _respond(Reply({"error": {"code": code, "message": message}}, status))


def _unexpected_error(exc: Exception) -> flask.Response:
    """A bug: 500 ``internal_error``, logged once (in place of Flask's own line) under the request's ids.

    The exception's text is neither answered nor logged: it may quote data (a number, a text, a driver's error
    naming a value). Its type and stack say where it happened; the request id joins the caller's report to it."""
    with log_context.bound(_request_ids()) as ids:
        logger.error("unhandled exception", extra={"fields": {
            "error": type(exc).__name__, "stack": "".join(traceback.format_tb(exc.__traceback__)),
        }})  # fmt: skip
        message = (
            "an unexpected error stopped this request; retry it (with the same Idempotency-Key, a send is not repeated); "
            f"if it keeps failing, report request id {ids.request_id} to the operator"
        )
        return _respond(Reply({"error": {"code": "internal_error", "message": message}}, 500))


def _respond(reply: Reply) -> flask.Response:
    content = json.dumps(reply.body, default=str) if reply.text is None else reply.text
    response = flask.Response(content, status=reply.status, mimetype="application/json")
    for name, value in (reply.headers or {}).items():
        response.headers[name] = value
    response.headers.setdefault("Cache-Control", "no-store")
    if (request_id := log_context.request_id()) is not None:
        response.headers[log_context.REQUEST_ID_HEADER] = request_id
    return response
