"""The health function over functions-framework, against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from common import constants
from common.config import get_settings
from common.db import get_pool
from common.privacy import crypto
from common.redis_client import get_redis
from tests.helpers import function_client


def _client(monkeypatch: pytest.MonkeyPatch, **overrides: str):
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    for cached in (get_settings, get_pool, get_redis):
        cached.cache_clear()
    return function_client("health")


@pytest.fixture
def hanging_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung dependency)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.smoke
def test_health_is_healthy_with_both_services(env, monkeypatch):
    response = _client(monkeypatch).get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert set(body["checks"]) == {"database", "redis", "environment", "uptime"}
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"
    assert isinstance(body["responseTime"], float)
    assert body["timestamp"].endswith("+00:00")


def test_detailed_reports_pool_queues_version_and_no_secrets(env, monkeypatch):
    client = _client(monkeypatch)
    pool = get_pool()
    pool.run(
        "INSERT INTO churches (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 'c')"
    )
    pool.run(
        "INSERT INTO messages (id, church_id, channel, lane, to_enc, to_hash, body_enc, status, next_attempt_at,"
        " deadline_at, created_at) VALUES ('00000000-0000-7000-8000-00000000000a', '00000000-0000-7000-8000-000000000001',"
        " 'sms', 'bulk', :to, :hash, :body, 'queued', now(), now() + interval '4 hours', now() - interval '30 seconds')",
        to=crypto.seal("+15005550101", "address"), body=crypto.seal("hi", "text"),
        hash=crypto.lookup_hash("00000000-0000-7000-8000-000000000001", "+15005550101"),
    )
    response = client.get("/health/detailed")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    checks = body["checks"]
    assert checks["database"]["pool"]["max"] == env.database.pool_size
    assert checks["queues"]["pending"]["queued"] == 1
    assert checks["queues"]["oldestWaitingAgeS"] >= 30
    assert checks["queues"]["deadLetters"] == 0
    assert checks["queues"]["redis"] == {
        "deadLettersByCode": {},
        "readyConversational": 0, "readyBulk": 0, "delayed": 0, "inflight": 0, "churchesWaiting": 0,
    }
    assert checks["environment"]["sendMode"] == "queued"
    assert checks["environment"]["version"]
    assert checks["uptime"]["seconds"] >= 0
    text = response.get_data(as_text=True)
    for secret in (env.database_url, env.encryption_key, env.telnyx_api_key, env.redis_url, "+15005550101"):
        assert secret not in text


def test_redis_down_is_degraded_but_ready(env, monkeypatch):
    client = _client(monkeypatch, **{constants.REDIS_URL_ENV: f"redis://127.0.0.1:{_closed_port()}/0"})
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json()["status"] == "degraded"
    assert health.get_json()["checks"]["redis"]["status"] in ("error", "timeout")
    assert health.get_json()["checks"]["environment"]["sendMode"] == "inline"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["ready"] is True


def test_queues_disabled_needs_no_redis(env, monkeypatch):
    client = _client(
        monkeypatch,
        **{constants.ENABLE_QUEUES_ENV: "false", constants.REDIS_URL_ENV: f"redis://127.0.0.1:{_closed_port()}/0"},
    )
    body = client.get("/health").get_json()
    assert body["status"] == "healthy"
    assert body["checks"]["redis"]["status"] == "disabled"


def test_database_down_is_unhealthy_and_not_ready(env, monkeypatch):
    client = _client(monkeypatch, **{constants.DATABASE_URL_ENV: f"postgresql://postgres@127.0.0.1:{_closed_port()}/x"})
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["status"] == "unhealthy"
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.get_json()["ready"] is False
    assert client.get("/alive").status_code == 200


def test_hung_dependencies_do_not_make_health_late(env, monkeypatch, hanging_server):
    client = _client(
        monkeypatch,
        **{
            constants.DATABASE_URL_ENV: f"postgresql://postgres@127.0.0.1:{hanging_server}/x?pool_timeout=30",
            constants.REDIS_URL_ENV: f"redis://127.0.0.1:{hanging_server}/0",
            constants.HEALTH_TIMEOUT_MS_ENV: "80",
        },
    )
    started = time.monotonic()
    response = client.get("/health")
    elapsed = time.monotonic() - started
    body = response.get_json()
    assert response.status_code == 503
    assert body["checks"]["database"]["status"] == "timeout"
    # The dependency would hold the request for its full socket timeout (30 s); health answers at
    # its own deadline. The bound is loose on purpose: this proves "bounded", the bench measures speed.
    assert elapsed < 2.0, f"health took {elapsed:.2f}s with a hung dependency"


def test_alive_and_unknown_routes(env, monkeypatch):
    client = _client(monkeypatch)
    assert client.get("/alive").get_json()["status"] == "alive"
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert "try GET /health" in json.loads(missing.get_data())["error"]["message"]
    assert client.post("/health").status_code == 404
