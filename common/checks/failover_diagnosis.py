"""What to do when a ``koinonia check failover`` send did not reach the carrier: refused, or refused by the carrier.

Two places a check send can stop. ``accept`` refuses the request (an ``ApiError``, nothing written): the
check goes through the real send path, so a church without a subscription, over its quota or rate
limit, without a sending number, or a number that opted out, is refused as an API call would be.
Or the carrier refuses or does not answer: the row ends ``failed`` (the check sends with
``max_attempts`` 1) or ``suppressed``, with the carrier's code on the row and its attempt, read here
through the carrier error table (``common.carrier.errors.classify``) and turned into the setting to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from common.api_errors import ApiError
from common.carrier.errors import CODE_TABLE, classify

_AUTH_CODES = frozenset({"10009", "10010"})
_URL_CODES = frozenset({"10005", "10006"})
_NO_ANSWER_CODES = frozenset({"timeout", "connection_dropped", "bad_response"})


@dataclass(frozen=True)
class CarrierAttempt:
    """A check message's row after its attempt: status, the carrier's code, and the HTTP status of the attempt."""

    status: str
    error_code: str | None
    error_detail: str | None
    http_status: int | None


def refusal_fix(exc: ApiError, church_id: str) -> str:
    """The refused request's message, and for the refusals a check can meet, what to do about it."""
    fixes = {
        "no_subscription": f"church {church_id} has no active subscription, so the send path refuses it (402): start or "
        "renew its plan, or run the check with a church that has one",
        "quota_exceeded": f"{exc.message} (the check needs 2 segments)",
        "send_rate_limited": f"{exc.message} (the church's send rate limit, CHURCH_SEND_LIMIT; the check counts as 2 "
        "requests)",
        "recipients_opted_out": "the --to number opted out of this church's texts (it texted STOP): text START from that "
        "phone to the church's number, or use another phone",
        "no_sender": f"church {church_id} has no default sending number: give it one (the number on the Telnyx messaging "
        "profile), then run the check again",
    }
    return fixes.get(exc.code, f"the send was refused ({exc.status} {exc.code}): {exc.message}")


def carrier_fix(attempt: CarrierAttempt, *, to_masked: str, base_url: str) -> str:
    """What the carrier's answer to a check message means, and which setting or number to fix."""
    host = urlsplit(base_url).netloc or base_url
    if attempt.status == "suppressed":
        return (f"the carrier says {to_masked} has blocked this church's number (STOP, code 40300): text START to the "
                "church's number from that phone, or use another phone")  # fmt: skip
    code = attempt.error_code
    verdict = classify(attempt.http_status, code)
    if code in CODE_TABLE or attempt.http_status is not None:
        said = f"{verdict.reason}; code {code or '-'}, HTTP {attempt.http_status or '-'}"
    else:  # our own code for an attempt that got no answer (connect_error, timeout...): the table knows nothing more
        said = f"code {code or '-'}, no HTTP answer"
    if attempt.error_detail:
        said += f": {attempt.error_detail}"
    if code in _AUTH_CODES or attempt.http_status in (401, 403):
        return f"the carrier refused our credentials ({said}): check TELNYX_API_KEY (a valid v2 key with messaging rights)"
    if code == "connect_error":
        return (f"the carrier at {host} could not be reached ({said}): check TELNYX_BASE_URL "
                "(https://api.telnyx.com/v2) and that this machine may connect out to it")  # fmt: skip
    if code in _URL_CODES or attempt.http_status in (404, 405):
        return f"the carrier at {host} does not know this API ({said}): check TELNYX_BASE_URL (https://api.telnyx.com/v2)"
    if code == "invalid_request":
        return f"our request to the carrier could not be made ({said}): check TELNYX_API_KEY for stray characters"
    if code == "40310":
        return f"the carrier says {to_masked} is not a valid destination ({said}): give --to a mobile number in E.164"
    if verdict.config_error:
        return (f"the carrier refused the church's account or sending number ({said}): set the number up on the Telnyx "
                "messaging profile (or fix the account), then run the check again")  # fmt: skip
    if verdict.outcome == "rate_limited":
        return f"the carrier asked us to slow down ({said}): wait a minute and run the check again"
    if verdict.outcome == "retry" or code in _NO_ANSWER_CODES:
        return (f"the carrier did not take the message ({said}): it is failing or unreachable from here; try again "
                f"later, and check TELNYX_BASE_URL ({host}) if it persists")  # fmt: skip
    return f"the carrier refused the message ({said})"
