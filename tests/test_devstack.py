"""``koinonia dev``: the fresh-machine path end to end, restart persistence, start failures, the scheduler.

The end-to-end tests run the real command in a subprocess with no DATABASE_URL / REDIS_URL, so it
starts embedded PostgreSQL (pgserver) and redis-server itself, and they check that Ctrl-C (SIGINT)
leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from common import constants
from common.mail import sent_mail
from infra.devstack import (
    CONSUMER_METRICS_PORT_OFFSET,
    READY_LINE,
    REDIS_PORT_OFFSET,
    SCHEDULE_SCALE_ENV,
    SCHEDULER_SOURCE,
    DevScheduler,
    DevStack,
    ScheduledTarget,
    StartupError,
    function_ports,
    port_is_free,
    schedule_scale,
    scheduled_targets,
)

KOINONIA = Path(sys.executable).parent / "koinonia"
READY_TIMEOUT_S = 150.0
STOP_TIMEOUT_S = 60.0
# Everything the stack would otherwise take from the developer's environment: the fresh machine has none.
CLEARED_ENV = (
    constants.DATABASE_URL_ENV,
    constants.REDIS_URL_ENV,
    constants.ENCRYPTION_KEY_ENV,
    constants.ENCRYPTION_KEYS_OLD_ENV,
    constants.LOOKUP_KEY_ENV,
    constants.TELNYX_API_KEY_ENV,
    constants.TELNYX_BASE_URL_ENV,
    constants.TELNYX_PUBLIC_KEY_ENV,
    constants.APP_ENV_ENV,
    constants.ENABLE_QUEUES_ENV,
    constants.REDIS_KEY_PREFIX_ENV,
    constants.MAIL_FROM_ENV,
    constants.SES_ENDPOINT_URL_ENV,
    SCHEDULE_SCALE_ENV,
)


# -- helpers ------------------------------------------------------------------------------------------


def _free_base_port() -> int:
    """A base port whose whole layout (sandbox, functions, Redis) is free, outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 29000)
        wanted = [base, *range(base + 1, base + 12), base + CONSUMER_METRICS_PORT_OFFSET, base + REDIS_PORT_OFFSET]
        if all(port_is_free(port) for port in wanted):
            return base
    raise AssertionError("no free port range found")


class DevRun:
    """``koinonia dev`` in a subprocess; its output is read on a thread so the pipe never fills."""

    def __init__(self, home: Path, base_port: int, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        # The checks' latency budget (80 ms by default) is not under test here; parallel tests load the machine.
        env[constants.HEALTH_TIMEOUT_MS_ENV] = "3000"
        self.home = home
        self.process = subprocess.Popen(
            [str(KOINONIA), "dev", "--home", str(home), "--base-port", str(base_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,  # an empty folder: no developer .env
            env=env,
        )
        self.lines: list[str] = []
        self.collected: list[psutil.Process] = []  # what it started, killed on a test failure
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no ready line within {timeout_s:g}s; output so far:\n{self.output}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"koinonia dev ended before it was ready:\n{self.output}")
            if line == READY_LINE:
                self.started_processes()  # known from now on, so a failing test still cleans them up
                return

    def banner_value(self, pattern: str) -> str:
        match = re.search(pattern, self.output, re.MULTILINE)
        assert match, f"{pattern!r} not in the output:\n{self.output}"
        return match[1]

    def started_processes(self) -> list[psutil.Process]:
        started = psutil.Process(self.process.pid).children(recursive=True)
        postmaster_pid = self.home / "pgdata" / "postmaster.pid"
        started.append(psutil.Process(int(postmaster_pid.read_text().splitlines()[0])))
        self.collected.extend(proc for proc in started if proc not in self.collected)
        return started

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=10)
        return code

    def cleanup(self) -> None:
        """After a failed test: let the stack stop itself, then SIGKILL whatever of this run is left."""
        if self.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                self.collected.extend(psutil.Process(self.process.pid).children(recursive=True))
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for proc in [*self.collected, *_processes_mentioning(self.home)]:
            if _alive(proc):
                _kill_quietly(proc)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _kill_quietly(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        proc.kill()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _processes_mentioning(home: Path) -> list[psutil.Process]:
    """Live processes whose command line names the dev home (embedded PostgreSQL: ``postgres -D <home>/pgdata``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(home) in cmdline and proc.pid != os.getpid() and _alive(proc):
            found.append(proc)
    return found


@pytest.fixture
def dev_home() -> Iterator[Path]:
    """A home outside pytest's tmp folder.

    Running as root, pgserver runs PostgreSQL as an unprivileged user and opens the folders above the
    data folder to it; pytest resets ``/tmp/pytest-of-<user>`` to mode 700 whenever any pytest session
    starts, which would lock that user out of a data folder beneath it mid-test.
    """
    root = Path(tempfile.mkdtemp(prefix="koinonia-dev-test-"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dev_runs(dev_home: Path) -> Iterator[list[DevRun]]:
    runs: list[DevRun] = []
    yield runs
    for run in runs:
        try:
            run.cleanup()
        except Exception as exc:  # one run's cleanup failing must not skip the next one's
            print(f"cleanup of a koinonia dev run failed: {exc!r}", file=sys.stderr)


def _check_health(run: DevRun) -> dict:
    url = run.banner_value(r"curl -s (http://127\.0\.0\.1:\d+/health/detailed)\s*$")
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy", body
    assert body["checks"]["database"]["status"] == "ok", body
    assert body["checks"]["redis"]["status"] == "ok", body
    return body


def _until(condition, what: str, timeout_s: float = 30.0):
    """Poll an observable condition (the stack runs in other processes) until it holds or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _check_the_carrier_loop(run: DevRun, sandbox: str, api_key: str) -> None:
    """send → consumer → sandbox → signed webhook → webhooks function → delivered; then a member's STOP."""
    send_url = run.banner_value(r"try: curl -s -X POST (http://127\.0\.0\.1:\d+)/messages")
    stop_cmd = run.banner_value(r"a member texts STOP: curl -s -X POST (\S+/_sandbox/inbound -d .*)$")
    member = json.loads(stop_cmd.split(" -d ", 1)[1].strip("'"))["from"]
    auth = {"Authorization": f"Bearer {api_key}"}
    # One recipient: a conversational text, never held for quiet hours whatever the hour of the run.
    answer = httpx.post(f"{send_url}/messages", json={"channel": "sms", "to": member, "text": "See you Sunday"},
                        headers=auth, timeout=10)  # fmt: skip
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["recipients"][0]["message_id"]

    def delivered() -> bool:
        return httpx.get(f"{send_url}/messages/{message_id}", headers=auth, timeout=10).json()["status"] == "delivered"

    _until(delivered, "the sandbox's delivery receipt to reach the webhooks function")
    stop = httpx.post(f"{sandbox}/_sandbox/inbound", json={"from": member, "to": json.loads(
        stop_cmd.split(" -d ", 1)[1].strip("'"))["to"], "text": "STOP"}, timeout=10)  # fmt: skip
    assert stop.status_code == 200, stop.text

    def refused() -> bool:
        again = httpx.post(f"{send_url}/messages", json={"channel": "sms", "to": member, "text": "Still there?"},
                           headers=auth, timeout=10)  # fmt: skip
        return again.status_code == 422 and again.json()["error"]["code"] == "recipients_opted_out"

    _until(refused, "the member's STOP to opt them out")


def _check_mail(run: DevRun, api_key: str) -> None:
    """A mail: send → consumer → the local SES (moto), listed by ``sent_mail`` and ``koinonia mail sent``."""
    send_url = run.banner_value(r"a mail: curl -s -X POST (http://127\.0\.0\.1:\d+)/messages")
    endpoint = run.banner_value(r"mail sent: \S+ mail sent --endpoint (http://\S+)")
    body = {"channel": "mail", "to": "ann.lee@example.org", "subject": "Welcome", "text": "See you Sunday"}
    answer = httpx.post(f"{send_url}/messages", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert answer.status_code == 202, answer.text
    _until(lambda: sent_mail(endpoint), "the mail to reach the local SES")
    [mail] = sent_mail(endpoint, show_recipients=True)
    assert (mail["to"], mail["subject"], mail["source"]) == (["ann.lee@example.org"], "Welcome", "church@koinonia.local")
    listed = subprocess.run([str(KOINONIA), "mail", "sent", "--endpoint", endpoint], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "a***@example.org" in listed.stdout and "ann.lee" not in listed.stdout, listed


def _stop_and_check_nothing_left(run: DevRun) -> None:
    started = run.started_processes()
    names = {proc.name() for proc in started}
    assert len(started) >= 4, f"expected sandbox, function, redis-server and postgres; got {names}"
    assert any("redis" in name for name in names), names
    code = run.interrupt()
    assert code == 0, run.output
    assert run.lines[-1] == "koinonia dev: stopped", run.output
    left = [f"{proc.pid} {proc.name()}" for proc in started if _alive(proc)]
    assert left == [], f"still running after Ctrl-C: {left}"
    assert _processes_mentioning(run.home) == []


# -- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.smoke
@pytest.mark.timeout(300)
def test_dev_starts_everything_from_nothing_and_ctrl_c_leaves_no_process(tmp_path, dev_home, dev_runs):
    home = dev_home
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = DevRun(home, _free_base_port(), workdir)
    dev_runs.append(run)
    run.wait_ready()

    _check_health(run)
    sandbox = run.banner_value(r"^\s*telnyx sandbox\s+(http://\S+)/v2\s*$")
    assert httpx.get(f"{sandbox}/_sandbox/health", timeout=10).status_code == 200
    api_key = run.banner_value(r"demo API key\s+(\S+)")
    assert len(api_key) > 20
    _check_the_carrier_loop(run, sandbox, api_key)
    _check_mail(run, api_key)

    # The data stays in the home; the generated keys (sealing, lookups) are kept, and never printed or logged.
    assert (home / "pgdata" / "PG_VERSION").exists()
    secrets = (home / "secrets.env").read_text()
    keys = []
    for name in (constants.ENCRYPTION_KEY_ENV, constants.LOOKUP_KEY_ENV):
        key = re.search(rf"^{name}=(\S+)$", secrets, re.MULTILINE)
        assert key, secrets
        assert f"{name}: generated, kept in {home / 'secrets.env'}" in run.output, run.output
        assert key[1] not in run.output
        keys.append(key[1])
    assert keys[0] != keys[1]
    logs = {path.name: path.read_text(errors="replace") for path in (home / "logs").glob("*.log")}
    assert "health.log" in logs and "telnyx-sandbox.log" in logs, sorted(logs)
    for name, text in logs.items():
        assert not any(key in text for key in keys), name
        assert api_key not in text, name

    _stop_and_check_nothing_left(run)


@pytest.mark.smoke
@pytest.mark.timeout(400)
def test_restart_on_the_same_home_keeps_the_data(tmp_path, dev_home, dev_runs):
    home = dev_home
    workdir = tmp_path / "work"
    workdir.mkdir()
    base_port = _free_base_port()

    first = DevRun(home, base_port, workdir)
    dev_runs.append(first)
    first.wait_ready()
    church_id = first.banner_value(r"demo church\s+([0-9a-f-]{36})")
    assert re.search(r"schema up to date \((\d+) migrations, \1 applied now\)", first.output), first.output
    assert first.interrupt() == 0, first.output

    second = DevRun(home, base_port, workdir)
    dev_runs.append(second)
    second.wait_ready()
    assert second.banner_value(r"demo church\s+([0-9a-f-]{36})") == church_id
    assert "0 applied now" in second.output, second.output  # the schema survived too
    for name in (constants.ENCRYPTION_KEY_ENV, constants.LOOKUP_KEY_ENV):  # the same keys: the sealed data opens
        assert f"{name}: from {home / 'secrets.env'}" in second.output, second.output
    _check_health(second)
    _stop_and_check_nothing_left(second)


def test_dev_refuses_a_busy_port_before_starting_anything(tmp_path, dev_runs):
    base_port = _free_base_port()
    health_port = function_ports(["health"], base_port)["health"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", health_port))
        taken.listen()
        run = DevRun(tmp_path / "home", base_port, workdir)
        dev_runs.append(run)
        code = run.process.wait(timeout=STOP_TIMEOUT_S)
        run._reader.join(timeout=10)
    assert code == 1, run.output
    assert f"port {health_port} (for function health) is in use" in run.output
    assert "--base-port" in run.output
    assert not (tmp_path / "home" / "pgdata").exists()  # nothing was started


def test_a_function_that_exits_at_start_fails_with_the_tail_of_its_log(tmp_path):
    functions = tmp_path / "functions"
    (functions / "broken").mkdir(parents=True)
    (functions / "broken" / "main.py").write_text(
        "import sys\nprint('broken: DATABASE_URL is not set (see .env.example)', flush=True)\nsys.exit(3)\n"
    )
    stack = DevStack(tmp_path / "home", _free_base_port(), functions_dir=functions)
    stack.logs.mkdir(parents=True)
    port = function_ports(["broken"], stack.base_port)["broken"]
    try:
        with pytest.raises(StartupError) as failure:
            stack._start_functions(["broken"], {"broken": port})
    finally:
        assert stack.stop() == []
    message = str(failure.value)
    assert "function broken exited at start (code 3)" in message
    assert str(stack.logs / "broken.log") in message
    assert any("DATABASE_URL is not set" in line for line in failure.value.details), failure.value.details
    assert all(child.process.poll() is not None for child in stack.functions)


# -- scheduler ------------------------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    calls: queue.Queue[tuple[str, dict]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.calls.put((self.path, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def target_server() -> Iterator[tuple[str, queue.Queue[tuple[str, dict]]]]:
    calls: queue.Queue[tuple[str, dict]] = queue.Queue()
    handler = type("Recorder", (_Recorder,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()
    server.server_close()
    thread.join()


def test_scheduler_tick_calls_the_target_when_due(target_server):
    base_url, calls = target_server
    now = [1000.0]
    targets, skipped = scheduled_targets({"retry-scheduler": base_url}, scale=1.0)
    assert skipped == ["dlq-drain"]
    assert targets == [ScheduledTarget("retry-scheduler", f"{base_url}/events", 60.0)]
    seen = []
    scheduler = DevScheduler(targets, clock=lambda: now[0], on_result=seen.append)
    try:
        assert scheduler.tick() == []  # not due yet: nothing is called
        assert calls.empty()
        assert scheduler.due_in() == 60.0

        now[0] += 60.0
        results = scheduler.tick()
        assert [(r.name, r.status, r.ok) for r in results] == [("retry-scheduler", 204, True)]
        assert seen == results
        path, body = calls.get(timeout=5)
        assert path == "/events"
        assert body == {"source": SCHEDULER_SOURCE, "schedule": "retry-scheduler", "budget_s": 20.0}
        assert scheduler.due_in() == 60.0

        now[0] += 30.0
        assert scheduler.tick() == []
        now[0] += 400.0  # a long pause (suspended laptop): one call, not one per missed slot
        assert len(scheduler.tick()) == 1
        assert scheduler.due_in() == 60.0
    finally:
        scheduler.stop()


def test_scheduler_thread_calls_the_target_and_reports_a_dead_one(target_server):
    base_url, calls = target_server
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{unused.getsockname()[1]}/events"  # bound, never listening: refused
        results: queue.Queue = queue.Queue()
        scheduler = DevScheduler(
            [ScheduledTarget("retry-scheduler", f"{base_url}/events", 0.05), ScheduledTarget("dlq-drain", dead_url, 0.05)],
            on_result=results.put,
        )
        scheduler.start()
        try:
            path, body = calls.get(timeout=10)
            assert (path, body["schedule"]) == ("/events", "retry-scheduler")
            by_name = {}
            while len(by_name) < 2:
                result = results.get(timeout=10)
                by_name[result.name] = result
        finally:
            scheduler.stop()
    assert by_name["retry-scheduler"].ok
    assert not by_name["dlq-drain"].ok and by_name["dlq-drain"].status is None
    assert "no answer" in by_name["dlq-drain"].describe()


def test_schedule_scale_comes_from_the_environment():
    assert schedule_scale({}) == 1.0
    assert schedule_scale({SCHEDULE_SCALE_ENV: "0.01"}) == 0.01
    targets, _ = scheduled_targets({"dlq-drain": "http://x"}, scale=0.01)
    assert targets[0].interval_s == pytest.approx(36.0)
    for bad in ("0", "-1", "fast"):
        with pytest.raises(StartupError, match=SCHEDULE_SCALE_ENV):
            schedule_scale({SCHEDULE_SCALE_ENV: bad})
