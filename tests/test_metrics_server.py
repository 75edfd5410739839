"""``koinonia consume --metrics-port``: the local worker's ``GET /metrics`` (common/metrics/server.py).

The worker runs as ``koinonia dev`` runs it: the real command in its own process, ``--forever``, with this
test's environment (real PostgreSQL and Redis, the sandbox carrier). Messages are accepted through the send
function in this process; what the worker sent is read from its port over real HTTP with the strict reader of
the Prometheus text in tests/test_metrics.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import make_church, numbers
from tests.helpers import ROOT, function_client, set_env, wait_for
from tests.test_metrics import GAUGES, LATENCY, Samples, parse_exposition, value

KOINONIA = Path(sys.executable).parent / "koinonia"
SENT = "koinonia_messages_sent_total"
URL_LINE = "consume: metrics on "


def koinonia() -> list[str]:
    return [str(KOINONIA)] if KOINONIA.exists() else [sys.executable, "-m", "common.cli"]


def child_env() -> dict[str, str]:
    """This test's environment (the fixtures set it in os.environ), for a child process."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"}


class Worker:
    """``koinonia consume --forever --metrics-port 0`` in its own process, its output in a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "wb") as sink:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                [*koinonia(), "consume", "--forever", "--metrics-port", "0"],
                env=child_env(), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics_url(self) -> str:
        """The URL the worker printed once its server listened (``--metrics-port 0``: the port it was given)."""

        def printed() -> str | None:
            assert self.proc.poll() is None, f"the worker exited ({self.proc.returncode}):\n{self.output()[-3000:]}"
            return next((ln.removeprefix(URL_LINE) for ln in self.output().splitlines() if ln.startswith(URL_LINE)), None)

        url: str = wait_for(printed, timeout_s=30, what="the worker's metrics line")
        return url

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=20)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        started.append(Worker(tmp_path / f"worker-{len(started)}.log"))
        return started[-1]

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(timeout=10)


def scrape(http: httpx.Client, url: str) -> Samples:
    answer = http.get(url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-store"
    return parse_exposition(answer.text)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_worker_serves_what_it_sent_and_stops_with_its_port(send_env, pool, sandbox, worker, signum):
    tenant = make_church(pool)
    consumer = worker()
    url = consumer.metrics_url()
    port = int(url.removeprefix("http://127.0.0.1:").removesuffix("/metrics"))
    with httpx.Client(timeout=10) as http:
        before = scrape(http, url)
        assert (value(before, SENT), value(before, f"{LATENCY}_count", channel="sms")) == (0, 0)  # a new process
        assert value(before, "koinonia_database_up") == 1  # the queue gauges from this test's database

        accepted = function_client("send").post(
            "/messages", json={"channel": "sms", "to": numbers(7, area="415"), "text": "Choir at 6"}, headers=tenant.auth
        )
        assert accepted.status_code == 202, accepted.get_json()

        def all_sent() -> Samples | None:
            samples = scrape(http, url)
            return samples if value(samples, SENT) == 7 else None

        after: Samples = wait_for(all_sent, timeout_s=30, what="the worker's scrape to count 7 sent", poll_s=0.1)
        assert value(after, f"{LATENCY}_count", channel="sms") == 7  # one carrier request each, timed
        assert value(after, f"{LATENCY}_sum", channel="sms") > 0
        assert value(after, "koinonia_messages_failed_total") == value(after, "koinonia_messages_retried_total") == 0
        assert value(after, "koinonia_messages_accepted_total", channel="sms") == 0  # counted by send, not here
        assert value(after, GAUGES["depth"]) == 0
        assert sandbox.ledger.accepted == 7
        assert pool.run("SELECT status, count(*) FROM messages GROUP BY status") == [["sent", 7]]

        alive = http.get(url.replace("/metrics", "/alive"))
        assert (alive.status_code, alive.text) == (200, "alive\n")
        elsewhere = http.get(url.replace("/metrics", "/messages"))
        assert elsewhere.status_code == 404 and "GET /metrics" in elsewhere.text

    code = consumer.stop(signum)
    assert code in (-signum, 128 + signum), (code, consumer.output()[-3000:])  # the signal's own end, promptly
    assert "metrics-server" not in consumer.output()  # no traceback from the server's thread
    assert refuses_connections(port)


def test_a_port_in_use_is_one_line_naming_it(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([*koinonia(), "consume", "--metrics-port", str(port)], env=child_env(),
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2, run
    assert run.stderr.splitlines() == [
        f"consume: port {port} on 127.0.0.1 is in use (--metrics-port); stop whatever listens there or choose another port"
    ]
    assert "consume: {" not in run.stdout  # refused before consuming anything


@pytest.mark.parametrize("metrics_format", ["emf", "off"])
def test_another_metrics_format_refuses_the_flag_at_start(env, monkeypatch, metrics_format):
    set_env(monkeypatch, METRICS_FORMAT=metrics_format)
    with socket.socket() as probe:  # a port nobody listens on, to see the refusal bound nothing
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = subprocess.run([*koinonia(), "consume", "--metrics-port", str(port)], env=child_env(),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2, run
    [line] = run.stderr.splitlines()
    assert line == (
        f"consume: --metrics-port serves Prometheus text, but METRICS_FORMAT={metrics_format}:"
        " set METRICS_FORMAT=prometheus for this process, or drop --metrics-port"
    )
    assert "consume: {" not in run.stdout and URL_LINE not in run.stdout
