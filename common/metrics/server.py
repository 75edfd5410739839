"""``GET /metrics`` for a process without an HTTP port: the local worker, ``koinonia consume --metrics-port``.

Locally the messages are sent by ``koinonia consume --forever``, not by a function, so its sent, retried,
failed and dead counts and the carrier latencies live in that process's registry. A small stdlib
``ThreadingHTTPServer`` on a daemon thread answers them with exactly the functions' text (``route.scrape()``:
the same registry, render and queue gauges), without Flask or functions-framework in the worker. It answers
``GET /metrics`` and ``GET /alive`` (200, touching nothing), anything else 404; the thread dies with the
process, so stopping the worker stops it.

Only with ``METRICS_FORMAT=prometheus``: with ``emf`` the process's metrics are EMF lines on its stdout, and a
served port would show counts that EMF flushes also report; the flag is refused at start rather than served
empty. Access lines are not logged: a scraper every few seconds would drown the worker's own lines.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import urlsplit

from common.api_errors import ApiError
from common.config import get_settings
from common.metrics.route import METRICS_PATH, scrape
from common.web import ALIVE_PATH

logger = logging.getLogger("koinonia.metrics")

_TEXT = "text/plain; charset=utf-8"


class MetricsServerError(Exception):
    """The server cannot start; ``str(err)`` is one line saying what to do."""


@dataclass
class MetricsServer:
    """A started server: where it answers, and how to stop it (a test; the worker just exits)."""

    url: str  # http://host:port/metrics, with the port actually bound (``--metrics-port 0``: any free one)
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(host: str, port: int, *, metrics_format: str | None = None) -> MetricsServer:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; ``MetricsServerError`` when it cannot.

    ``metrics_format``: the process's ``METRICS_FORMAT`` (read from the settings when not given)."""
    metrics_format = get_settings().metrics_format if metrics_format is None else metrics_format
    if metrics_format != "prometheus":
        raise MetricsServerError(
            f"--metrics-port serves Prometheus text, but METRICS_FORMAT={metrics_format}: set METRICS_FORMAT=prometheus"
            " for this process, or drop --metrics-port"
        )
    if not 0 <= port <= 65535:
        raise MetricsServerError(f"--metrics-port must be between 0 and 65535 (0: any free port), not {port}")
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsServerError(
                f"port {port} on {host} is in use (--metrics-port); stop whatever listens there or choose another port"
            ) from exc
        raise MetricsServerError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or type(exc).__name__}); "
            "check --metrics-host and --metrics-port"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    bound_port = server.server_address[1]
    return MetricsServer(f"http://{host}:{bound_port}{METRICS_PATH}", server, thread)


class _Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        """``HTTPServer.server_bind`` without its ``getfqdn(host)``: a reverse DNS lookup can take seconds,
        and nothing here uses the name."""
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = "koinonia-metrics"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == ALIVE_PATH:
            self._answer(200, "alive\n", _TEXT)
        elif path != METRICS_PATH:
            self._answer(404, f"not found: {path}; this server answers GET {METRICS_PATH} and GET {ALIVE_PATH}\n", _TEXT)
        else:
            self._metrics()

    def _metrics(self) -> None:
        try:
            reply = scrape()
        except ApiError as exc:  # another METRICS_FORMAT (refused at start; kept for a changed environment)
            self._answer(exc.status, exc.message + "\n", _TEXT)
            return
        except Exception:  # a bug must cost one scrape, not the worker
            logger.exception("metrics not rendered")
            self._answer(500, "metrics not rendered; see this process's log\n", _TEXT)
            return
        content_type = (reply.headers or {}).get("Content-Type", _TEXT)
        self._answer(reply.status, reply.text or "", content_type)

    def _answer(self, status: int, text: str, content_type: str) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access lines (see the module's docstring); errors http.server reports go to the debug log."""
        logger.debug("metrics server: " + format, *args)
