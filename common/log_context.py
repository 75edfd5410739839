"""The ids of the request being served, for every log line written while it is (common/logs.py adds them).

``common.web.dispatch`` binds a ``RequestIds`` for each HTTP request; ``JsonFormatter`` writes its fields on
every line logged meanwhile, whichever module logs it, so no call site passes them around:

- ``request_id``: the caller's ``X-Request-Id`` if it is sane (1-64 characters of ``[A-Za-z0-9._:-]``: it is
  written to logs and answered in a header, so anything else, such as a line break, a quote or a 200-character
  string, is replaced, never logged), else a new one (``new_request_id``). Every answer carries it back in
  ``X-Request-Id``. It is also the **correlation id** of the messages a request accepts: ``messages.correlation_id``
  (migration 0011), returned by the claim and by receipts, so the consumer's and the webhook's lines about a
  message name the request that sent it.
- ``lambda_request_id`` / ``api_request_id``: behind the AWS Lambda Web Adapter, the invocation's request id
  (``request_id`` in the ``x-amzn-lambda-context`` header, the serialized Lambda ``Context``) and API Gateway's
  (``requestId`` in ``x-amzn-request-context``): the ids AWS's own logs and support know the call by. Both are
  read defensively (any malformed or insane value is left out); outside Lambda they are absent.
- ``function``: which function served it (the functions-framework target, as ``FUNCTION_TARGET`` names it).

The ids live in a ``ContextVar``: each request's thread has its own, and ``asyncio.run``, tasks and
``asyncio.to_thread`` inherit it, so the consumer's concurrent deliveries all log their invocation's id.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from common.ids import uuid7

REQUEST_ID_HEADER = "X-Request-Id"
LAMBDA_CONTEXT_HEADER = "x-amzn-lambda-context"
API_CONTEXT_HEADER = "x-amzn-request-context"
max_request_id_length = 64  # also the CHECK on messages.correlation_id (migration 0011)
_SANE_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{max_request_id_length}}}")
# The adapter's headers are a few hundred bytes (an authorizer's claims make a few KB); past this, not parsed.
_max_context_header_chars = 32 * 1024
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # ascending in ASCII: ids sort by time as text too


@dataclass(frozen=True)
class RequestIds:
    request_id: str
    function: str | None = None
    lambda_request_id: str | None = None
    api_request_id: str | None = None

    def log_fields(self) -> dict[str, str]:
        """What a log line carries: the ids that are known."""
        fields = {"request_id": self.request_id}
        if self.function:
            fields["function"] = self.function
        if self.lambda_request_id:
            fields["lambda_request_id"] = self.lambda_request_id
        if self.api_request_id:
            fields["api_request_id"] = self.api_request_id
        return fields


class Headers(Protocol):
    """A request's headers, looked up case-insensitively (Flask's ``request.headers``)."""

    def get(self, key: str) -> str | None: ...


_CURRENT: ContextVar[RequestIds | None] = ContextVar("koinonia_request_ids", default=None)


def new_request_id() -> str:
    """26 characters (a UUIDv7's 128 bits in Crockford base32, as a ULID): unique, short, and in time order."""
    value = uuid7().int
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def sane_id(raw: object) -> str | None:
    """``raw`` if it may be logged and echoed as it is (see the module docstring), else ``None``."""
    if isinstance(raw, str) and _SANE_ID.fullmatch(raw):
        return raw
    return None


def from_headers(headers: Headers, function: str | None = None) -> RequestIds:
    """The ids of a request with these headers."""
    return RequestIds(
        request_id=sane_id(headers.get(REQUEST_ID_HEADER)) or new_request_id(),
        function=function or os.environ.get("FUNCTION_TARGET") or None,
        lambda_request_id=_context_id(headers.get(LAMBDA_CONTEXT_HEADER), "request_id"),
        api_request_id=_context_id(headers.get(API_CONTEXT_HEADER), "requestId"),
    )


def _context_id(header: str | None, key: str) -> str | None:
    """``key`` of the JSON object in an adapter header, if the header is one and the value is sane."""
    parsed = context_header(header)
    return None if parsed is None else sane_id(parsed.get(key))


def context_header(header: str | None) -> dict[str, Any] | None:
    """The JSON object in an adapter header (``x-amzn-lambda-context``, ``x-amzn-request-context``), or ``None``
    for anything else: absent, longer than any the adapter writes, malformed, nested deeper than the parser
    recurses, or not an object. Whoever reads these headers reads them through here (the per-address limits too:
    common/limits/auth_failures.py), so a hostile header is ignored, never a 500."""
    if not header or len(header) > _max_context_header_chars:
        return None
    try:
        parsed: Any = json.loads(header)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def current() -> RequestIds | None:
    return _CURRENT.get()


def request_id() -> str | None:
    """The id of the request being served (``None`` outside one: a CLI, a test calling a module directly)."""
    ids = _CURRENT.get()
    return None if ids is None else ids.request_id


@contextmanager
def bound(ids: RequestIds) -> Iterator[RequestIds]:
    """``ids`` are the current request's inside the block (and in whatever it starts), the previous ones after."""
    token = _CURRENT.set(ids)
    try:
        yield ids
    finally:
        _CURRENT.reset(token)


class _StampingFactory:
    """Log records get the ids current when they are *made*: a handler may format them later, in another
    thread (a queue handler, pytest's ``caplog``), after the request has ended."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.previous(*args, **kwargs)
        record.request_ids = _CURRENT.get()
        return record


def install_record_factory() -> None:
    """Stamp every new log record with the current ids; safe to call more than once."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _StampingFactory):
        logging.setLogRecordFactory(_StampingFactory(factory))


def record_ids(record: logging.LogRecord) -> RequestIds | None:
    """The ids a record was made under (stamped), or, for one made before the factory was installed, now's."""
    if "request_ids" not in record.__dict__:
        return _CURRENT.get()
    stamped = record.__dict__["request_ids"]
    return stamped if isinstance(stamped, RequestIds) else None
