"""The HTTP edge every function shares: routing, body limits, JSON parsing, error answers.

Functions stay thin: ``functions/<name>/main.py`` declares its routes and calls ``dispatch``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask

from common.api_errors import ApiError, BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, ServiceUnavailable
from common.db.pool import DatabaseUnavailable

logger = logging.getLogger("koinonia.web")

max_body_bytes = 2 * 1024 * 1024  # 10,000 recipients of JSON fit in well under 1 MiB


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]
    status: int = 200
    headers: dict[str, str] | None = None


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


def dispatch(request: flask.Request, routes: list[Route]) -> flask.Response:
    try:
        return _respond(_dispatch(request, routes))
    except ApiError as exc:
        return _respond(Reply(exc.body(), exc.status, exc.headers))
    except DatabaseUnavailable as exc:
        logger.error("database unavailable: %s", exc)
        err = ServiceUnavailable("database_unavailable", "the database is unavailable; retry shortly")
        return _respond(Reply(err.body(), err.status, {"Retry-After": "5"}))


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
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("invalid_json", f"the body is not valid JSON ({exc.__class__.__name__}); send a JSON object") from None


def _respond(reply: Reply) -> flask.Response:
    response = flask.Response(json.dumps(reply.body, default=str), status=reply.status, mimetype="application/json")
    for name, value in (reply.headers or {}).items():
        response.headers[name] = value
    response.headers.setdefault("Cache-Control", "no-store")
    return response
