"""``koinonia dev``: the whole local stack in one command, stopped by one Ctrl-C.

What it runs, in order:

1. PostgreSQL and Redis: the ones ``DATABASE_URL`` / ``REDIS_URL`` name (environment or ``.env``), or
   embedded ones whose data stays in ``<home>/pgdata`` and ``<home>/redis`` between runs. An
   ``ENCRYPTION_KEY`` is generated once into ``<home>/secrets.env`` when none is configured.
2. Migrations, then the demo church (its API key is printed once, in the banner).
3. The Telnyx sandbox (``python -m infra.telnyx_sandbox``) on ``--base-port``.
4. The local SES: moto's server (``python -m moto.server``) on base+7, unless ``SES_ENDPOINT_URL`` is
   configured; the children get its URL, ``MAIL_FROM`` (``church@koinonia.local`` unless configured) and
   fake AWS credentials, and the From address is verified in it at every start (moto keeps nothing).
5. Every ``functions/<name>/main.py`` under functions-framework, each in its own process on its own
   port (``health`` on base+1), logging to ``<home>/logs/<name>.log``; then the continuous consumer
   (``koinonia consume --forever``), its ``GET /metrics`` on base+89 (with ``METRICS_FORMAT=prometheus``).
6. A scheduler thread that POSTs to the scheduled functions as the cloud scheduler would.

moto runs as a child process like the sandbox rather than as moto's ``ThreadedMotoServer`` inside this
process: it is stopped by the same Ctrl-C path (its own process group, SIGTERM then SIGKILL), logs to its
own file, and its imports and request handling stay out of the process that supervises everything else.

Every child runs in its own process group; on SIGINT/SIGTERM each group gets SIGTERM, then SIGKILL
after a grace period, and is reaped; then the embedded Redis and PostgreSQL are stopped. Nothing
secret goes to the terminal or the logs except the demo API key, once, in the banner.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dotenv import dotenv_values

from common import constants
from common.config import ConfigurationError, load_settings
from common.db.migrate import MigrationError, migrate
from common.db.pool import DatabaseUnavailable, Pool
from common.seed import DEMO_MEMBERS, DemoChurch, seed_demo
from infra.embedded import EmbeddedServiceError, PostgresProcess, RedisProcess

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"

READY_LINE = "koinonia dev: ready (Ctrl-C stops everything)"
SANDBOX_READY_PREFIX = "telnyx-sandbox listening on "
SANDBOX_API_KEY = "KEY_sandbox"

# Seconds between invocations, as the cloud scheduler runs them in production. An entry whose
# function folder does not exist yet is skipped with one line.
SCHEDULES: dict[str, float] = {"retry-scheduler": 60.0, "dlq-drain": 3600.0}
SCHEDULE_SCALE_ENV = "KOINONIA_DEV_SCHEDULE_SCALE"  # e.g. 0.01: every interval 100 times shorter
SCHEDULER_SOURCE = "koinonia.dev-scheduler"
SCHEDULE_PATH = "/events"

# Port layout: sandbox on base, these functions on base+1, base+2, ... (so health is always base+1), the
# local SES (moto) after them on base+7, any other function after that in name order, the consumer's metrics
# on base+89 and embedded Redis on base+90 (fixed, far above the functions, so a new function never moves them).
FUNCTION_ORDER: tuple[str, ...] = ("health", "send", "queue-consume", "retry-scheduler", "dlq-drain", "webhooks")
SES_PORT_OFFSET = len(FUNCTION_ORDER) + 1
CONSUMER_METRICS_PORT_OFFSET = 89
REDIS_PORT_OFFSET = 90
METRICS_FORMAT_ENV = "METRICS_FORMAT"
DEV_MAIL_FROM = "church@koinonia.local"
# The children's AWS credentials when moto is ours: fake, so nothing a developer has configured reaches AWS.
FAKE_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}

start_timeout_s = 60.0  # per service: sandbox line, every function answering
stop_grace_s = 8.0  # SIGTERM -> SIGKILL
_poll_s = 0.05
_tail_lines = 15


class StartupError(Exception):
    """The stack could not start; ``str(err)`` is one line saying what went wrong and what to do."""

    def __init__(self, message: str, details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived while the stack was starting."""


def _say(line: str) -> None:
    print(line, flush=True)


# -- scheduler ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledTarget:
    name: str
    url: str  # full URL that is POSTed to
    interval_s: float


@dataclass(frozen=True)
class ScheduleResult:
    name: str
    status: int | None  # HTTP status; None when the function did not answer
    detail: str
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        outcome = f"HTTP {self.status}" if self.status is not None else f"no answer ({self.detail})"
        return f"scheduler: {self.name} -> {outcome} in {self.elapsed_ms:.0f} ms"


def schedule_scale(environ: Mapping[str, str] | None = None) -> float:
    """The factor every interval is multiplied by (``KOINONIA_DEV_SCHEDULE_SCALE``, default 1)."""
    raw = (os.environ if environ is None else environ).get(SCHEDULE_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale < 1e6:
        raise StartupError(f"{SCHEDULE_SCALE_ENV} must be a positive number such as 0.01 (got {raw!r})")
    return scale


def scheduled_targets(
    function_urls: Mapping[str, str],
    *,
    schedules: Mapping[str, float] = SCHEDULES,
    scale: float = 1.0,
) -> tuple[list[ScheduledTarget], list[str]]:
    """Targets for the functions that exist (``function_urls``: name -> base URL), and the names skipped."""
    targets: list[ScheduledTarget] = []
    skipped: list[str] = []
    for name, interval_s in schedules.items():
        base = function_urls.get(name)
        if base is None:
            skipped.append(name)
        else:
            targets.append(ScheduledTarget(name, base.rstrip("/") + SCHEDULE_PATH, interval_s * scale))
    return targets, skipped


class DevScheduler:
    """Invokes each target every ``interval_s``, first one interval after creation.

    ``tick(now)`` runs whatever is due at ``now`` and returns what happened, so a test can drive it
    with its own clock; ``start()`` runs ticks on a daemon thread until ``stop()``.
    """

    def __init__(
        self,
        targets: Iterable[ScheduledTarget],
        *,
        on_result: Callable[[ScheduleResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = 30.0,
    ) -> None:
        self.targets = list(targets)
        self._on_result = on_result
        self._clock = clock
        started = clock()
        self._next_due: dict[str, float] = {t.name: started + t.interval_s for t in self.targets}
        self._client = httpx.Client(timeout=timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until the next invocation (0 if one is overdue); None without targets."""
        if not self._next_due:
            return None
        now = self._clock() if now is None else now
        return max(0.0, min(self._next_due.values()) - now)

    def tick(self, now: float | None = None) -> list[ScheduleResult]:
        now = self._clock() if now is None else now
        results: list[ScheduleResult] = []
        for target in self.targets:
            due = self._next_due[target.name]
            if due > now:
                continue
            result = self.invoke(target)
            results.append(result)
            if self._on_result is not None:
                self._on_result(result)
            following = due + target.interval_s
            # A tick that came late (a slow call, a suspended laptop) runs once, not once per missed slot.
            self._next_due[target.name] = following if following > now else now + target.interval_s
        return results

    def invoke(self, target: ScheduledTarget) -> ScheduleResult:
        started = time.perf_counter()
        try:
            # A run loops for its budget (the retry-scheduler): keep it inside this client's timeout.
            budget_s = min(20.0, target.interval_s * 0.5)
            payload = {"source": SCHEDULER_SOURCE, "schedule": target.name, "budget_s": budget_s}
            response = self._client.post(target.url, json=payload)
        except httpx.HTTPError as exc:
            return ScheduleResult(target.name, None, type(exc).__name__, _ms_since(started))
        return ScheduleResult(target.name, response.status_code, response.reason_phrase, _ms_since(started))

    def start(self) -> None:
        if self._thread is None and self.targets:
            self._thread = threading.Thread(target=self._run, name="dev-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35.0)
            self._thread = None
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.due_in()):
            self.tick()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# -- processes -----------------------------------------------------------------------------------------


@dataclass
class Child:
    """A subprocess we started, in its own process group (pgid == pid)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str
    log_file: IO[bytes] | None = None
    exit_reported: bool = False
    threads: list[threading.Thread] = field(default_factory=list)


def discover_functions(functions_dir: Path = FUNCTIONS_DIR) -> list[str]:
    """Folder names that hold a ``main.py``, in port order."""
    found = sorted(p.parent.name for p in functions_dir.glob("*/main.py"))
    known = [name for name in FUNCTION_ORDER if name in found]
    return known + [name for name in found if name not in FUNCTION_ORDER]


def function_ports(names: Iterable[str], base_port: int) -> dict[str, int]:
    """Known functions keep their port whatever else exists; others follow in name order."""
    ports: dict[str, int] = {}
    extra = SES_PORT_OFFSET + 1
    for name in sorted(names):
        if name in FUNCTION_ORDER:
            ports[name] = base_port + 1 + FUNCTION_ORDER.index(name)
        else:
            ports[name] = base_port + extra
            extra += 1
    return ports


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers themselves do
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _require_free(port: int, what: str) -> None:
    if not port_is_free(port):
        raise StartupError(
            f"port {port} (for {what}) is in use; stop whatever listens there "
            "(an earlier `koinonia dev`?) or run with --base-port N"
        )


def _tail(path: Path, lines: int = _tail_lines) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_children(children: list[Child], grace_s: float, hurry: threading.Event) -> None:
    """SIGTERM every group, wait up to ``grace_s`` (less once ``hurry`` is set), SIGKILL, reap."""
    for child in children:
        _signal_group(child.process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        while child.process.poll() is None and time.monotonic() < deadline and not hurry.is_set():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=_poll_s * 2)
    for child in children:
        # Also catches stragglers of a leader that already exited (e.g. orphaned workers).
        _signal_group(child.process, signal.SIGKILL)
        child.process.wait()
        for thread in child.threads:
            thread.join(timeout=5.0)
        if child.log_file is not None:
            child.log_file.close()


# -- the stack ---------------------------------------------------------------------------------------------


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def _queues_enabled(value: str | None) -> bool:
    return (value or "true").strip().lower() not in ("false", "0", "no", "off")


def _where(url: str) -> str:
    """host:port of a URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or parts.path or "?")


class DevStack:
    def __init__(self, home: Path, base_port: int, *, functions_dir: Path = FUNCTIONS_DIR) -> None:
        self.home = home
        self.base_port = base_port
        self.functions_dir = functions_dir
        self.logs = home / "logs"
        self.stopping = threading.Event()  # a signal asked us to stop
        self.hurry = threading.Event()  # a second signal: skip the grace period
        self.postgres: PostgresProcess | None = None
        self.redis: RedisProcess | None = None
        self.sandbox: Child | None = None
        self.ses: Child | None = None  # moto, when SES_ENDPOINT_URL is not configured
        self.ses_endpoint: str | None = None
        self.functions: list[Child] = []
        self.scheduler: DevScheduler | None = None
        self.scheduler_log: IO[str] | None = None
        self.env: dict[str, str] = {}
        self.demo: DemoChurch | None = None
        self.ports: dict[str, int] = {}
        self.sandbox_signing_key: str | None = None
        self.consumer_metrics_port: int | None = None  # None: METRICS_FORMAT is not prometheus, nothing to serve

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        if not 1024 <= self.base_port <= 65535 - REDIS_PORT_OFFSET:
            raise StartupError(f"--base-port must be between 1024 and {65535 - REDIS_PORT_OFFSET}")
        names = discover_functions(self.functions_dir)
        if not names:
            raise StartupError(f"no functions found in {self.functions_dir} (expected functions/<name>/main.py)")
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        _say(f"koinonia dev: home {self.home} (data, secrets, logs)")
        scale = schedule_scale()
        # Every port is checked before anything starts, so a clash fails in a second, not after PostgreSQL.
        ports = function_ports(names, self.base_port)
        self.ports = ports
        _require_free(self.base_port, "the Telnyx sandbox")
        for name in names:
            _require_free(ports[name], f"function {name}")
        configured = _read_env_file(Path(".env"))
        configured.update({k: v for k, v in os.environ.items() if v != ""})
        if self._embedded_redis_needed(configured):
            _require_free(self.base_port + REDIS_PORT_OFFSET, "the embedded redis-server")
        if not configured.get(constants.SES_ENDPOINT_URL_ENV):
            _require_free(self.base_port + SES_PORT_OFFSET, "the local SES (moto)")
        if (configured.get(METRICS_FORMAT_ENV) or "prometheus") == "prometheus":
            self.consumer_metrics_port = self.base_port + CONSUMER_METRICS_PORT_OFFSET
            _require_free(self.consumer_metrics_port, "the consumer's metrics")
        self._settings(configured)
        self._checkpoint()
        self._database()
        self._checkpoint()
        self._start_sandbox()
        self._checkpoint()
        self._start_ses(configured)
        self._checkpoint()
        self._start_functions(names, ports)
        self._start_consumer()
        self._start_scheduler(scale)

    def _checkpoint(self) -> None:
        if self.stopping.is_set():
            raise _Interrupted

    @staticmethod
    def _embedded_redis_needed(configured: Mapping[str, str]) -> bool:
        return not configured.get(constants.REDIS_URL_ENV) and _queues_enabled(configured.get(constants.ENABLE_QUEUES_ENV))

    def _settings(self, configured: Mapping[str, str]) -> None:
        """The settings every child gets: ``configured`` (environment over ``.env``) plus what we start or generate."""
        env: dict[str, str] = {}

        database_url = configured.get(constants.DATABASE_URL_ENV)
        if database_url:
            _say("postgresql: using DATABASE_URL")
            env[constants.DATABASE_URL_ENV] = database_url
        else:
            pgdata = self.home / "pgdata"
            first = "" if (pgdata / "PG_VERSION").exists() else " (first start: creating the cluster takes a few seconds)"
            _say(f"postgresql: starting embedded server, data in {pgdata}{first}")
            self.postgres = PostgresProcess(pgdata)
            try:
                with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" is noise here
                    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                    self.postgres.start()
            except EmbeddedServiceError as exc:
                raise StartupError(str(exc)) from exc
            except Exception as exc:  # pgserver raises CalledProcessError, TimeoutExpired, OSError ...
                raise StartupError(
                    f"embedded PostgreSQL did not start ({type(exc).__name__}); see {pgdata / 'log'}, "
                    "or set DATABASE_URL to a running server"
                ) from exc
            env[constants.DATABASE_URL_ENV] = self.postgres.url
            _say("postgresql: running (unix socket, no TCP port)")

        redis_url = configured.get(constants.REDIS_URL_ENV)
        if redis_url:
            _say(f"redis: using REDIS_URL ({_where(redis_url)})")
            env[constants.REDIS_URL_ENV] = redis_url
        elif not self._embedded_redis_needed(configured):
            _say("redis: not started (ENABLE_QUEUES=false: messages are sent inline)")
        else:
            port = self.base_port + REDIS_PORT_OFFSET
            redis_dir = self.home / "redis"
            self.redis = RedisProcess(redis_dir, port=port, persist=True)
            try:
                self.redis.start()
            except EmbeddedServiceError as exc:
                raise StartupError(str(exc)) from exc
            env[constants.REDIS_URL_ENV] = self.redis.url
            _say(f"redis: embedded redis-server on 127.0.0.1:{port}, data in {redis_dir}")

        for name in (constants.ENCRYPTION_KEY_ENV, constants.LOOKUP_KEY_ENV):
            if not configured.get(name):
                env[name] = self._home_secret_key(name)
        env[constants.TELNYX_API_KEY_ENV] = configured.get(constants.TELNYX_API_KEY_ENV) or SANDBOX_API_KEY
        if configured.get(constants.TELNYX_BASE_URL_ENV):
            env[constants.TELNYX_BASE_URL_ENV] = configured[constants.TELNYX_BASE_URL_ENV]
            _say("telnyx: using TELNYX_BASE_URL (the sandbox still starts, unused by the functions)")
        else:
            env[constants.TELNYX_BASE_URL_ENV] = f"http://127.0.0.1:{self.base_port}/v2"
            # The sandbox signs its webhooks with a key made for this run; the webhooks function checks
            # them with its public half, exactly as with Telnyx's account key.
            signing = Ed25519PrivateKey.generate()
            self.sandbox_signing_key = base64.b64encode(signing.private_bytes_raw()).decode()
            if not configured.get(constants.TELNYX_PUBLIC_KEY_ENV):
                env[constants.TELNYX_PUBLIC_KEY_ENV] = base64.b64encode(signing.public_key().public_bytes_raw()).decode()
        if "webhooks" in self.ports and not configured.get(constants.TELNYX_WEBHOOK_URL_ENV):
            env[constants.TELNYX_WEBHOOK_URL_ENV] = f"http://127.0.0.1:{self.ports['webhooks']}/webhooks/telnyx"
        env[constants.MAIL_FROM_ENV] = configured.get(constants.MAIL_FROM_ENV) or DEV_MAIL_FROM
        if configured.get(constants.SES_ENDPOINT_URL_ENV):
            self.ses_endpoint = configured[constants.SES_ENDPOINT_URL_ENV]
        else:
            self.ses_endpoint = env[constants.SES_ENDPOINT_URL_ENV] = f"http://127.0.0.1:{self.base_port + SES_PORT_OFFSET}"
            env.update(FAKE_AWS_CREDENTIALS)
        env[constants.APP_ENV_ENV] = "development"
        self.env = env

        os.environ.update(env)  # validate exactly what the functions will read
        try:
            load_settings()
        except ConfigurationError as exc:
            raise StartupError(f"{exc}; fix it in .env or the environment") from exc

    def _home_secret_key(self, name: str) -> str:
        secrets_path = self.home / "secrets.env"
        key = _read_env_file(secrets_path).get(name)
        if key:
            _say(f"{name}: from {secrets_path}")
            return key
        key = base64.b64encode(os.urandom(32)).decode()
        fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write("# generated by koinonia dev; keep it: data at rest is encrypted and looked up with it\n")
            handle.write(f"{name}={key}\n")
        _say(f"{name}: generated, kept in {secrets_path}")
        return key

    def _database(self) -> None:
        pool = Pool(load_settings().database, application_name="koinonia-dev")
        try:
            migrate(pool, progress=_say)
            self.demo = seed_demo(pool)
        except (DatabaseUnavailable, MigrationError) as exc:
            raise StartupError(f"{exc}") from exc
        finally:
            pool.close()
        _say(f"demo church {self.demo.church_id} seeded ({self.demo.member_count} members in one group)")

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("WORKERS", "1")
        env.setdefault("THREADS", "8")
        return env

    def _start_sandbox(self) -> None:
        log_path = self.logs / "telnyx-sandbox.log"
        log_file = log_path.open("wb")
        command = [sys.executable, "-m", "infra.telnyx_sandbox", "--host", "127.0.0.1", "--port", str(self.base_port)]
        # The key the functions send, the webhook signing key and where members' texts go: a file, so
        # the secrets stay out of `ps`.
        config: dict[str, str] = {"api_key": self.env[constants.TELNYX_API_KEY_ENV]}
        if self.sandbox_signing_key:
            config["webhook_signing_key"] = self.sandbox_signing_key
        if self.env.get(constants.TELNYX_WEBHOOK_URL_ENV):
            config["inbound_webhook_url"] = self.env[constants.TELNYX_WEBHOOK_URL_ENV]
        config_path = self.home / "telnyx-sandbox.json"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        command += ["--config", str(config_path)]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=self._child_env(),
            start_new_session=True,
        )
        child = Child("telnyx-sandbox", process, log_path, f"http://127.0.0.1:{self.base_port}", log_file)
        self.sandbox = child
        listening = threading.Event()
        found: list[str] = []

        def copy_output() -> None:
            assert process.stdout is not None
            for raw in iter(process.stdout.readline, b""):
                log_file.write(raw)
                log_file.flush()
                line = raw.decode("utf-8", errors="replace").strip()
                if not listening.is_set() and line.startswith(SANDBOX_READY_PREFIX):
                    found.append(line.removeprefix(SANDBOX_READY_PREFIX).strip())
                    listening.set()
            process.stdout.close()

        reader = threading.Thread(target=copy_output, name="sandbox-output", daemon=True)
        reader.start()
        child.threads.append(reader)
        deadline = time.monotonic() + start_timeout_s
        while not listening.wait(_poll_s * 2):
            self._checkpoint()
            if process.poll() is not None:
                reader.join(timeout=2.0)
                raise StartupError(
                    f"the Telnyx sandbox exited at start (code {process.returncode}); see {log_path}",
                    _tail(log_path),
                )
            if time.monotonic() > deadline:
                raise StartupError(
                    f"the Telnyx sandbox printed no listening line within {start_timeout_s:g}s; see {log_path}",
                    _tail(log_path),
                )
        child.url = found[0].rstrip("/")
        _say(f"telnyx sandbox: listening on {child.url}")

    def _start_ses(self, configured: Mapping[str, str]) -> None:
        """moto's server as the local SES (unless SES_ENDPOINT_URL names one), with MAIL_FROM verified in it."""
        mail_from = self.env[constants.MAIL_FROM_ENV]
        if configured.get(constants.SES_ENDPOINT_URL_ENV):
            _say(f"mail: using SES_ENDPOINT_URL ({_where(self.ses_endpoint or '')}); verify MAIL_FROM {mail_from} there")
            return
        port = self.base_port + SES_PORT_OFFSET
        log_path = self.logs / "ses-moto.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=self._child_env(),
            start_new_session=True,
        )  # fmt: skip
        child = Child("local SES (moto)", process, log_path, f"http://127.0.0.1:{port}", log_file)
        self.ses = child
        deadline = time.monotonic() + start_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while not _answers_moto(client, child.url):
                self._checkpoint()
                if process.poll() is not None:
                    raise StartupError(
                        f"the local SES (moto) exited at start (code {process.returncode}); see {log_path}"
                        " (moto comes with the dev extras: pip install -e '.[local,dev]')",
                        _tail(log_path),
                    )
                if time.monotonic() > deadline:
                    raise StartupError(f"the local SES (moto) did not answer within {start_timeout_s:g}s; see {log_path}",
                                       _tail(log_path))  # fmt: skip
                self.stopping.wait(_poll_s * 2)
        _verify_sender(child.url, load_settings().ses_region, mail_from)
        _say(f"local SES (moto): listening on {child.url}; MAIL_FROM {mail_from} verified")

    def _start_functions(self, names: list[str], ports: Mapping[str, int]) -> None:
        env = self._child_env()
        for name in names:
            port = ports[name]
            log_path = self.logs / f"{name}.log"
            log_file = log_path.open("wb")
            command = [
                *_functions_framework(),
                f"--target={name.replace('-', '_')}",
                f"--source={self.functions_dir / name / 'main.py'}",
                "--host=127.0.0.1",
                f"--port={port}",
            ]
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            self.functions.append(Child(name, process, log_path, f"http://127.0.0.1:{port}", log_file))
            _say(f"function {name}: starting on port {port} (log {log_path})")
        self._wait_for_functions()

    def _start_consumer(self) -> None:
        """The cloud wakes queue-consume per enqueue; locally one worker consumes continuously."""
        log_path = self.logs / "consumer.log"
        log_file = log_path.open("wb")
        command = [sys.executable, "-m", "common.cli", "consume", "--forever"]
        metrics = ""  # its sent/failed counts and carrier latencies, scrapeable like the functions'
        if self.consumer_metrics_port is not None:
            command += ["--metrics-port", str(self.consumer_metrics_port)]
            metrics = f"http://127.0.0.1:{self.consumer_metrics_port}/metrics"
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=self._child_env(),
            start_new_session=True,
        )  # fmt: skip
        shown = f"{metrics}  (continuous queue-consume worker)".lstrip()
        self.functions.append(Child("consumer", process, log_path, shown, log_file))
        _say(f"consumer: running continuously (log {log_path})" + (f"; metrics on {metrics}" if metrics else ""))

    def _wait_for_functions(self) -> None:
        pending = list(self.functions)
        deadline = time.monotonic() + start_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while pending:
                self._checkpoint()
                for child in list(pending):
                    if child.process.poll() is not None:
                        raise StartupError(
                            f"function {child.name} exited at start (code {child.process.returncode}); "
                            f"fix the error in {child.log_path} (last lines above) and run `koinonia dev` again",
                            _tail(child.log_path),
                        )
                    if _answers(client, child):
                        pending.remove(child)
                        _say(f"function {child.name}: ready at {child.url}")
                if pending and time.monotonic() > deadline:
                    names = ", ".join(child.name for child in pending)
                    raise StartupError(
                        f"function(s) {names} did not answer within {start_timeout_s:g}s; see {self.logs}",
                        _tail(pending[0].log_path),
                    )
                if pending:
                    self.stopping.wait(_poll_s * 2)
            health = next((child for child in self.functions if child.name == "health"), None)
            if health is not None:
                self._warm_up(client, health, deadline)

    def _warm_up(self, client: httpx.Client, health: Child, deadline: float) -> None:
        """Until /ready answers 200 the first request may still be opening its connections; after it, it has."""
        while True:
            self._checkpoint()
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{health.url}/ready").status_code == 200:
                    client.get(f"{health.url}/health")  # opens the Redis connection too
                    return
            if health.process.poll() is not None or time.monotonic() > deadline:
                raise StartupError(
                    f"the health function cannot reach PostgreSQL (GET {health.url}/ready); see {health.log_path}",
                    _tail(health.log_path),
                )
            self.stopping.wait(_poll_s * 2)

    def _start_scheduler(self, scale: float) -> None:
        urls = {child.name: child.url for child in self.functions}
        targets, skipped = scheduled_targets(urls, scale=scale)
        for name in skipped:
            _say(f"scheduler: {name} skipped (no functions/{name}/main.py yet)")
        self.scheduler_log = (self.logs / "scheduler.log").open("a", encoding="utf-8")
        log = self.scheduler_log

        def report(result: ScheduleResult) -> None:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {result.describe()}\n")
            log.flush()
            if not result.ok:
                _say(result.describe())

        self.scheduler = DevScheduler(targets, on_result=report)
        self.scheduler.start()

    # -- run -----------------------------------------------------------------------------------------

    def banner(self) -> None:
        assert self.demo is not None
        width = max([len("telnyx sandbox"), *(len(c.name) for c in self.functions)]) + 2
        _say("")
        _say("koinonia dev: the stack is up")
        if self.sandbox is not None:
            _say(f"  {'telnyx sandbox':<{width}} {self.sandbox.url}/v2")
        if self.ses_endpoint is not None:
            what = "moto" if self.ses is not None else "SES_ENDPOINT_URL"
            _say(f"  {'local SES':<{width}} {self.ses_endpoint}  ({what}; mail from {self.env[constants.MAIL_FROM_ENV]})")
        for child in self.functions:
            _say(f"  {child.name:<{width}} {child.url}")
        if self.scheduler is not None and self.scheduler.targets:
            every = ", ".join(f"{t.name} every {t.interval_s:g}s" for t in self.scheduler.targets)
            _say(f"  {'scheduler':<{width}} {every}")
        _say(f"  {'logs':<{width}} {self.logs}")
        _say(f"  {'demo church':<{width}} {self.demo.church_id}")
        _say(f"  {'demo API key':<{width}} {self.demo.api_key}  (shown once; a new one is issued every start)")
        health = next((c for c in self.functions if c.name == "health"), None)
        send = next((c for c in self.functions if c.name == "send"), None)
        if send is not None:
            body = json.dumps({"channel": "sms", "groups": [self.demo.group_id], "text": "Service starts at 10am Sunday"})
            _say(
                f"  try: curl -s -X POST {send.url}/messages -H 'Authorization: Bearer {self.demo.api_key}'"
                f" -H 'Content-Type: application/json' -d '{body}'"
            )
        if send is not None:
            _say(f"  then: curl -s '{send.url}/messages?limit=5' -H 'Authorization: Bearer {self.demo.api_key}'"
                 "   (queued -> sent -> delivered, by the sandbox's webhooks)")  # fmt: skip
        if self.sandbox is not None and "webhooks" in self.ports:
            stop = json.dumps({"from": DEMO_MEMBERS[0][2], "to": self.demo.sender, "text": "STOP"})
            _say(f"  a member texts STOP: curl -s -X POST {self.sandbox.url}/_sandbox/inbound -d '{stop}'")
        if send is not None and self.ses_endpoint is not None:
            mail = json.dumps({
                "channel": "mail", "to": ["ruth@example.org", "samuel@example.org"], "subject": "Sunday service",
                "text": "Service starts at 10am Sunday", "html": "<p>Service starts at <b>10am</b> Sunday</p>",
            })  # fmt: skip
            _say(
                f"  a mail: curl -s -X POST {send.url}/messages -H 'Authorization: Bearer {self.demo.api_key}'"
                f" -H 'Content-Type: application/json' -d '{mail}'"
            )
            koinonia = Path(sys.executable).parent / "koinonia"
            _say(f"  mail sent: {koinonia} mail sent --endpoint {self.ses_endpoint}   (--show: recipients unmasked)")
        if health is not None:
            _say(f"  then: curl -s {health.url}/health/detailed")
        _say(READY_LINE)

    def watch(self) -> None:
        """Until a signal: report (once) any child that exits on its own."""
        while not self.stopping.wait(0.5):
            for child in [*self.functions, *([self.sandbox] if self.sandbox else []), *([self.ses] if self.ses else [])]:
                if not child.exit_reported and child.process.poll() is not None:
                    child.exit_reported = True
                    _say(
                        f"koinonia dev: {child.name} exited (code {child.process.returncode}); "
                        f"see {child.log_path}; the rest keeps running (Ctrl-C stops everything)"
                    )

    # -- stop ------------------------------------------------------------------------------------------

    def started_summary(self) -> str:
        parts = ["functions"] if self.functions else []
        parts += ["sandbox"] if self.sandbox else []
        parts += ["local SES"] if self.ses else []
        parts += ["embedded Redis"] if self.redis else []
        parts += ["embedded PostgreSQL"] if self.postgres else []
        return ", ".join(parts) or "nothing was started"

    def stop(self) -> list[str]:
        """Stop everything started, newest first; return the problems met (empty on a clean stop)."""
        problems: list[str] = []
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.scheduler_log is not None:
            self.scheduler_log.close()
        children = [*self.functions, *([self.ses] if self.ses else []), *([self.sandbox] if self.sandbox else [])]
        if children:
            stop_children(children, stop_grace_s, self.hurry)
        if self.redis is not None:
            try:
                self.redis.stop()
            except (subprocess.TimeoutExpired, OSError) as exc:
                problems.append(f"redis-server did not stop cleanly ({type(exc).__name__})")
                self.redis.kill()
        if self.postgres is not None:
            problems += self._stop_postgres(self.postgres)
        return problems

    def _stop_postgres(self, postgres: PostgresProcess) -> list[str]:
        pgdata = postgres.data_dir
        pid = _postmaster_pid(pgdata)
        try:
            postgres.stop()
        except Exception as exc:  # pg_ctl failures are suppressed inside; anything else still gets the fallback
            _say(f"postgresql: pg_ctl stop failed ({type(exc).__name__})")
        if pid is None or not _postmaster_running(pgdata, pid):
            return []
        # pg_ctl could not stop it (e.g. it lost access to the data folder): signal the postmaster
        # directly, fast shutdown first, as pg_ctl -m fast would.
        _say("postgresql: pg_ctl did not stop it; signalling the server directly")
        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                return []
            except PermissionError:
                break
            deadline = time.monotonic() + stop_grace_s
            while _postmaster_running(pgdata, pid) and time.monotonic() < deadline and not self.hurry.is_set():
                time.sleep(_poll_s)  # not our child: nothing to wait on but its pid file and pid
            if not _postmaster_running(pgdata, pid):
                return []
        return [f"embedded PostgreSQL (pid {pid}) is still running; stop it with: kill {pid}"]


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
        return int(first.strip())
    except (OSError, ValueError):
        return None


def _postmaster_running(pgdata: Path, pid: int) -> bool:
    """PostgreSQL removes postmaster.pid on a clean shutdown; a pid that is gone is not running either."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(client: httpx.Client, child: Child) -> bool:
    try:
        if child.name == "health":
            return client.get(f"{child.url}/alive").status_code == 200
        client.get(f"{child.url}/")
    except httpx.HTTPError:
        return False
    return True


def _answers_moto(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/moto-api/data.json").status_code == 200
    except httpx.HTTPError:
        return False


def _verify_sender(endpoint: str, region: str, mail_from: str) -> None:
    """moto, like SES, sends only from a verified identity, and keeps nothing between starts: verify at each."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    address = parseaddr(mail_from)[1] or mail_from  # "Grace Church <news@church.org>" -> news@church.org
    client = boto3.session.Session().client("ses", region_name=region, endpoint_url=endpoint)
    try:
        client.verify_email_identity(EmailAddress=address)
    except (BotoCoreError, ClientError) as exc:
        raise StartupError(f"could not verify MAIL_FROM in the local SES at {endpoint} ({type(exc).__name__})") from exc
    finally:
        client.close()


def _functions_framework() -> list[str]:
    beside = Path(sys.executable).parent / "functions-framework"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "functions_framework"]


# -- entry point ---------------------------------------------------------------------------------------------


def run_dev_stack(args: argparse.Namespace) -> int:
    home = Path(str(getattr(args, "home", ".koinonia"))).expanduser().resolve()
    stack = DevStack(home, int(getattr(args, "base_port", 8080)))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stack.stopping.is_set():
            stack.hurry.set()
            return
        stack.stopping.set()

    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            previous[stop_signal] = signal.getsignal(stop_signal)
            signal.signal(stop_signal, on_signal)

    code = 0
    try:
        try:
            stack.start()
        except _Interrupted:
            _say("koinonia dev: interrupted while starting; stopping what was started")
        except StartupError as exc:
            for line in exc.details:
                print(f"    {line}", file=sys.stderr, flush=True)
            _say("koinonia dev: start failed; stopping what was started")
            print(f"koinonia dev: {exc}", file=sys.stderr, flush=True)
            code = 1
        except Exception as exc:  # a bug or an unexpected environment: still stop what was started
            traceback.print_exc()
            _say("koinonia dev: start failed; stopping what was started")
            print(
                f"koinonia dev: unexpected {type(exc).__name__} while starting (traceback above); "
                f"see {stack.logs} and report it if it persists",
                file=sys.stderr,
                flush=True,
            )
            code = 1
        else:
            stack.banner()
            stack.watch()
            _say(f"koinonia dev: stopping ({stack.started_summary()})")
    finally:
        problems = stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for problem in problems:
        print(f"koinonia dev: {problem}", file=sys.stderr, flush=True)
    if code == 0 and problems:
        code = 1
    _say("koinonia dev: stopped" if code == 0 else "koinonia dev: stopped after an error")
    return code
