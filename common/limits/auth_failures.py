"""Failed authentication per client address, for every function (``common.web.dispatch`` calls ``guard``).

Every 401 answer takes a token from bucket ``auth_fail:<address>`` (``AUTH_FAIL_LIMIT`` per
``AUTH_FAIL_PERIOD_S``, default 20 per 5 minutes). The take that leaves the bucket empty (or finds it
empty) is remembered in this process until the next token is due, and while it is, a request from the
address that presents a credential (an ``Authorization`` header: a church key or the operator token) is
answered ``429 too_many_auth_failures`` with ``Retry-After`` *before* the handler runs: a brute-forcer
stops reaching the key lookup. A take that finds the bucket already empty turns its 401 into that 429.
Requests without credentials (Telnyx's signed webhooks, the cloud's ``/events`` invocations) are not
refused early: they reach no key lookup, and a blocked address shared with them (a proxy, a NAT, a
misconfigured ``TRUSTED_PROXY``) must not stop receipts, opt-outs or consumers.

Cost: nothing on a request that authenticates (no Redis round trip: the check before the handler is an
in-process dictionary); one round trip per 401. Another instance of the function learns of the block
from its own first 401 from that address (one key lookup per instance per refill, then refused early).

The client address (``TRUSTED_PROXY``):

- ``none`` (default): the TCP peer, ``request.remote_addr``. Right for a function reached directly.
- ``lambda``: the ``sourceIp`` in ``x-amzn-request-context``, which the Lambda Web Adapter sets (replacing
  any such header a client sent) from the request context API Gateway / the function URL recorded
  for the TCP connection. Use this in the cloud (``template.yaml``: function URLs behind the adapter):
  there ``remote_addr`` is the adapter itself (127.0.0.1), one bucket for everyone, and function URLs
  are reported to pass the *client's* leftmost X-Forwarded-For through, which anyone can forge.
- ``x-forwarded-for``: the *last* X-Forwarded-For entry, the one our single trusted proxy appended.
  Not the first: the first is whatever the client wrote, so trusting it would let an attacker rotate
  made-up addresses past the limit, or lock out someone else's address by naming it.

IPv6 addresses are counted per /64 (one subscriber usually holds a whole /64 and can rotate within it).
Addresses are never logged in clear (a short hash correlates log lines).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable

import flask

from common import log_context
from common.api_errors import ApiError
from common.config import get_settings
from common.limits.errors import too_many
from common.limits.limiter import Limiter, Rate, limiter_for
from common.redis_client import get_redis

logger = logging.getLogger("koinonia.limits")

_MESSAGE = (
    "too many failed authentications from this address; wait {wait} s, then retry with the church's valid "
    "API key (Authorization: Bearer kn_...)"
)


def guard(
    request: flask.Request,
    answer: Callable[[], flask.Response],
    refuse: Callable[[ApiError], flask.Response],
) -> flask.Response:
    """``answer()`` unless the client's address is blocked; count its 401s, and block it past the limit."""
    settings = get_settings()
    limiter = limiter_for(get_redis(), use_redis=settings.enable_queues)
    bucket: str | None = None
    if limiter.has_empty_buckets and "Authorization" in request.headers:  # else nothing to refuse early
        bucket = _bucket(request, settings.trusted_proxy)
        wait = limiter.empty_for(bucket)
        if wait > 0:
            return refuse(too_many("too_many_auth_failures", _MESSAGE, wait))
    response = answer()
    if response.status_code != 401:
        return response
    bucket = bucket or _bucket(request, settings.trusted_proxy)
    refused = failed(limiter, bucket, Rate(settings.auth_fail_limit, settings.auth_fail_period_s))
    return refuse(refused) if refused is not None else response


def failed(limiter: Limiter, bucket: str, rate: Rate) -> ApiError | None:
    """Count one failure; the 429 to answer instead of the 401 if the address was already over the limit."""
    decision = limiter.take(bucket, rate)
    if decision.allowed:
        return None
    logger.warning(
        "failed authentications over the limit",
        extra={"fields": {"client": hashlib.sha256(bucket.encode()).hexdigest()[:12], "retry_after_s": decision.retry_after_s}},
    )
    return too_many("too_many_auth_failures", _MESSAGE, decision.retry_after_s)


def _bucket(request: flask.Request, trusted_proxy: str) -> str:
    return f"auth_fail:{client_address(request, trusted_proxy)}"


def client_address(request: flask.Request, trusted_proxy: str) -> str:
    """Who is calling, for per-address limits (see the module docstring for which source and why)."""
    found: str | None = None
    if trusted_proxy == "lambda":
        found = _lambda_source_ip(request.headers.get("x-amzn-request-context"))
    elif trusted_proxy == "x-forwarded-for":
        hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
        found = hops[-1] if hops else None
    return _normalize(found or request.remote_addr or "unknown")


def _lambda_source_ip(context: str | None) -> str | None:
    parsed = log_context.context_header(context)  # malformed, too deep or too long: None, so the TCP peer counts
    if parsed is None:
        return None
    for section in ("http", "identity"):  # function URL / HTTP API (v2), REST API (v1)
        value = parsed.get(section)
        if isinstance(value, dict) and isinstance(value.get("sourceIp"), str):
            return str(value["sourceIp"])
    return None


def _normalize(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address.strip()[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
