"""common/media.py against a real HTTPS server on 127.0.0.1, with a CA made for the run (tests/media_server.py).

The server's routes are driven by the query string, so each test states the file it wants (see
tests/media_server.py): ``/media?size=N&type=T``, ``/status/N``, ``/redirect?to=URL``, ``/chain?n=K``, ``/slow``.
Every request is recorded with a ``t`` marker, so a test can see what reached the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from common import media
from common.config import AppEnv, Settings
from common.media import (
    CARRIER_SAFE_BYTES,
    MAX_TOTAL_BYTES,
    MESSAGES,
    SUPPORTED_CONTENT_TYPES,
    WARNING_CODES,
    MediaIssue,
    MediaReport,
    _is_public,
    check_media,
    check_media_with_settings,
)
from tests.media_server import MediaServer, media_server

TIMEOUT_S = 5.0  # generous: only the deadline test relies on a URL not answering


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    with media_server(tmp_path_factory.mktemp("pki")) as running:
        yield running


def check(server: MediaServer, urls: list[str], *, timeout_s: float = TIMEOUT_S, allow_private: bool = True) -> MediaReport:
    return check_media(urls, timeout_s=timeout_s, allow_private=allow_private, ca_bundle=server.ca_file)


def codes(issues: tuple[MediaIssue, ...]) -> list[tuple[str, str]]:
    return [(i.field, i.code) for i in issues]


# -- a good set ----------------------------------------------------------------------------------------------


def test_good_set_has_no_errors_and_reports_what_it_measured(server: MediaServer) -> None:
    urls = [
        server.url("/media", size=120_000, type="image/jpeg"),
        server.url("/media", size=80_000, type="image/png; charset=binary"),
        server.url("/media", size=700, type="text/vcard"),
    ]
    report = check(server, urls)
    assert report.ok and report.errors == () and report.warnings == ()
    assert [(m.index, m.content_type, m.size_bytes, m.http_status) for m in report.media] == [
        (0, "image/jpeg", 120_000, 200),
        (1, "image/png", 80_000, 200),
        (2, "text/vcard", 700, 200),
    ]
    assert report.total_bytes == 200_700
    for url in urls:  # one HEAD each, nothing downloaded
        assert [s.method for s in server.requests_for(url)] == ["HEAD"]


def test_no_urls_is_an_empty_report(server: MediaServer) -> None:
    assert check(server, []) == MediaReport(errors=(), warnings=(), media=())


# -- the HEAD fallback -------------------------------------------------------------------------------------


def test_head_refused_falls_back_to_a_one_byte_get(server: MediaServer) -> None:
    url = server.url("/media", size=345_678, type="video/mp4", nohead=1)
    report = check(server, [url])
    assert report.ok and report.warnings == ()
    assert (report.media[0].content_type, report.media[0].size_bytes, report.media[0].http_status) == ("video/mp4", 345_678, 206)
    assert [(s.method, s.range) for s in server.requests_for(url)] == [("HEAD", None), ("GET", "bytes=0-0")]


def test_head_without_length_falls_back_to_content_range(server: MediaServer) -> None:
    url = server.url("/media", size=54_321, type="image/gif", nolength=1)
    report = check(server, [url])
    assert report.ok and report.warnings == ()
    assert report.media[0].size_bytes == 54_321
    assert [s.method for s in server.requests_for(url)] == ["HEAD", "GET"]


def test_server_ignoring_range_is_measured_by_its_content_length(server: MediaServer) -> None:
    url = server.url("/media", size=200_000, type="image/png", nohead=1, norange=1)
    report = check(server, [url])
    assert report.ok
    assert (report.media[0].size_bytes, report.media[0].http_status) == (200_000, 200)


def test_empty_file_answers_416_with_its_size(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=0, type="text/plain", nohead=1)])
    assert report.ok and report.media[0].size_bytes == 0


def test_no_size_anywhere_is_a_warning(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=5_000, type="image/jpeg", unknown=1)])
    assert report.ok
    assert codes(report.warnings) == [("media_urls[0]", "media_size_unknown")]
    assert report.media[0].size_bytes is None


# -- errors ---------------------------------------------------------------------------------------------------


def test_http_and_other_schemes_are_refused_without_a_fetch(server: MediaServer) -> None:
    plain = server.url("/media").replace("https://", "http://")
    report = check(server, [server.url("/media"), plain, "ftp://example.org/a.png", "not a url", ""])
    assert codes(report.errors) == [
        ("media_urls[1]", "media_not_https"),
        ("media_urls[2]", "media_not_https"),
        ("media_urls[3]", "media_url_invalid"),
        ("media_urls[4]", "media_url_invalid"),
    ]
    assert [m.index for m in report.media] == [0]
    assert server.requests_for(plain) == []


def test_eleven_urls_are_refused_before_any_fetch(server: MediaServer) -> None:
    urls = [server.url("/media") for _ in range(11)]
    report = check(server, urls)
    assert codes(report.errors) == [("media_urls", "too_many_media")]
    assert "at most 10" in report.errors[0].message and "got 11" in report.errors[0].message
    assert report.media == ()
    assert all(server.requests_for(u) == [] for u in urls)


def test_ten_urls_are_fine(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=1_000) for _ in range(10)])
    assert report.ok and len(report.media) == 10 and report.total_bytes == 10_000


def test_one_file_of_1_mb_is_too_large(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=MAX_TOTAL_BYTES, type="image/jpeg")])
    assert codes(report.errors) == [("media_urls", "media_total_too_large"), ("media_urls[0]", "media_too_large")]
    assert "1,000,000 bytes" in report.errors[1].message


def test_just_under_1_mb_passes_with_the_carrier_warning(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=MAX_TOTAL_BYTES - 1, type="image/jpeg")])
    assert report.ok
    assert codes(report.warnings) == [("media_urls", "media_total_over_carrier_safe_size")]


def test_total_over_1_mb_is_an_error_though_each_file_is_small(server: MediaServer) -> None:
    urls = [server.url("/media", size=400_000, type="image/jpeg") for _ in range(3)]
    report = check(server, urls)
    assert codes(report.errors) == [("media_urls", "media_total_too_large")]
    assert "1,200,000 bytes" in report.errors[0].message
    assert report.total_bytes == 1_200_000


def test_total_over_600_kb_is_a_warning_not_an_error(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=350_000, type="image/jpeg") for _ in range(2)])
    assert report.ok
    assert codes(report.warnings) == [("media_urls", "media_total_over_carrier_safe_size")]
    assert "700,000 bytes" in report.warnings[0].message


def test_exactly_600_kb_has_no_warning(server: MediaServer) -> None:
    report = check(server, [server.url("/media", size=CARRIER_SAFE_BYTES, type="image/jpeg")])
    assert report.ok and report.warnings == ()


def test_unsupported_content_type_is_an_error(server: MediaServer) -> None:
    urls = [server.url("/media", type="text/html; charset=utf-8"), server.url("/media", type="application/zip")]
    report = check(server, urls)
    assert codes(report.errors) == [("media_urls[0]", "media_type_unsupported"), ("media_urls[1]", "media_type_unsupported")]
    assert "text/html" in report.errors[0].message
    assert report.media[0].content_type == "text/html"


def test_generic_and_missing_content_types_are_warnings(server: MediaServer) -> None:
    report = check(server, [server.url("/media", type="application/octet-stream"), server.url("/media", type="none")])
    assert report.ok
    assert codes(report.warnings) == [("media_urls[0]", "media_type_generic"), ("media_urls[1]", "media_type_missing")]


@pytest.mark.parametrize(("status", "code"), [(404, "media_not_found"), (410, "media_not_found"), (403, "media_forbidden"),
                                              (401, "media_forbidden"), (400, "media_fetch_refused")])  # fmt: skip
def test_client_errors_are_errors(server: MediaServer, status: int, code: str) -> None:
    url = server.url(f"/status/{status}")
    report = check(server, [url])
    assert codes(report.errors) == [("media_urls[0]", code)]
    assert f"HTTP {status}" in report.errors[0].message
    assert report.media[0].http_status == status
    # 404/410 are final on HEAD; anything else may be HEAD-specific (a link signed for GET) and is asked again
    expected = ["HEAD"] if status in (404, 410) else ["HEAD", "GET"]
    assert [s.method for s in server.requests_for(url)] == expected


def test_redirect_to_http_is_an_error(server: MediaServer) -> None:
    target = server.url("/media").replace("https://", "http://")
    url = server.url("/redirect", to=target)
    report = check(server, [url])
    assert codes(report.errors) == [("media_urls[0]", "media_redirect_not_https")]
    assert server.requests_for(target) == []


def test_three_redirects_are_followed_and_four_are_too_many(server: MediaServer) -> None:
    ok = check(server, [server.url("/chain", n=3, size=4_242, type="image/png")])
    assert ok.ok and ok.media[0].size_bytes == 4_242
    too_many = check(server, [server.url("/chain", n=4, size=4_242, type="image/png")])
    assert codes(too_many.errors) == [("media_urls[0]", "media_too_many_redirects")]


def test_redirect_to_https_is_followed(server: MediaServer) -> None:
    report = check(server, [server.url("/redirect", to=server.url("/media", size=999, type="image/bmp"))])
    assert report.ok and (report.media[0].content_type, report.media[0].size_bytes) == ("image/bmp", 999)


def test_a_given_client_is_used_and_left_open(server: MediaServer) -> None:
    context = ssl.create_default_context(cafile=server.ca_file)
    client = httpx.AsyncClient(verify=context, limits=httpx.Limits(max_keepalive_connections=0))
    for _ in range(2):  # one client across two calls, each on its own event loop
        url = server.url("/media", size=1_234, type="audio/mpeg")
        report = check_media([url], timeout_s=TIMEOUT_S, client=client, allow_private=True)
        assert report.ok and report.media[0].size_bytes == 1_234
        assert [s.method for s in server.requests_for(url)] == ["HEAD"]
    assert not client.is_closed
    asyncio.run(client.aclose())


def test_one_string_is_not_a_list_of_urls() -> None:
    with pytest.raises(TypeError):
        check_media("https://example.org/a.png", timeout_s=1)


# -- checked where reachable -------------------------------------------------------------------------------


def test_unreachable_port_is_a_warning(server: MediaServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = check(server, [f"https://127.0.0.1:{port}/flyer.jpg"])
    assert report.ok
    assert codes(report.warnings) == [("media_urls[0]", "media_unreachable")]
    assert report.media[0].http_status is None


def test_server_errors_are_warnings(server: MediaServer) -> None:
    report = check(server, [server.url("/status/503"), server.url("/status/500")])
    assert report.ok
    assert codes(report.warnings) == [("media_urls[0]", "media_unreachable"), ("media_urls[1]", "media_unreachable")]
    assert "HTTP 503" in report.warnings[0].message


def test_untrusted_certificate_is_a_warning(server: MediaServer) -> None:
    report = check_media([server.url("/media")], timeout_s=TIMEOUT_S, allow_private=True)  # no CA bundle
    assert report.ok
    assert codes(report.warnings) == [("media_urls[0]", "media_unreachable")]


def test_slow_url_becomes_a_warning_at_the_deadline_and_the_rest_is_checked(server: MediaServer) -> None:
    slow = server.url("/slow")
    # Long enough for the good URL on a loaded machine; /slow answers only when the module ends.
    report = check(server, [server.url("/media", size=2_000, type="image/png"), slow], timeout_s=2.5)
    assert report.ok
    assert codes(report.warnings) == [("media_urls[1]", "media_check_timeout")]
    assert "2.5 s" in report.warnings[0].message
    assert report.media[0].size_bytes == 2_000 and report.media[1].size_bytes is None


# -- SSRF ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_private_addresses_are_refused_without_a_fetch_in_production(server: MediaServer, host: str) -> None:
    url = server.url("/media").replace("127.0.0.1", host)
    report = check(server, [url], allow_private=False)
    assert codes(report.errors) == [("media_urls[0]", "media_not_public")]
    assert "public" in report.errors[0].message
    assert server.requests_for(url) == []


def test_link_local_literal_is_refused(server: MediaServer) -> None:
    report = check(server, ["https://169.254.169.254/latest/meta-data", "https://[fd00::1]/a.png"], allow_private=False)
    assert codes(report.errors) == [("media_urls[0]", "media_not_public"), ("media_urls[1]", "media_not_public")]


def test_every_redirect_hop_is_checked(server: MediaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Our server stands in for a public host; the hop it redirects to is private.
    monkeypatch.setattr(media, "_is_public", lambda address: address == ipaddress.ip_address("127.0.0.1"))
    report = check(server, [server.url("/redirect", to="https://10.0.0.7/flyer.jpg")], allow_private=False)
    assert codes(report.errors) == [("media_urls[0]", "media_not_public")]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
        ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
        ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fd00::1", False),
        ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ],
)  # fmt: skip
def test_is_public(address: str, public: bool) -> None:
    assert _is_public(ipaddress.ip_address(address)) is public


def test_request_goes_to_the_checked_address_with_the_name_kept_for_host_and_tls(server: MediaServer) -> None:
    url = server.url("/media", size=3_000, type="image/webp").replace("127.0.0.1", "localhost")
    report = check(server, [url])
    assert report.ok and report.media[0].size_bytes == 3_000
    assert [s.host for s in server.requests_for(url)] == [f"localhost:{server.port}"]


# -- settings -----------------------------------------------------------------------------------------------


def _settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": "postgresql://postgres@127.0.0.1:5432/koinonia",
        "encryption_key": "A" * 43 + "=",
        "lookup_key": "B" * 43 + "=",
        "telnyx_api_key": "KEY_test",
        "telnyx_base_url": "http://127.0.0.1:9/v2",
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]  # pydantic-settings init option


def test_settings_defaults_and_bounds(server: MediaServer) -> None:
    settings = _settings()
    assert settings.media_check_timeout_s == 3.0 and settings.media_ca_bundle is None
    assert _settings(media_ca_bundle=server.ca_file).media_ca_bundle == server.ca_file
    for bad in ({"media_check_timeout_s": 0}, {"media_check_timeout_s": 31}, {"media_ca_bundle": "/nonexistent/ca.pem"}):
        with pytest.raises(ValidationError):
            _settings(**bad)


@pytest.mark.parametrize(
    ("app_env", "code"),
    [
        (AppEnv.test, None),
        (AppEnv.development, None),
        (AppEnv.staging, "media_not_public"),
        (AppEnv.production, "media_not_public"),
    ],
)
def test_private_addresses_allowed_only_in_development_and_test(server: MediaServer, app_env: AppEnv, code: str | None) -> None:
    settings = _settings(app_env=app_env, media_ca_bundle=server.ca_file, media_check_timeout_s=TIMEOUT_S)
    report = check_media_with_settings([server.url("/media", size=10, type="image/png")], settings)
    assert [e.code for e in report.errors] == ([code] if code else [])


# -- the catalogue -----------------------------------------------------------------------------------------------


def test_every_code_has_a_message_and_warnings_are_codes() -> None:
    assert MESSAGES.keys() >= WARNING_CODES
    assert {"media_not_https", "too_many_media", "media_too_large", "media_total_too_large", "media_type_unsupported",
            "media_not_found", "media_not_public"} <= MESSAGES.keys() - WARNING_CODES  # fmt: skip
    assert {"image/jpeg", "image/png", "image/gif", "video/mp4", "text/vcard", "application/pdf"} <= SUPPORTED_CONTENT_TYPES
