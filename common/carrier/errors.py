"""The one place that decides what a carrier answer (or the lack of one) means.

Everything else asks here: ``classify`` (pure: HTTP status + Telnyx code -> verdict),
``classify_response`` (a whole HTTP answer -> ``CarrierResult``), ``classify_exception`` (a
transport failure -> ``CarrierResult``). Facts follow shared/reference/telnyx.md §2; decisions
that are ours (not Telnyx's) are marked *ours*.

The Telnyx error code decides, not the HTTP status alone (reference §6.1). The status is the
fallback when the code is missing or not in the table. An opt-out (40300) anywhere in ``errors[]``
wins over everything.

Outcomes: ``sent`` | ``retry`` | ``rate_limited`` | ``failed`` | ``opted_out``. ``config`` marks
``config_error=True``: our setup is wrong or an operator must act; the message still fails (or
waits) like any other, but ops can alert on the flag.

=========================================  ==============  ======  =======================================
Telnyx code                                outcome         config  why
=========================================  ==============  ======  =======================================
40300 STOP block (HTTP 409)                opted_out       no      "Do not retry"; record the opt-out
10011 too many requests (429)              rate_limited    no      back off; ``retry-after`` / reset header
40318 message queue full (429)             rate_limited    no      back off
40333 spend limit reached (429)            rate_limited    yes     waits until midnight UTC if no header
40016 T-Mobile daily cap                   rate_limited    no      quota; waiting helps (*ours*)
40018 AT&T TPM limit                       rate_limited    no      quota; waiting helps (*ours*)
10007 unexpected error (5xx)               retry           no      Telnyx: retry 5xx with backoff
40002 spam (temporary)                     retry           no      error-code page: retry
40005 expired in transit                   retry           no      error-code page: retry
40006 recipient carrier unavailable        retry           no      auto-retriable
40008 undeliverable                        retry           no      auto-retriable
40011 upstream rate limit                  retry           no      error-code page: retry
40014 expired in queue (not billed)        retry           no      error-code page: retry
40320 sender temporarily unusable          retry           no      "hold"; retry later
10009 auth failed (401), 10010             failed          yes     our API key / permissions
20002 20012-20017 account, 20100 funds     failed          yes     account state
10005 not found, 10006 invalid id          failed          yes     wrong base URL / profile id (*ours*)
40305 invalid from, 40306-40309, 40311-15  failed          yes     sender/profile not set up for this
40321 40323 40325 40329-40331              failed          yes     number pool / alpha / toll-free setup
40010 40015 40019, 40100 40150 40151 40155 failed          yes     registration / provisioning
10015 bad request, 10001-10004, 10016      failed          no      this message is invalid
40310 invalid to, 40301 40302 40304        failed          no      this message is invalid
40316 no content, 40317 MMS content,       failed          no      this message is invalid
40319 40322 40328
40001 40003 40004 40009 40012 40013 40017  failed          no      permanent delivery failures
40020 2FA traffic blocked                  failed          no      "hold" 24 h; not worth holding (*ours*)
=========================================  ==============  ======  =======================================

When the code is missing or unknown, by HTTP status:

=====================  ==============  ======  ===========================================
HTTP status            outcome         config  note
=====================  ==============  ======  ===========================================
2xx                    sent            no      provider id, parts, cost from ``data``
429                    rate_limited    no      any 429 means slow down
408, 5xx               retry           no      502/504 also ``maybe_accepted`` (a gateway
                                               may have passed the request on)
401 402 403 404 405    failed          yes     auth, balance, unassigned number, wrong URL
other 4xx (400, 409,   failed          no      "unknown 4xx -> failed"
422, ...)
anything else          retry           no      "unknown -> retry" (also: no status, as in a
                                               delivery webhook's ``errors[]``)
=====================  ==============  ======  ===========================================

No answer at all (``classify_exception``), our own ``error_code``:

====================  =======  ==============  =================================================
what happened         outcome  maybe_accepted  error_code
====================  =======  ==============  =================================================
connect refused,      retry    False           ``connect_error`` (nothing was sent)
connect timeout,
DNS, TLS handshake
read timeout after    retry    True            ``timeout``
the request was sent
closed / reset        retry    True if the     ``connection_dropped``
before an answer               request was
                               written
unparseable answer    retry    True            ``bad_response``
h11 rejected our      failed   False           ``invalid_request`` (config: e.g. a bad character
own request                                    in the API key)
====================  =======  ==============  =================================================

A 2xx whose body cannot be read is still ``sent`` (Telnyx has the message; a retry would send it
twice) with ``error_code="bad_response"`` and no provider id: *ours*.

``retry_after_s`` comes from ``retry-after-ms``, then ``retry-after`` (seconds or an HTTP date),
then ``x-ratelimit-reset`` (documented both as seconds-until-reset and as a Unix timestamp: a value
above 10^9 is read as epoch seconds, above 10^12 as epoch milliseconds). It is clamped to
[0, 86400] and is ``None`` when the carrier said nothing (the caller's backoff applies).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpcore

from .types import CarrierResult, Outcome

__all__ = [
    "CODE_TABLE",
    "MAX_RETRY_AFTER_S",
    "Verdict",
    "classify",
    "classify_exception",
    "classify_response",
    "retry_after_from_headers",
    "safe_detail",
    "seconds_until_midnight_utc",
]

MAX_RETRY_AFTER_S = 86_400.0
_EPOCH_S_FLOOR = 1_000_000_000.0  # 2001-09-09: a reset value above this is a Unix timestamp
_EPOCH_MS_FLOOR = 1_000_000_000_000.0
_DETAIL_MAX = 120


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    config_error: bool
    reason: str  # a fixed, safe phrase


def _v(outcome: Outcome, reason: str, config: bool = False) -> Verdict:
    return Verdict(outcome, config, reason)


def _many(codes: str, outcome: Outcome, reason: str, config: bool = False) -> dict[str, Verdict]:
    return {code: _v(outcome, reason, config) for code in codes.split()}


CODE_TABLE: Mapping[str, Verdict] = {
    "40300": _v("opted_out", "recipient opted out (STOP)"),
    # Slow down.
    "10011": _v("rate_limited", "API rate limit"),
    "40318": _v("rate_limited", "message queue full"),
    "40333": _v("rate_limited", "messaging profile spend limit reached", config=True),
    "40016": _v("rate_limited", "T-Mobile daily cap reached"),
    "40018": _v("rate_limited", "AT&T throughput limit"),
    # Transient.
    "10007": _v("retry", "unexpected carrier error"),
    "40002": _v("retry", "flagged as spam (temporary)"),
    "40005": _v("retry", "expired in transit"),
    "40006": _v("retry", "recipient carrier unavailable"),
    "40008": _v("retry", "undeliverable (temporary)"),
    "40011": _v("retry", "upstream rate limit"),
    "40014": _v("retry", "expired in queue"),
    "40320": _v("retry", "sender temporarily unusable"),
    # Our configuration or account: fails, and ops must look.
    "10009": _v("failed", "authentication failed (API key)", config=True),
    "10010": _v("failed", "authorization failed (API key permissions)", config=True),
    "10005": _v("failed", "resource not found (base URL?)", config=True),
    "10006": _v("failed", "invalid id (messaging profile?)", config=True),
    **_many("20002 20012 20013 20014 20015 20016 20017", "failed", "account not in good standing", config=True),
    "20100": _v("failed", "insufficient funds", config=True),
    "40305": _v("failed", "invalid 'from' (not on the messaging profile)", config=True),
    **_many("40306 40307 40308 40309", "failed", "sender not set up for this destination or type", config=True),
    **_many("40311 40312 40313 40314 40315", "failed", "messaging profile or sender unusable", config=True),
    **_many("40321 40323 40325", "failed", "number pool or alphanumeric sender not set up", config=True),
    **_many("40329 40330 40331", "failed", "toll-free or destination setup missing", config=True),
    **_many("40010 40015 40019", "failed", "registration or filtering problem", config=True),
    **_many("40100 40150 40151 40155", "failed", "number not provisioned for messaging", config=True),
    # This message is invalid as it stands.
    "10015": _v("failed", "bad request"),
    **_many("10001 10002 10003 10004 10016", "failed", "invalid request parameter"),
    "40310": _v("failed", "invalid 'to'"),
    "40301": _v("failed", "message type not supported for 'to'"),
    "40302": _v("failed", "message too large"),
    "40304": _v("failed", "invalid content combination"),
    "40316": _v("failed", "no content"),
    "40317": _v("failed", "invalid MMS content"),
    **_many("40319 40322 40328", "failed", "content rejected"),
    # Permanent delivery failures (asynchronous codes; here for completeness).
    **_many("40001 40003 40004 40009 40012 40013 40017", "failed", "permanent delivery failure"),
    "40020": _v("failed", "traffic blocked"),
}

_CONFIG_STATUSES = {
    401: "authentication failed (API key)",
    402: "insufficient balance",
    403: "forbidden (number not assigned or registration required)",
    404: "not found (base URL?)",
    405: "method not allowed (base URL?)",
}
# A gateway that answers 502/504 may already have handed the request to the API behind it.
_GATEWAY_STATUSES = frozenset({502, 504})


def classify(http_status: int | None, code: str | int | None) -> Verdict:
    """Pure: what an HTTP status and Telnyx error code mean. See the module docstring table."""
    if code is not None:
        verdict = CODE_TABLE.get(str(code).strip())
        if verdict is not None:
            return verdict
    if http_status is None:
        return _v("retry", "unknown carrier error")
    if 200 <= http_status < 300:
        return _v("sent", "accepted")
    if http_status == 429:
        return _v("rate_limited", "rate limited")
    if http_status == 408:
        return _v("retry", "request timeout")
    if http_status >= 500:
        return _v("retry", "carrier server error")
    config_reason = _CONFIG_STATUSES.get(http_status)
    if config_reason is not None:
        return _v("failed", config_reason, config=True)
    if 400 <= http_status < 500:
        return _v("failed", "request rejected")
    return _v("retry", "unexpected HTTP status")


# Headers -------------------------------------------------------------------------------------

Headers = Iterable[tuple[bytes, bytes]] | Mapping[str, str]


def _header_map(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        val = value.decode("latin-1") if isinstance(value, bytes) else value
        out.setdefault(key.strip().lower(), val.strip())
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def retry_after_from_headers(headers: Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``retry-after`` or ``x-ratelimit-reset``; None if absent.

    ``now`` is a Unix timestamp (default ``time.time()``), used for HTTP dates and epoch resets.
    """
    found = _header_map(headers)
    current = time.time() if now is None else now
    raw = found.get("retry-after-ms")
    if raw is not None:
        value = _number(raw)
        if value is not None:
            return _clamp(value / 1000.0)
    raw = found.get("retry-after")
    if raw is not None:
        value = _number(raw)
        if value is not None:
            return _clamp(value)
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return _clamp(when.timestamp() - current)
    raw = found.get("x-ratelimit-reset")
    if raw is not None:
        value = _number(raw)
        if value is not None:
            if value >= _EPOCH_MS_FLOOR:
                return _clamp(value / 1000.0 - current)
            if value >= _EPOCH_S_FLOOR:
                return _clamp(value - current)
            return _clamp(value)
    return None


def seconds_until_midnight_utc(now: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


# Bodies --------------------------------------------------------------------------------------

# A phone number, or any run of 3+ digits (ids, amounts): never in a detail.
_DIGITS = re.compile(r"\+?\d[\d\s().-]{1,}\d")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def safe_detail(text: str | None) -> str | None:
    """A short, printable phrase with every digit run (phone numbers) removed."""
    if not text:
        return None
    cleaned = _DIGITS.sub("#", _UNSAFE.sub(" ", text)).strip()
    cleaned = re.sub(r"\d", "#", cleaned)
    cleaned = re.sub(r"\s+", " ", cleaned)
    return cleaned[:_DETAIL_MAX] or None


def _error_codes(body: bytes) -> tuple[str | None, bool]:
    """(first error code, whether any error is an opt-out) from a Telnyx error body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, False
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return None, False
    codes = [str(e["code"]).strip() for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str | int)]
    return (codes[0] if codes else None), "40300" in codes


def _sent(status: int, body: bytes) -> CarrierResult:
    try:
        data = json.loads(body)["data"]
        provider_id = data["id"]
        if not isinstance(provider_id, str) or not provider_id:
            raise ValueError
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return CarrierResult(
            "sent", http_status=status, error_code="bad_response", detail="accepted; response body unreadable"
        )
    parts = data.get("parts")
    cost = data.get("cost")
    amount = currency = None
    if isinstance(cost, dict):
        raw_amount = cost.get("amount")
        # A string per the SDK and real captures; the docs show a number: keep it exact as text.
        if isinstance(raw_amount, str):
            amount = raw_amount
        elif isinstance(raw_amount, int | float) and not isinstance(raw_amount, bool):
            amount = repr(raw_amount)
        raw_currency = cost.get("currency")
        currency = raw_currency if isinstance(raw_currency, str) else None
    return CarrierResult(
        "sent",
        provider_message_id=provider_id,
        http_status=status,
        parts=parts if isinstance(parts, int) and not isinstance(parts, bool) else None,
        cost_amount=amount,
        cost_currency=currency,
    )


def classify_response(status: int, headers: Headers, body: bytes, *, now: float | None = None) -> CarrierResult:
    """A complete HTTP answer to ``POST /v2/messages`` -> ``CarrierResult``."""
    if 200 <= status < 300:
        return _sent(status, body)
    code, opted_out = _error_codes(body)
    verdict = CODE_TABLE["40300"] if opted_out else classify(status, code)
    retry_after: float | None = None
    if verdict.outcome == "rate_limited" or verdict.outcome == "retry":
        retry_after = retry_after_from_headers(headers, now=now)
        if retry_after is None and code == "40333":
            retry_after = seconds_until_midnight_utc(now)
    return CarrierResult(
        verdict.outcome,
        http_status=status,
        error_code="40300" if opted_out else code,
        retry_after_s=retry_after,
        maybe_accepted=code is None and status in _GATEWAY_STATUSES,
        config_error=verdict.config_error,
        detail=verdict.reason if code is not None and code in CODE_TABLE else _unknown_detail(verdict, body),
    )


def _unknown_detail(verdict: Verdict, body: bytes) -> str:
    """For a code we do not know: our reason plus the (scrubbed) Telnyx title."""
    try:
        errors = json.loads(body)["errors"]
        title = errors[0]["title"] if isinstance(errors[0]["title"], str) else None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        title = None
    safe = safe_detail(title)
    return f"{verdict.reason}: {safe}" if safe else verdict.reason


def classify_exception(exc: BaseException, *, request_sent: bool, peer_closed: bool = False) -> CarrierResult | None:
    """A transport failure -> ``CarrierResult``; None for exceptions that are not carrier/network
    problems (those propagate: they are bugs).

    ``request_sent``: the request bytes reached the socket (the duplicate window is open).
    ``peer_closed``: the server closed or reset the connection before a complete answer.
    """
    if isinstance(exc, httpcore.ConnectTimeout):
        return CarrierResult("retry", error_code="connect_error", detail="connect timed out")
    if isinstance(exc, httpcore.ConnectError):
        return CarrierResult("retry", error_code="connect_error", detail="connect failed")
    if isinstance(exc, httpcore.ReadTimeout | httpcore.WriteTimeout):
        return CarrierResult(
            "retry", error_code="timeout", maybe_accepted=request_sent, detail="no answer within the read timeout"
        )
    if isinstance(exc, httpcore.LocalProtocolError):
        return CarrierResult(
            "failed", error_code="invalid_request", config_error=True, detail="request rejected by the HTTP library"
        )
    if isinstance(exc, httpcore.RemoteProtocolError) and not peer_closed:
        return CarrierResult("retry", error_code="bad_response", maybe_accepted=request_sent, detail="malformed HTTP answer")
    if isinstance(exc, httpcore.NetworkError | httpcore.RemoteProtocolError | OSError):
        return CarrierResult(
            "retry",
            error_code="connection_dropped",
            maybe_accepted=request_sent,
            detail="connection closed before an answer" if request_sent else "connection closed before the request was sent",
        )
    return None
