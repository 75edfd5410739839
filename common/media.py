"""Checking MMS media before a send is accepted.

Telnyx fetches every ``media_urls`` entry itself when it sends, and refuses or fails the message when
the media breaks its rules (error 40317: at most 10 URLs, under 1 MB in total). Most of those failures
can be seen before we accept the send: this module probes each URL and reports, per URL, what is wrong
and what to do about it. It decides nothing else: the send path chooses how to answer a report.

What is checked (sources: ``shared/reference/telnyx.md`` "MMS", i.e. support.telnyx.com/en/articles/4450150
and developers.telnyx.com/docs/messaging/messages/mms-transcoding):

- ``https`` only; at most :data:`MAX_MEDIA` URLs (more are refused before anything is fetched).
- Each file, and all files together, under :data:`MAX_TOTAL_BYTES`. Telnyx says "less than 1 MB" without
  saying which megabyte: we read it as 1,000,000 bytes, the smaller of the two readings, so a send we
  accept is under 1 MB either way (Telnyx also advises staying ~100 KB under for encoding overhead).
  Over :data:`CARRIER_SAFE_BYTES` (600 KB, the smallest carrier cap: toll-free and short-code routes)
  is a warning only.
- The ``Content-Type`` is one Telnyx carries (:data:`SUPPORTED_CONTENT_TYPES`).
- 404/410 (and 401/403, other 4xx) are errors: Telnyx's fetch would fail the same way.

"Checked where reachable": a URL that cannot be reached now (DNS, connection, TLS, HTTP 5xx/408/429, or
the deadline) is a *warning*, never an error. Telnyx fetches it again at send time, and a blip on our
side must not refuse a send that would have worked.

How a URL is probed: a ``HEAD``; when HEAD is refused or gives no ``Content-Length``, a ``GET`` with
``Range: bytes=0-0`` whose ``Content-Range`` gives the total (a server that ignores Range answers 200
and its ``Content-Length`` is used; the body is never read). ``Accept-Encoding: identity`` so the size
is the file's, not a compressed one. At most :data:`MAX_REDIRECTS` redirects, each to ``https``.

SSRF: the host is resolved first and, unless private addresses are allowed (``APP_ENV`` development or
test, where tests serve media from 127.0.0.1), any private, loopback, link-local, shared or reserved
address makes the URL an error (``media_not_public``) and nothing is fetched. The request then goes to
the address that was checked (the URL's host is kept for ``Host`` and for TLS SNI and certificate
checks), so a second DNS answer cannot point the fetch somewhere else (DNS rebinding). Every redirect
hop is resolved and checked the same way.

Why asyncio (``httpx.AsyncClient`` on a private event loop) rather than a sync client on a thread
pool: all URLs run in parallel on one thread under one deadline, and at the deadline the unfinished
probes are *cancelled*, which closes their sockets; threads cannot be cancelled, so a hung fetch would
outlive the call that gave up on it. :func:`check_media` is the sync entry point for the send function
(Flask, no running loop); :func:`check_media_async` is the same check for async callers.

Nothing is logged per URL (a URL's query string can carry a token); one debug line gives counts.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import certifi
import httpx

from common.config import AppEnv, Settings

__all__ = [
    "CARRIER_SAFE_BYTES",
    "MAX_MEDIA",
    "MAX_REDIRECTS",
    "MAX_TOTAL_BYTES",
    "MESSAGES",
    "SUPPORTED_CONTENT_TYPES",
    "WARNING_CODES",
    "MediaInfo",
    "MediaIssue",
    "MediaReport",
    "check_media",
    "check_media_async",
    "check_media_with_settings",
]

log = logging.getLogger(__name__)

MAX_MEDIA = 10  # media_urls per message (Telnyx 40317)
MAX_TOTAL_BYTES = 1_000_000  # bytes; Telnyx: "total media size must be less than 1 MB" (decimal MB: see above)
CARRIER_SAFE_BYTES = 600_000  # bytes; 600 KB, the lowest carrier cap in Telnyx's table, "the safe maximum"
MAX_REDIRECTS = 3  # per URL, HEAD and the GET fallback together

# What Telnyx carries as MMS. The union of its two statements:
# - support.telnyx.com/en/articles/4450150 (FAQs about MMS): text/plain, text/vcard, image/jpeg, image/png,
#   image/gif, video/3gpp, video/mp4; application/octet-stream is accepted and the type guessed from the bytes;
# - developers.telnyx.com/docs/messaging/messages/mms-transcoding ("Supported media types"): images JPEG, PNG,
#   GIF, BMP, TIFF, WebP; video MP4, 3GP, MOV; audio MP3, WAV, AMR, OGG; documents PDF, vCard, iCal,
#   written here as their IANA types plus the common aliases servers send for the same formats.
SUPPORTED_CONTENT_TYPES: frozenset[str] = frozenset(
    {
        "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/gif", "image/bmp", "image/x-ms-bmp",
        "image/tiff", "image/webp",
        "video/mp4", "video/3gpp", "video/quicktime",
        "audio/mpeg", "audio/mp3", "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/amr",
        "audio/ogg",
        "application/pdf", "text/vcard", "text/x-vcard", "text/calendar", "text/plain",
        "application/octet-stream",
    }
)  # fmt: skip
GENERIC_CONTENT_TYPE = "application/octet-stream"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_TOTAL = re.compile(r"^\s*bytes\s+(?:\d+-\d+|\*)\s*/\s*(\d+)\s*$", re.IGNORECASE)
_USER_AGENT = "koinonia-media-check"


@dataclass(frozen=True)
class MediaIssue:
    """One thing wrong (an error) or worth knowing (a warning) about the media of a send."""

    field: str  # "media_urls" for the whole list, "media_urls[2]" for one URL
    code: str  # stable, to branch on
    message: str  # what is wrong and what to do; never the URL itself

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class MediaInfo:
    """What was measured for ``media_urls[index]``; ``None`` where it could not be measured."""

    index: int
    content_type: str | None  # lower-cased, without parameters
    size_bytes: int | None
    http_status: int | None  # of the last answer (after redirects); None when nothing answered


@dataclass(frozen=True)
class MediaReport:
    """The outcome of :func:`check_media`: refuse the send on any error; pass warnings on to the caller."""

    errors: tuple[MediaIssue, ...]
    warnings: tuple[MediaIssue, ...]
    media: tuple[MediaInfo, ...]  # one per URL that was probed, in request order

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed): the send may be accepted."""
        return not self.errors

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes that could be measured (a lower bound when some are unknown)."""
        return sum(m.size_bytes or 0 for m in self.media)


# -- codes and messages ----------------------------------------------------------------------------------

# Every code this module reports, with its message: what is wrong, then what to do. Fields in braces are
# filled in per issue; no message ever contains the URL (its query string can carry a token).
MESSAGES: dict[str, str] = {
    # errors: the send should be refused
    "too_many_media": "an MMS takes at most {limit} media URLs, got {count}: send the rest in another message",
    "media_url_invalid": "{field} is not a URL: give an absolute https:// URL",
    "media_not_https": "{field} is not https; Telnyx needs an https:// URL: serve the file over https",
    "media_not_public": (
        "{field} points at a private, local or reserved network address; Telnyx can only fetch public URLs:"
        " host the file on a public https server"
    ),
    "media_not_found": "{field} answered HTTP {status} (no such file); Telnyx would fail to fetch it too: check the link",
    "media_forbidden": (
        "{field} answered HTTP {status}; Telnyx fetches without credentials: make the file public,"
        " or use a link that works without logging in"
    ),
    "media_fetch_refused": (
        "{field} answered HTTP {status} instead of the file; Telnyx would fail to fetch it too: check the link"
    ),
    "media_redirect_not_https": "{field} redirects to a non-https address: use the final https URL of the file",
    "media_too_many_redirects": "{field} redirects more than {limit} times: use the final URL of the file",
    "media_type_unsupported": (
        "{field} is served as {content_type}, which MMS does not carry: send an image (JPEG, PNG, GIF, BMP, TIFF,"
        " WebP), a video (MP4, 3GP, MOV), audio (MP3, WAV, AMR, OGG), a PDF, vCard, iCal or plain text"
    ),
    "media_too_large": ("{field} is {size:,} bytes; an MMS carries under {limit:,} bytes (1 MB) in all: compress or resize it"),
    "media_total_too_large": (
        "the media add up to {size:,} bytes; an MMS carries under {limit:,} bytes (1 MB) in all:"
        " send fewer or smaller files, or split them over several messages"
    ),
    # warnings: the send may go ahead, the caller should know
    "media_unreachable": ("{field} could not be checked now ({why}); Telnyx fetches it when sending: make sure it is online"),
    "media_check_timeout": (
        "{field} did not answer within {timeout_s:g} s and was not checked; Telnyx fetches it when sending:"
        " make sure it is online and answers quickly"
    ),
    "media_type_missing": (
        "{field} is served without a Content-Type; Telnyx may refuse it: serve it with its real type"
        " (image/jpeg, image/png, video/mp4...)"
    ),
    "media_type_generic": (
        "{field} is served as application/octet-stream; Telnyx guesses the type from the bytes and refuses"
        " what it cannot recognise: serve it with its real type"
    ),
    "media_size_unknown": ("{field} gives no size, so the 1 MB limit could not be checked: keep the file under {limit:,} bytes"),
    "media_total_over_carrier_safe_size": (
        "the media add up to {size:,} bytes; some carriers (toll-free and short-code routes) refuse MMS over"
        " {limit:,} bytes (600 KB): keep under that, or enable mms_transcoding on the messaging profile"
    ),
}
WARNING_CODES: frozenset[str] = frozenset(
    {
        "media_unreachable", "media_check_timeout", "media_type_missing", "media_type_generic", "media_size_unknown",
        "media_total_over_carrier_safe_size",
    }
)  # fmt: skip


def _issue(field: str, code: str, **values: object) -> MediaIssue:
    return MediaIssue(field, code, MESSAGES[code].format(field=field, **values))


# -- probing one URL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    code: str | None  # None: answered with the file's headers; else the code of what went wrong
    status: int | None = None
    content_type: str | None = None
    size_bytes: int | None = None


class _NotPublic(Exception):
    """The host resolves to an address Telnyx could not reach (and we must not)."""


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    return addresses


async def _send(client: httpx.AsyncClient, method: str, url: httpx.URL, *, allow_private: bool) -> httpx.Response:
    """One request without redirects, to the checked address; the body is never read."""
    sni_host = url.raw_host.decode("ascii")
    addresses = await _resolve(sni_host, url.port or 443)
    if not allow_private and any(not _is_public(a) for a in addresses):
        # Any private answer refuses the URL: with several answers we cannot know which one Telnyx gets.
        raise _NotPublic
    headers = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
    if method == "GET":
        headers["Range"] = "bytes=0-0"
    last_error: httpx.ConnectError | None = None
    for address in addresses:
        # Pinned to the address just checked; the name stays the TLS server name (SNI and certificate check).
        request = client.build_request(
            method, url.copy_with(host=str(address)), headers=headers, extensions={"sni_hostname": sni_host}
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:  # this address refused; a host may have others (IPv6 and IPv4)
            last_error = exc
            continue
        await response.aclose()  # headers are all we need; closing drops the unread body with the connection
        return response
    if last_error is None:
        raise httpx.ConnectError("the host resolved to no address")
    raise last_error


def _content_type(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return value or None


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _range_total(response: httpx.Response) -> int | None:
    match = _CONTENT_RANGE_TOTAL.match(response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _refusal(status: int) -> _Outcome:
    if status in (404, 410):
        return _Outcome("media_not_found", status)
    if status in (401, 403):
        return _Outcome("media_forbidden", status)
    if status in (408, 429) or status >= 500:
        return _Outcome("media_unreachable", status)  # the host's trouble now, maybe not at send time
    return _Outcome("media_fetch_refused", status)


async def _probe(client: httpx.AsyncClient, url: httpx.URL, *, allow_private: bool) -> _Outcome:
    method = "HEAD"
    redirects = 0
    while True:
        try:
            response = await _send(client, method, url, allow_private=allow_private)
        except _NotPublic:
            return _Outcome("media_not_public")
        except httpx.TimeoutException:
            return _Outcome("media_check_timeout")
        except (httpx.HTTPError, OSError, ssl.SSLError, UnicodeError):
            # DNS failure, refused connection, TLS failure, a broken answer: not checkable now.
            return _Outcome("media_unreachable")
        status = response.status_code
        location = response.headers.get("location")
        if status in _REDIRECT_STATUSES and location:
            redirects += 1
            if redirects > MAX_REDIRECTS:
                return _Outcome("media_too_many_redirects", status)
            try:
                url = url.join(location)
            except httpx.InvalidURL:
                return _Outcome("media_fetch_refused", status)
            if url.scheme != "https" or not url.host:
                return _Outcome("media_redirect_not_https", status)
            continue
        content_type = _content_type(response)
        if method == "HEAD":
            size = _int_header(response, "content-length")
            if 200 <= status < 300 and size is not None:
                return _Outcome(None, status, content_type, size)
            if status in (404, 410) or (status >= 500 and status != 501):
                return _refusal(status)
            # 405/501 (HEAD not implemented), 2xx without a length, or a 4xx that may be HEAD-specific
            # (a link signed for GET only answers 403 to HEAD): ask for one byte instead.
            method = "GET"
            continue
        if 200 <= status < 300:
            size = _range_total(response) if status == 206 else _int_header(response, "content-length")
            return _Outcome(None, status, content_type, size)
        if status == 416:  # an empty file cannot serve byte 0; its Content-Range is "bytes */0"
            total = _range_total(response)
            if total is not None:
                return _Outcome(None, status, content_type, total)
        return _refusal(status)


# -- the report -----------------------------------------------------------------------------------------


def _parse(raw: str) -> httpx.URL | None:
    try:
        url = httpx.URL(raw.strip())
    except (httpx.InvalidURL, TypeError, UnicodeError):
        return None
    return url if url.scheme and url.host else None


def _issues_for(index: int, outcome: _Outcome, timeout_s: float) -> list[MediaIssue]:
    field = f"media_urls[{index}]"
    if outcome.code is not None:
        why = f"it answered HTTP {outcome.status}" if outcome.status else "DNS, connection or TLS failure"
        return [_issue(field, outcome.code, status=outcome.status, why=why, timeout_s=timeout_s, limit=MAX_REDIRECTS)]
    issues: list[MediaIssue] = []
    content_type, size = outcome.content_type, outcome.size_bytes
    if content_type is None:
        issues.append(_issue(field, "media_type_missing"))
    elif content_type not in SUPPORTED_CONTENT_TYPES:
        issues.append(_issue(field, "media_type_unsupported", content_type=content_type))
    elif content_type == GENERIC_CONTENT_TYPE:
        issues.append(_issue(field, "media_type_generic"))
    if size is None:
        issues.append(_issue(field, "media_size_unknown", limit=MAX_TOTAL_BYTES))
    elif size >= MAX_TOTAL_BYTES:
        issues.append(_issue(field, "media_too_large", size=size, limit=MAX_TOTAL_BYTES))
    return issues


def _build_report(outcomes: dict[int, _Outcome], early: list[MediaIssue], timeout_s: float) -> MediaReport:
    issues = list(early)
    media: list[MediaInfo] = []
    for index in sorted(outcomes):
        outcome = outcomes[index]
        issues += _issues_for(index, outcome, timeout_s)
        media.append(MediaInfo(index, outcome.content_type, outcome.size_bytes, outcome.status))
    total = sum(m.size_bytes or 0 for m in media)
    if total >= MAX_TOTAL_BYTES:
        issues.append(_issue("media_urls", "media_total_too_large", size=total, limit=MAX_TOTAL_BYTES))
    elif total > CARRIER_SAFE_BYTES:
        issues.append(_issue("media_urls", "media_total_over_carrier_safe_size", size=total, limit=CARRIER_SAFE_BYTES))
    issues.sort(key=lambda i: _field_index(i.field))  # the list's issues first, then by URL (stable within one)
    return MediaReport(
        errors=tuple(i for i in issues if i.code not in WARNING_CODES),
        warnings=tuple(i for i in issues if i.code in WARNING_CODES),
        media=tuple(media),
    )


def _field_index(field: str) -> int:
    return int(field[field.index("[") + 1 : -1]) if "[" in field else -1


def _precheck(urls: Sequence[str]) -> tuple[dict[int, httpx.URL], list[MediaIssue]]:
    """Checks that need no network: the count and each URL's form. Returns the URLs worth probing."""
    issues: list[MediaIssue] = []
    to_probe: dict[int, httpx.URL] = {}
    for index, raw in enumerate(urls):
        field = f"media_urls[{index}]"
        url = _parse(raw) if isinstance(raw, str) else None
        if url is None:
            issues.append(_issue(field, "media_url_invalid"))
        elif url.scheme != "https":
            issues.append(_issue(field, "media_not_https"))
        else:
            to_probe[index] = url
    if len(urls) > MAX_MEDIA:
        issues.insert(0, _issue("media_urls", "too_many_media", limit=MAX_MEDIA, count=len(urls)))
        to_probe = {}  # refused anyway: no reason to fetch (or to let a caller make us fetch) hundreds of URLs
    return to_probe, issues


@functools.cache  # loading the public roots costs tens of ms; a context is safe to share
def _default_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())  # the public roots, as httpx uses by default
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def _default_client(timeout_s: float, ca_bundle: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=_default_ssl_context(ca_bundle),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,  # followed by hand: each hop must be https and a public address
        trust_env=False,  # fetch directly, as Telnyx will (no proxy or CA settings from the environment)
        # No connection reuse: requests go to an address, so a kept-alive connection made for one host name
        # could otherwise be handed a request for another name served from the same address.
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def check_media_async(
    urls: Sequence[str],
    *,
    timeout_s: float,
    client: httpx.AsyncClient | None = None,
    allow_private: bool = False,
    ca_bundle: str | None = None,
) -> MediaReport:
    """Check ``urls`` (a send's ``media_urls``) within ``timeout_s`` seconds in all; see the module docstring.

    ``allow_private``: fetch private/loopback addresses too (development and tests only; SSRF otherwise).
    ``ca_bundle``: a PEM file of CA certificates trusted besides the public roots (ignored with ``client``).
    ``client``: an ``httpx.AsyncClient`` to use instead of one made for this call (a test seam, or other TLS
    settings). It is not closed; it should keep no connections alive (requests go to resolved addresses, see
    ``_default_client``), and with :func:`check_media` it must not be in use on another event loop meanwhile.
    """
    if isinstance(urls, str):
        raise TypeError("urls is a list of URLs, not one string")
    started = time.monotonic()
    to_probe, early = _precheck(urls)
    outcomes: dict[int, _Outcome] = {}
    if to_probe:
        own_client = client is None
        active = _default_client(timeout_s, ca_bundle) if client is None else client
        try:
            tasks = {
                index: asyncio.create_task(_probe(active, url, allow_private=allow_private)) for index, url in to_probe.items()
            }
            done, pending = await asyncio.wait(tasks.values(), timeout=timeout_s)
            for task in pending:
                task.cancel()  # closes its connection; whatever it was waiting for is abandoned
            await asyncio.gather(*pending, return_exceptions=True)
            for index, task in tasks.items():
                outcomes[index] = task.result() if task in done else _Outcome("media_check_timeout")
        finally:
            if own_client:
                await active.aclose()
    report = _build_report(outcomes, early, timeout_s)
    log.debug(
        "media checked",
        extra={"fields": {
            "media_count": len(urls), "errors": len(report.errors), "warnings": len(report.warnings),
            "elapsed_ms": round((time.monotonic() - started) * 1000),
        }},
    )  # fmt: skip
    return report


def check_media(
    urls: Sequence[str],
    *,
    timeout_s: float,
    client: httpx.AsyncClient | None = None,
    allow_private: bool = False,
    ca_bundle: str | None = None,
) -> MediaReport:
    """:func:`check_media_async` for sync callers (not from inside a running event loop)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(
            check_media_async(urls, timeout_s=timeout_s, client=client, allow_private=allow_private, ca_bundle=ca_bundle)
        )
    finally:
        # Not asyncio.run(): it waits for the default executor, and a getaddrinfo thread stuck on a slow
        # resolver would hold the caller past the deadline. close() lets that thread finish on its own.
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def check_media_with_settings(urls: Sequence[str], settings: Settings, *, client: httpx.AsyncClient | None = None) -> MediaReport:
    """:func:`check_media` as configured: ``MEDIA_CHECK_TIMEOUT_S``, ``MEDIA_CA_BUNDLE``, and private addresses
    allowed only when ``APP_ENV`` is development or test."""
    return check_media(
        urls,
        timeout_s=settings.media_check_timeout_s,
        client=client,
        allow_private=settings.app_env in (AppEnv.development, AppEnv.test),
        ca_bundle=settings.media_ca_bundle,
    )
