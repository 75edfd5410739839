"""A real HTTPS media server on 127.0.0.1 with a CA made here (cryptography), for the MMS media checks.

Shared by tests/test_media.py (common/media.py itself) and tests/test_mms.py (the send path). The routes are
driven by the query string, so each test states the file it wants: ``/media?size=N&type=T`` answers HEAD and
``Range: bytes=0-0`` GETs; ``nohead=1`` refuses HEAD (405), ``nolength=1`` leaves Content-Length out of HEAD,
``unknown=1`` never says the size, ``norange=1`` ignores Range. ``/status/N`` answers N, ``/redirect?to=URL``
and ``/chain?n=K`` redirect, ``/slow`` holds its answer until the server stops. Every request is recorded with
a ``t`` marker, so a test can see what reached the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UNCHECKABLE_MEDIA_URL = "https://127.0.0.1:9/flyer.jpg"
"""For MMS tests that are not about media: nothing listens on port 9, so the send path's media check cannot
reach it and accepts the send at once with a ``media_unreachable`` warning, offline or not (a public URL
would make the suite depend on someone else's server)."""


# -- a CA and a server certificate -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_pki(folder: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("koinonia test CA"))
        .issuer_name(_name("koinonia test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


# -- the media server -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    host: str | None
    range: str | None


@dataclass
class MediaServer:
    base: str  # https://127.0.0.1:PORT
    port: int
    ca_file: str
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str, **query: object) -> str:
        """A URL on this server; a fresh ``t`` marker makes its requests findable in ``seen``."""
        query.setdefault("t", uuid.uuid4().hex[:12])
        return f"{self.base}{path}?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())

    def requests_for(self, url: str) -> list[Seen]:
        marker = parse_qs(urlsplit(url).query)["t"][0]
        return [s for s in self.seen if parse_qs(urlsplit(s.path).query).get("t") == [marker]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ssl_context: ssl.SSLContext
    seen: list[Seen]
    release: threading.Event

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client closing after the headers (as the checker does) is normal here


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(10)
        # TLS in the handler's thread, so a slow handshake never holds up the accept loop
        self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.request.close()  # the TLS socket; the server closes only the plain one it accepted

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        self.server.seen.append(Seen(self.command, self.path, self.headers.get("Host"), self.headers.get("Range")))
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path.startswith("/status/"):
            self._send(int(parts.path.rsplit("/", 1)[1]), {"Content-Type": "text/plain", "Content-Length": "0"})
        elif parts.path == "/redirect":
            self._send(302, {"Location": query["to"], "Content-Length": "0"})
        elif parts.path == "/chain":
            hops = int(query["n"])
            rest = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items() if k != "n")
            target = f"/chain?n={hops - 1}&{rest}" if hops > 1 else f"/media?{rest}"
            self._send(302, {"Location": target, "Content-Length": "0"})
        elif parts.path == "/slow":
            self.server.release.wait(30)  # holds the answer past any deadline a test uses
            self._send(200, {"Content-Type": "image/png", "Content-Length": "10"})
        elif parts.path == "/media":
            self._media(query, head=head)
        else:
            self._send(404, {"Content-Length": "0"})

    def _media(self, query: dict[str, str], *, head: bool) -> None:
        size = int(query.get("size", "1000"))
        content_type = query.get("type", "image/jpeg")
        headers = {} if content_type == "none" else {"Content-Type": content_type}
        if head:
            if query.get("nohead"):
                self._send(405, {"Allow": "GET", "Content-Length": "0"})
            elif query.get("nolength") or query.get("unknown"):
                self._send(200, headers)
            else:
                self._send(200, {**headers, "Content-Length": str(size)})
            return
        wants_range = self.headers.get("Range") == "bytes=0-0" and not query.get("norange")
        if query.get("unknown"):
            self._send(200, headers, b"x" * size)  # no length: the body ends when the connection does
        elif wants_range and size == 0:
            self._send(416, {**headers, "Content-Range": "bytes */0", "Content-Length": "0"})
        elif wants_range:
            self._send(206, {**headers, "Content-Range": f"bytes 0-0/{size}", "Content-Length": "1"}, b"x")
        else:
            self._send(200, {**headers, "Content-Length": str(size)}, b"x" * size)

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            with contextlib.suppress(OSError):  # the checker hangs up after the headers, as it should
                self.wfile.write(body)


@contextlib.contextmanager
def media_server(folder: Path) -> Iterator[MediaServer]:
    """Serve on a free port of 127.0.0.1 with a CA and certificate made in ``folder`` (its ``ca_file`` trusts it)."""
    pki = _make_pki(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.ssl_context = context
    httpd.seen = []
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, name="media-server", daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield MediaServer(base=f"https://127.0.0.1:{port}", port=port, ca_file=str(pki.ca_file), seen=httpd.seen)
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
