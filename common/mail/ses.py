"""``SesMailer``: one mail through Amazon SES (classic v1 ``SendEmail``), classified into the SMS
carrier's ``CarrierResult`` so the consumer's retry and dead-letter machinery treats a mail exactly
like a text.

``send()`` never raises for SES or network problems. ``provider_message_id`` is the SES
``MessageId``. ``error_code`` is ``ses:<SES error code>`` (``ses:Throttling``) for an answer from
SES, or one of the carrier's own codes when no answer came (``connect_error``, ``timeout``,
``connection_dropped``, ``bad_response``, ``invalid_request``) plus ``credentials``. ``detail`` is
always a fixed phrase of ours: SES error messages can name addresses ("The following identities
failed the check ...: ann@example.org"), so they are read for a keyword and never copied.

Our message id travels as the SES message tag ``koinonia_message_id`` (``SendEmail`` cannot set
custom headers), so bounce/complaint/delivery events published through ``SES_CONFIGURATION_SET``
name it.

Classification. Sources: SendEmail errors and Common Errors of the SES API reference
(https://docs.aws.amazon.com/ses/latest/APIReference/API_SendEmail.html,
https://docs.aws.amazon.com/ses/latest/APIReference/CommonErrors.html), "API error codes"
(https://docs.aws.amazon.com/ses/latest/DeveloperGuide/api-error-codes.html: "retry 5xx", "4xx: revise
the request"), sending-quota errors (https://docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas-errors.html:
a throttling error says "Maximum sending rate exceeded" or "Daily message quota exceeded"; "wait up
to 10 minutes, then retry"), sending errors (https://docs.aws.amazon.com/ses/latest/dg/troubleshoot-error-messages.html),
and botocore's own throttling/transient lists (``botocore/retries/standard.py``). *ours* marks our
decisions.

==========================================  ============  ======  ===========================================
SES error code (HTTP 400 unless noted)      outcome       config  why
==========================================  ============  ======  ===========================================
Throttling "Maximum sending rate exceeded"  rate_limited  no      slow down; our backoff (no hint from SES)
Throttling "Daily message quota exceeded"   rate_limited  yes     rolling 24 h quota: retry_after_s = 1 h;
                                                                  ops should raise the quota (*ours*)
ThrottlingException, TooManyRequests(Exc.)  rate_limited  no      botocore's throttling codes
RequestThrottled, RequestLimitExceeded, ..
InternalFailure (500), ServiceUnavailable   retry         no      "retry 5xx"
(503), RequestTimeout, RequestExpired, ..
ExpiredToken                                retry         yes     temporary credentials ran out; the chain
                                                                  refreshes them (*ours*)
MessageRejected "... not verified ..."      failed        yes     From identity not verified, or a sandbox
                                                                  account writing to an unverified address
MessageRejected (other: virus, illegal      failed        no      this message cannot be sent as it is
address, too many recipients, ...)
MailFromDomainNotVerifiedException          failed        yes     custom MAIL FROM domain's MX unreadable
ConfigurationSetDoesNotExist                failed        yes     SES_CONFIGURATION_SET is wrong
ConfigurationSetSendingPausedException      failed        yes     see AccountSendingPaused
AccountSendingPausedException               failed        yes     *ours*: a pause lasts until a human acts
                                                                  (an operator, or AWS after a reputation
                                                                  review), often days. Retrying would burn
                                                                  every attempt within the backoff cap; the
                                                                  dead letters are replayed by this code once
                                                                  sending is re-enabled.
InvalidParameterValue, InvalidParameter-    failed        no      this message is invalid (e.g. a malformed
Combination, MissingParameter, Validation                         recipient)
Error, MalformedQueryString, ...
InvalidClientTokenId (403), Signature-      failed        yes     our credentials or IAM policy
DoesNotMatch, AccessDenied(Exception), ..
InvalidAction, MissingAction, OptInRequired failed        yes     wrong endpoint or region setup
==========================================  ============  ======  ===========================================

Codes not in the table, by HTTP status: 429 rate_limited; 408 and 5xx retry (502/504 also
``maybe_accepted``: a gateway may have passed the request on); 401/403 failed+config; other 4xx
failed; anything else retry. ``retry_after_s`` comes from ``Retry-After`` style headers when SES
sends them (it normally does not).

No answer, or none we can read (botocore exceptions):

=============================================  =======  ==============  ======================
what happened                                  outcome  maybe_accepted  error_code
=============================================  =======  ==============  ======================
connect refused / timed out, DNS, TLS, proxy   retry    False           ``connect_error``
read timeout after the request was sent        retry    True            ``timeout``
connection closed/reset, other urllib3 error   retry    True            ``connection_dropped``
a 2xx botocore could not parse, or one         sent     False           ``bad_response``
without a MessageId (SES has the mail; a
retry would send it twice: as for SMS)
no AWS credentials at all                      failed   False (config)  ``credentials``
credentials could not be fetched (IMDS, ...)   retry    False (config)  ``credentials``
botocore rejected our parameters               failed   False           ``invalid_request``
=============================================  =======  ==============  ======================

Anything else propagates: it is a bug, not a sending problem.

botocore retries nothing (``total_max_attempts=1``; note that botocore's ``max_attempts`` counts
*retries*, so ``max_attempts=1`` would still try twice): our retry policy decides, and every
attempt is counted once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from common import metrics
from common.carrier.errors import Verdict, retry_after_from_headers
from common.carrier.types import CarrierResult, Outcome
from common.config import ConfigurationError, Settings

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient
    from mypy_boto3_ses.type_defs import BodyTypeDef, SendEmailRequestTypeDef

__all__ = [
    "DAILY_QUOTA_RETRY_AFTER_S",
    "MESSAGE_ID_TAG",
    "SES_CODE_TABLE",
    "OutgoingMail",
    "SesMailer",
    "classify_ses_error",
    "classify_ses_exception",
]

logger = logging.getLogger(__name__)

MESSAGE_ID_TAG = "koinonia_message_id"
DAILY_QUOTA_RETRY_AFTER_S = 3_600.0  # the daily quota is a rolling 24 h window: look again in an hour
CODE_PREFIX = "ses:"
_CODE_MAX = 60  # dead-letter filters take codes up to 64 characters
# SES message tag values: ASCII letters, digits, '_' and '-', at most 256 characters (API_MessageTag).
_TAG_VALUE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_CODE_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """One mail to one recipient. ``message_id`` is ours (a UUID); it becomes the SES message tag
    ``koinonia_message_id``. ``html``, when given, is sent beside ``text`` as the HTML part."""

    message_id: str
    to: str
    subject: str
    text: str
    html: str | None = None

    def __post_init__(self) -> None:
        if not _TAG_VALUE.fullmatch(self.message_id):
            raise ValueError("message_id must be 1-256 ASCII letters, digits, '_' or '-' (an SES tag value)")
        if not self.to or any(ch in self.to for ch in "\r\n"):
            raise ValueError("to must be one address on one line")
        if any(ch in self.subject for ch in "\r\n"):
            raise ValueError("subject must be one line")


# Classification ------------------------------------------------------------------------------


def _v(outcome: Outcome, reason: str, config: bool = False) -> Verdict:
    return Verdict(outcome, config, reason)


def _many(codes: str, outcome: Outcome, reason: str, config: bool = False) -> dict[str, Verdict]:
    return {code: _v(outcome, reason, config) for code in codes.split()}


SES_CODE_TABLE: Mapping[str, Verdict] = {
    # Slow down. "Daily message quota exceeded" is told apart by its message (classify_ses_error).
    **_many(
        "Throttling ThrottlingException ThrottledException TooManyRequests TooManyRequestsException RequestThrottled"
        " RequestThrottledException RequestLimitExceeded SlowDown",
        "rate_limited",
        "maximum sending rate exceeded",
    ),
    # Transient.
    **_many("InternalFailure InternalError InternalServerError", "retry", "SES internal failure"),
    **_many("ServiceUnavailable ServiceUnavailableException", "retry", "SES unavailable"),
    **_many("RequestTimeout RequestTimeoutException PriorRequestNotComplete", "retry", "SES request timeout"),
    **_many("RequestExpired RequestTimeTooSkewed", "retry", "request expired (clock skew?)"),
    **_many("ExpiredToken ExpiredTokenException", "retry", "AWS session credentials expired", config=True),
    # This message, as it is.
    "MessageRejected": _v("failed", "message rejected"),
    **_many(
        "InvalidParameterValue InvalidParameterCombination MissingParameter ValidationError MalformedQueryString"
        " InvalidQueryParameter",
        "failed",
        "invalid request parameter",
    ),
    # Our setup, or an operator must act.
    **_many("MailFromDomainNotVerifiedException MailFromDomainNotVerified", "failed", "MAIL FROM domain not verified", True),
    **_many("ConfigurationSetDoesNotExist ConfigurationSetDoesNotExistException", "failed", "configuration set missing", True),
    "ConfigurationSetSendingPausedException": _v("failed", "sending paused for the configuration set", config=True),
    **_many("AccountSendingPausedException AccountSendingPaused", "failed", "sending paused for the SES account", True),
    **_many(
        "InvalidClientTokenId UnrecognizedClientException SignatureDoesNotMatch IncompleteSignature"
        " MissingAuthenticationToken InvalidSignatureException AuthFailure",
        "failed",
        "AWS credentials rejected",
        config=True,
    ),
    **_many("AccessDenied AccessDeniedException NotAuthorized", "failed", "not allowed to send (IAM policy)", True),
    **_many("InvalidAction MissingAction OptInRequired", "failed", "SES endpoint or region not set up", True),
}

_GATEWAY_STATUSES = frozenset({502, 504})


def _by_status(status: int | None) -> Verdict:
    if status is None:
        return _v("retry", "unknown SES error")
    if status == 429:
        return _v("rate_limited", "rate limited")
    if status == 408 or status >= 500:
        return _v("retry", "SES server error")
    if status in (401, 403):
        return _v("failed", "forbidden (credentials or IAM policy)", config=True)
    if 400 <= status < 500:
        return _v("failed", "request rejected")
    return _v("retry", "unexpected HTTP status")


def _rejected(message: str) -> Verdict:
    """``MessageRejected`` says why only in its message: pick a fixed phrase, never copy it."""
    text = message.lower()
    if "not verified" in text:
        return _v("failed", "address not verified (the From identity, or a recipient in the SES sandbox)", config=True)
    if "virus" in text:
        return _v("failed", "message rejected: contains a virus")
    if "illegal address" in text:
        return _v("failed", "message rejected: illegal address")
    if "too many" in text:
        return _v("failed", "message rejected: too many recipients")
    return _v("failed", "message rejected")


def classify_ses_error(response: Mapping[str, Any]) -> CarrierResult:
    """An SES error answer (botocore's ``ClientError.response``) -> ``CarrierResult``."""
    error = response.get("Error") or {}
    metadata = response.get("ResponseMetadata") or {}
    raw_code = error.get("Code")
    code = _CODE_CHARS.sub("_", raw_code)[:_CODE_MAX] if isinstance(raw_code, str) and raw_code else None
    raw_message = error.get("Message")
    message = raw_message if isinstance(raw_message, str) else ""
    status = metadata.get("HTTPStatusCode") if isinstance(metadata.get("HTTPStatusCode"), int) else None
    verdict = SES_CODE_TABLE.get(code) if code else None
    known = verdict is not None
    retry_after: float | None = None
    if verdict is not None and verdict.outcome == "rate_limited" and "daily message quota" in message.lower():
        verdict = _v("rate_limited", "daily message quota exceeded", config=True)
        retry_after = DAILY_QUOTA_RETRY_AFTER_S
    elif code == "MessageRejected":
        verdict = _rejected(message)
    elif verdict is None:
        verdict = _by_status(status)
    if retry_after is None and verdict.outcome in ("rate_limited", "retry"):
        headers = metadata.get("HTTPHeaders")
        retry_after = retry_after_from_headers(headers) if isinstance(headers, Mapping) else None
    return CarrierResult(
        verdict.outcome,
        http_status=status,
        error_code=f"{CODE_PREFIX}{code}" if code else None,
        retry_after_s=retry_after,
        maybe_accepted=not known and status in _GATEWAY_STATUSES,
        config_error=verdict.config_error,
        detail=verdict.reason,
    )


def classify_ses_exception(exc: BaseException) -> CarrierResult | None:
    """A botocore failure with no SES answer -> ``CarrierResult``; None for anything else (a bug:
    the caller lets it propagate). The order matters: botocore's ``ConnectTimeoutError`` is a
    ``ConnectionError`` (nothing sent), its ``ReadTimeoutError`` an ``HTTPClientError`` (sent)."""
    if isinstance(exc, BotoConnectionError):
        # Refused, unreachable, DNS, TLS handshake, proxy, connect timeout: the request never left.
        return CarrierResult("retry", error_code="connect_error", detail="could not connect to SES")
    if isinstance(exc, ReadTimeoutError):
        return CarrierResult("retry", error_code="timeout", maybe_accepted=True, detail="no answer within the read timeout")
    if isinstance(exc, ConnectionClosedError | HTTPClientError):
        # urllib3 cannot tell us whether the request was written before the connection broke: assume
        # it was (the duplicate window), as the SMS carrier does for a drop after the write.
        return CarrierResult(
            "retry", error_code="connection_dropped", maybe_accepted=True, detail="connection closed before an answer"
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return CarrierResult("failed", error_code="credentials", config_error=True, detail="no AWS credentials")
    if isinstance(exc, CredentialRetrievalError):
        return CarrierResult("retry", error_code="credentials", config_error=True, detail="AWS credentials unavailable")
    if isinstance(exc, ParamValidationError):
        return CarrierResult("failed", error_code="invalid_request", detail="request rejected by botocore")
    return None


# The mailer ------------------------------------------------------------------------------------


class SesMailer:
    """Sends mail through SES from a thread pool: boto3 blocks, so each ``send()`` runs
    ``SendEmail`` on one of ``max_concurrency`` threads and many mails are in flight at once. One
    boto3 client (thread-safe) and one urllib3 pool sized to the thread count serve them all.

    ``endpoint_url`` points at a local moto server in development and tests; ``None`` is AWS.
    Credentials come from the AWS default chain. ``client`` is the boto3 client: a test seam for
    botocore event handlers (fault injection at the HTTP layer).

    A cancelled ``send()`` cannot stop its thread: the mail may still go out. Close the mailer
    with ``aclose()`` (or ``async with``): it waits for the calls already running.
    """

    def __init__(
        self,
        mail_from: str,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        configuration_set: str | None = None,
        max_concurrency: int = 32,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        if not mail_from or any(ch in mail_from for ch in "\r\n"):
            raise ValueError("mail_from must be one address on one line (MAIL_FROM)")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if connect_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        self._mail_from = mail_from
        self._configuration_set = configuration_set or None
        self.max_concurrency = max_concurrency
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max_concurrency,
        )
        # A session of our own: boto3's default session is not safe to share while creating clients.
        session = boto3.session.Session()
        self._client: SESClient = session.client("ses", region_name=region, endpoint_url=endpoint_url, config=config)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="ses-send")
        # The HTTP status of the answer botocore is about to parse, per sending thread (handlers run in
        # the thread that calls the client): tells "2xx but unreadable" from a bug.
        self._answer = threading.local()
        self._client.meta.events.register("before-parse.ses.SendEmail", self._note_status)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, max_concurrency: int = 32) -> SesMailer:
        """A mailer from ``MAIL_FROM``, ``SES_REGION``, ``SES_ENDPOINT_URL``, ``SES_CONFIGURATION_SET``.
        Raises ``ConfigurationError`` (one line, like ``load_settings``) when ``MAIL_FROM`` is unset."""
        if not settings.mail_from:
            raise ConfigurationError(
                "configuration error: MAIL_FROM is not set: the SES-verified From address (see .env.example)"
            )
        return cls(
            settings.mail_from,
            region=settings.ses_region,
            endpoint_url=settings.ses_endpoint_url,
            configuration_set=settings.ses_configuration_set,
            max_concurrency=max_concurrency,
        )

    @property
    def client(self) -> SESClient:
        return self._client

    @property
    def peak_in_flight(self) -> int:
        """The most ``SendEmail`` calls that ran at once; never above ``max_concurrency``."""
        return self._peak_in_flight

    def _note_status(self, response_dict: Mapping[str, Any], **_: Any) -> None:
        self._answer.status = response_dict.get("status_code")

    async def send(self, mail: OutgoingMail) -> CarrierResult:
        """Send one mail; the classified result. Never raises for SES or network problems."""
        if self._closed:
            raise RuntimeError("SesMailer is closed")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, self._send_blocking, mail)
        if result.config_error:
            logger.warning(
                "SES setup problem", extra={"fields": {"message_id": mail.message_id, "error_code": result.error_code}}
            )
        return result

    def _send_blocking(self, mail: OutgoingMail) -> CarrierResult:
        body: BodyTypeDef = {"Text": {"Data": mail.text, "Charset": "UTF-8"}}
        if mail.html is not None:
            body["Html"] = {"Data": mail.html, "Charset": "UTF-8"}
        request: SendEmailRequestTypeDef = {
            "Source": self._mail_from,
            "Destination": {"ToAddresses": [mail.to]},
            "Message": {"Subject": {"Data": mail.subject, "Charset": "UTF-8"}, "Body": body},
            "Tags": [{"Name": MESSAGE_ID_TAG, "Value": mail.message_id}],
        }
        if self._configuration_set:
            request["ConfigurationSetName"] = self._configuration_set
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        self._answer.status = None
        started = time.perf_counter()
        try:
            answer = self._client.send_email(**request)
        except ClientError as exc:
            return classify_ses_error(exc.response)
        except BotoCoreError as exc:
            result = classify_ses_exception(exc)
            if result is None:
                raise
            return result
        except Exception:
            status = getattr(self._answer, "status", None)
            if isinstance(status, int) and 200 <= status < 300:
                # botocore reads every error answer (an unreadable one becomes a ClientError named by
                # its status), so this is a 2xx it could not parse: ResponseParserError, or a KeyError
                # on well-formed XML that is not SES's. SES took the mail; a retry would send it twice.
                return CarrierResult("sent", http_status=status, error_code="bad_response", detail="accepted; answer unreadable")
            raise
        finally:
            metrics.observe_latency(time.perf_counter() - started, channel="mail")  # every answer or failure
            with self._lock:
                self._in_flight -= 1
        provider_id = answer.get("MessageId")
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if not isinstance(provider_id, str) or not provider_id:
            # SES took it (2xx) but named no id: retrying would send it twice.
            return CarrierResult("sent", http_status=status, error_code="bad_response", detail="accepted; no MessageId")
        return CarrierResult("sent", provider_message_id=provider_id, http_status=status)

    async def aclose(self) -> None:
        """Wait for running sends, then release the threads and the client's connections."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        self._client.close()

    async def __aenter__(self) -> SesMailer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
