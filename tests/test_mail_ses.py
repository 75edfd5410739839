"""``SesMailer`` against moto (in-process and as a real HTTP server), with real boto3 and botocore.

Nothing of ours is mocked. SES failures moto cannot produce (throttling, 5xx, paused accounts) are
injected at the HTTP layer: a ``before-send`` handler on the mailer's own boto3 client answers
with the status and error XML SES would send, and botocore parses it as it would a real answer.
Network failures are real sockets: a closed port, a listener that never answers, one that hangs up.
Fake AWS credentials only; nothing here can reach AWS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from xml.sax.saxutils import escape

import boto3
import httpx
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends

from common.carrier import CarrierResult
from common.config import ConfigurationError, Settings
from common.mail import (
    DAILY_QUOTA_RETRY_AFTER_S,
    MESSAGE_ID_TAG,
    OutboxUnavailable,
    OutgoingMail,
    SesMailer,
    classify_ses_error,
    sent_mail,
)

REGION = "us-east-1"
SENDER = "news@example.org"
FROM = f"Grace Church <{SENDER}>"
RECIPIENT = "ann.reader@example.net"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Fake credentials; no developer profile, config file or endpoint override can leak in."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SES", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def moto_ses() -> Iterator[Any]:
    """moto in-process with the sender verified; yields the SES backend (what moto recorded)."""
    with mock_aws():
        boto3.session.Session().client("ses", region_name=REGION).verify_email_identity(EmailAddress=SENDER)
        yield ses_backends[DEFAULT_ACCOUNT_ID][REGION]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto as a real HTTP server on a free port (what a developer's local stack runs)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def ses_server(moto_endpoint: str) -> Iterator[tuple[str, Any]]:
    """The moto server, reset, with the sender verified: (endpoint, SES backend). Fault injection runs
    here: botocore's ``before-send`` calls *every* handler, so under ``mock_aws`` moto's own handler
    would still record a request our fault answered; against a server, an injected answer replaces
    the HTTP send altogether, as a real fault does. The server shares moto's in-process backends."""
    httpx.post(f"{moto_endpoint}/moto-api/reset", timeout=5).raise_for_status()
    admin = boto3.session.Session().client("ses", region_name=REGION, endpoint_url=moto_endpoint)
    admin.verify_email_identity(EmailAddress=SENDER)
    admin.close()
    yield moto_endpoint, ses_backends[DEFAULT_ACCOUNT_ID][REGION]


def run(coro_factory: Callable[[], Any]) -> Any:
    return asyncio.run(coro_factory())


def mail(n: int = 0, *, html: str | None = None) -> OutgoingMail:
    return OutgoingMail(message_id=str(uuid.uuid4()), to=RECIPIENT, subject=f"Sunday {n}", text=f"See you {n}", html=html)


def send_with(mailer: SesMailer, *mails: OutgoingMail) -> list[CarrierResult]:
    async def go() -> list[CarrierResult]:
        try:
            return list(await asyncio.gather(*(mailer.send(m) for m in mails)))
        finally:
            await mailer.aclose()

    return run(go)


# Fault injection at the HTTP layer --------------------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def error_xml(code: str, message: str) -> bytes:
    return (
        '<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        "<RequestId>4a5b6c7d-0000-1111-2222-333344445555</RequestId></ErrorResponse>"
    ).encode()


class Faults:
    """Answers the first ``len(answers)`` SendEmail requests itself; later ones go on to moto.
    ``requests`` counts every SendEmail that reached the HTTP layer (botocore retries would show)."""

    def __init__(self, mailer: SesMailer, answers: list[tuple[int, bytes, dict[str, str]]]) -> None:
        self.answers = list(answers)
        self.requests = 0
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        mailer.client.meta.events.register_first("before-send.ses.SendEmail", self)

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        with self._lock:
            self.requests += 1
            body = request.body or b""
            self.bodies.append(body.encode() if isinstance(body, str) else bytes(body))
            if not self.answers:
                return None
            status, body, headers = self.answers.pop(0)
        return AWSResponse(request.url, status, {"Content-Type": "text/xml", **headers}, _Raw(body))


def fault(status: int, code: str, message: str = "", headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    return status, error_xml(code, message), headers or {}


def new_mailer(**kwargs: Any) -> SesMailer:
    return SesMailer(FROM, region=REGION, **kwargs)


# Sending ---------------------------------------------------------------------------------------


def test_text_and_html_mail_is_sent_and_recorded(moto_ses) -> None:
    mailer = new_mailer()
    spy = Faults(mailer, [])
    one = mail(1, html="<p>See you <b>Sunday</b></p>")
    [result] = send_with(mailer, one)

    assert result.outcome == "sent" and result.http_status == 200
    assert not result.retryable and result.error_code is None and not result.maybe_accepted
    [recorded] = moto_ses.sent_messages
    assert result.provider_message_id == recorded.id
    assert recorded.source == FROM
    assert recorded.subject == "Sunday 1"
    assert recorded.destinations["ToAddresses"] == [RECIPIENT]
    assert recorded.body == "<p>See you <b>Sunday</b></p>"  # moto keeps the HTML part when there is one
    # Both parts and our id tag were on the wire (moto does not keep tags).
    [wire] = spy.bodies
    assert b"Message.Body.Text.Data=See+you+1" in wire and b"Message.Body.Html.Data=" in wire
    assert f"Tags.member.1.Name={MESSAGE_ID_TAG}&Tags.member.1.Value={one.message_id}".encode() in wire
    assert b"ConfigurationSetName" not in wire
    assert spy.requests == 1


def test_text_only_mail_and_configuration_set(moto_ses) -> None:
    mailer = new_mailer(configuration_set="koinonia-events")
    spy = Faults(mailer, [])
    [result] = send_with(mailer, mail(2))
    assert result.outcome == "sent"
    assert moto_ses.sent_messages[0].body == "See you 2"
    assert b"Message.Body.Html" not in spy.bodies[0]
    assert b"ConfigurationSetName=koinonia-events" in spy.bodies[0]


def test_unverified_from_is_a_permanent_config_failure_and_logs_no_address(moto_ses, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    mailer = SesMailer("stranger@unverified.example", region=REGION)
    [result] = send_with(mailer, mail(3))

    assert result.outcome == "failed" and not result.retryable
    assert result.error_code == "ses:MessageRejected"
    assert result.http_status == 400 and result.config_error
    assert result.detail is not None and "@" not in result.detail
    assert moto_ses.sent_messages == []
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records if r.name.startswith("common"))
    assert "ses:MessageRejected" in logged
    assert "@" not in logged and "Sunday" not in logged and "See you" not in logged


def test_throttling_is_rate_limited_botocore_does_not_retry_then_success(ses_server) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    faults = Faults(mailer, [fault(400, "Throttling", "Maximum sending rate exceeded.")] * 2)

    async def go() -> list[CarrierResult]:
        results = [await mailer.send(mail(i)) for i in range(3)]
        await mailer.aclose()
        return results

    first, second, third = run(go)
    for throttled in (first, second):
        assert throttled.outcome == "rate_limited" and throttled.retryable
        assert throttled.error_code == "ses:Throttling" and throttled.http_status == 400
        assert throttled.retry_after_s is None and not throttled.config_error and not throttled.maybe_accepted
    [recorded] = backend.sent_messages  # the throttled attempts never reached SES
    assert third.outcome == "sent" and third.provider_message_id == recorded.id
    assert faults.requests == 3  # one HTTP request per send: our policy retries, botocore does not


def test_retry_after_header_is_the_hint(ses_server) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    Faults(mailer, [fault(400, "Throttling", "Maximum sending rate exceeded.", {"Retry-After": "7"})])
    [result] = send_with(mailer, mail())
    assert result.outcome == "rate_limited" and result.retry_after_s == 7.0
    assert backend.sent_messages == []


def test_daily_quota_waits_an_hour_and_flags_config(ses_server) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    Faults(mailer, [fault(400, "Throttling", "Daily message quota exceeded.")])
    [result] = send_with(mailer, mail())
    assert result.outcome == "rate_limited" and result.retryable
    assert result.retry_after_s == DAILY_QUOTA_RETRY_AFTER_S == 3600.0
    assert result.config_error and result.error_code == "ses:Throttling"
    assert backend.sent_messages == []


def test_internal_failure_is_retryable_then_success(ses_server) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    faults = Faults(mailer, [fault(500, "InternalFailure", "An internal error occurred.")])

    async def go() -> list[CarrierResult]:
        results = [await mailer.send(mail(i)) for i in range(2)]
        await mailer.aclose()
        return results

    failed, sent = run(go)
    assert failed.outcome == "retry" and failed.retryable
    assert failed.error_code == "ses:InternalFailure" and failed.http_status == 500
    assert not failed.maybe_accepted and not failed.config_error
    assert sent.outcome == "sent" and len(backend.sent_messages) == 1
    assert faults.requests == 2


def test_gateway_error_without_an_ses_answer_may_have_been_accepted(ses_server) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    Faults(mailer, [(502, b"<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"})])
    [result] = send_with(mailer, mail())
    assert result.outcome == "retry" and result.http_status == 502
    assert result.maybe_accepted and result.error_code == "ses:502"  # botocore names an unparsed error by its status
    assert backend.sent_messages == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html>captive portal</html>",  # well-formed, not SES's: botocore raises KeyError
        b"<html><body>unclosed",  # not XML: botocore raises ResponseParserError
        b'<SendEmailResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><SendEmailResult/></SendEmailResponse>',
    ],
)
def test_a_2xx_without_a_readable_message_id_is_still_sent(ses_server, body) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    Faults(mailer, [(200, body, {})])
    [result] = send_with(mailer, mail())
    assert result.outcome == "sent" and result.error_code == "bad_response"  # a retry would send it twice
    assert result.provider_message_id is None and not result.retryable
    assert backend.sent_messages == []


@pytest.mark.parametrize(
    ("status", "code", "message", "outcome", "config"),
    [
        (503, "ServiceUnavailable", "Service unavailable.", "retry", False),
        (400, "ThrottlingException", "Rate exceeded", "rate_limited", False),
        (400, "AccountSendingPausedException", "Sending paused for this account.", "failed", True),
        (400, "ConfigurationSetSendingPausedException", "Sending paused for this configuration set.", "failed", True),
        (400, "ConfigurationSetDoesNotExist", "Configuration set <koinonia> does not exist.", "failed", True),
        (400, "MailFromDomainNotVerifiedException", "MAIL FROM domain not verified.", "failed", True),
        (400, "InvalidParameterValue", "Missing final '@domain'", "failed", False),
        (400, "MessageRejected", "Message contains a virus.", "failed", False),
        (
            400,
            "MessageRejected",
            "Email address is not verified. The following identities failed the check in region US-EAST-1: ann@x.org",
            "failed",
            True,
        ),
        (403, "InvalidClientTokenId", "The security token included in the request is invalid.", "failed", True),
        (403, "AccessDenied", "User is not authorized to perform ses:SendEmail", "failed", True),
        (400, "ExpiredToken", "The security token included in the request is expired", "retry", True),
        (403, "SomethingNew", "?", "failed", True),
        (429, "SomethingNew", "?", "rate_limited", False),
        (400, "SomethingNew", "?", "failed", False),
        (500, "SomethingNew", "?", "retry", False),
    ],
)
def test_ses_answers_are_classified(ses_server, status, code, message, outcome, config) -> None:
    endpoint, backend = ses_server
    mailer = new_mailer(endpoint_url=endpoint)
    Faults(mailer, [fault(status, code, message)])
    [result] = send_with(mailer, mail())
    assert (result.outcome, result.config_error) == (outcome, config)
    assert result.error_code == f"ses:{code}" and result.http_status == status
    assert result.detail and "@" not in result.detail and "ann" not in result.detail
    assert backend.sent_messages == []


def test_classification_is_pure_and_survives_odd_answers() -> None:
    assert classify_ses_error({}).outcome == "retry"  # nothing known: the cautious choice
    weird = classify_ses_error({"Error": {"Code": "Bad\nCode" + "x" * 100}, "ResponseMetadata": {"HTTPStatusCode": 400}})
    assert weird.outcome == "failed" and weird.error_code is not None
    assert "\n" not in weird.error_code and len(weird.error_code) <= 64


# The network -----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connect_error_is_retryable_and_nothing_was_sent() -> None:
    mailer = SesMailer(FROM, region=REGION, endpoint_url=f"http://127.0.0.1:{closed_port()}")
    [result] = send_with(mailer, mail())
    assert result.outcome == "retry" and result.retryable
    assert result.error_code == "connect_error" and not result.maybe_accepted
    assert result.http_status is None and result.provider_message_id is None


def test_read_timeout_after_the_request_went_out_is_maybe_accepted() -> None:
    with socket.socket() as listener:  # the kernel accepts the connection; nobody ever answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        mailer = SesMailer(FROM, region=REGION, endpoint_url=f"http://127.0.0.1:{port}", read_timeout_s=0.3)
        started = time.monotonic()
        [result] = send_with(mailer, mail())
    assert time.monotonic() - started < 5
    assert result.outcome == "retry" and result.error_code == "timeout" and result.maybe_accepted


def test_connection_closed_before_an_answer_is_maybe_accepted() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)  # take the request, then close without a word

        server = threading.Thread(target=hang_up, daemon=True)
        server.start()
        mailer = SesMailer(FROM, region=REGION, endpoint_url=f"http://127.0.0.1:{port}")
        [result] = send_with(mailer, mail())
        server.join(5)
    assert result.outcome == "retry" and result.error_code == "connection_dropped" and result.maybe_accepted


# Concurrency -----------------------------------------------------------------------------------


def test_fifty_mails_at_once_are_all_sent_within_the_thread_bound(moto_ses) -> None:
    mailer = new_mailer(max_concurrency=10)

    def slow_network(**_: Any) -> None:  # every request takes 20 ms on the wire, then goes on to moto
        time.sleep(0.02)

    mailer.client.meta.events.register_first("before-send.ses.SendEmail", slow_network)
    mails = [mail(i) for i in range(50)]
    results = send_with(mailer, *mails)

    assert [r.outcome for r in results] == ["sent"] * 50
    assert len({r.provider_message_id for r in results}) == 50
    assert sorted(m.subject for m in moto_ses.sent_messages) == sorted(m.subject for m in mails)
    assert 2 <= mailer.peak_in_flight <= 10  # in flight together, never more than the pool


# Settings and the public surface -------------------------------------------------------------


def settings(monkeypatch: pytest.MonkeyPatch, tmp_path, **mail: Any) -> Settings:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("MAIL_FROM", "SES_REGION", "SES_ENDPOINT_URL", "SES_CONFIGURATION_SET"):
        monkeypatch.delenv(name, raising=False)
    key = "A" * 43 + "="
    return Settings(
        database_url="postgresql://postgres@127.0.0.1/koinonia",
        encryption_key=key,
        lookup_key=key,
        telnyx_api_key="KEY_test",
        telnyx_base_url="http://127.0.0.1:8099/v2",
        **mail,
    )


def test_from_settings_needs_mail_from(monkeypatch, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="MAIL_FROM is not set"):
        SesMailer.from_settings(settings(monkeypatch, tmp_path))


def test_outgoing_mail_rejects_what_ses_cannot_carry() -> None:
    with pytest.raises(ValueError, match="message_id"):
        OutgoingMail(message_id="not a tag value!", to=RECIPIENT, subject="s", text="t")
    with pytest.raises(ValueError, match="subject"):
        OutgoingMail(message_id="m1", to=RECIPIENT, subject="a\r\nBcc: x@y.org", text="t")


def test_send_after_close_is_a_bug() -> None:
    mailer = new_mailer()

    async def go() -> None:
        await mailer.aclose()
        await mailer.send(mail())

    with pytest.raises(RuntimeError, match="closed"):
        run(go)


# moto as a server: what a developer's local stack runs ----------------------------------------


def test_moto_server_mode_and_the_outbox(ses_server, monkeypatch, tmp_path) -> None:
    moto_server, _ = ses_server
    admin = boto3.session.Session().client("ses", region_name=REGION, endpoint_url=moto_server)
    mailer = SesMailer.from_settings(settings(monkeypatch, tmp_path, mail_from=FROM, ses_endpoint_url=moto_server))

    async def one_by_one() -> list[CarrierResult]:
        async with mailer:
            return [await mailer.send(mail(1)), await mailer.send(mail(2, html="<p>2</p>"))]

    results = run(one_by_one)
    assert [r.outcome for r in results] == ["sent", "sent"]

    outbox = sent_mail(moto_server)
    assert [row["subject"] for row in outbox] == ["Sunday 1", "Sunday 2"]
    assert [row["message_id"] for row in outbox] == [r.provider_message_id for r in results]
    assert outbox[0]["source"] == FROM
    assert outbox[0]["to"] == ["a***@example.net"]  # masked by default
    assert outbox[0]["cc"] == [] and outbox[0]["bcc"] == []
    assert sent_mail(moto_server, show_recipients=True)[0]["to"] == [RECIPIENT]
    # SES's own view agrees.
    points = admin.get_send_statistics()["SendDataPoints"]
    assert sum(p["DeliveryAttempts"] for p in points) == 2


def test_outbox_says_when_there_is_no_moto_server() -> None:
    with pytest.raises(OutboxUnavailable, match="moto"):
        sent_mail(f"http://127.0.0.1:{closed_port()}", timeout_s=1)
