"""``koinonia check redis`` and ``koinonia check failover``, run in-process through ``common.cli.main``.

``check redis`` runs against the suite's Redis, a closed port, and redis-servers this test starts with the
settings that break a queue (a password, a full memory, a replica, a renamed command); the machine's
Redis is only read and written under the test's own key prefix. ``check failover`` runs end to end on
real PostgreSQL and Redis with the Telnyx sandbox as the carrier.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import common.cli
from common import constants
from common.config import Settings
from common.ids import uuid7
from infra.embedded import free_port, redis_server_binary
from infra.telnyx_sandbox import Sandbox
from tests.factories import make_church
from tests.helpers import set_env, wait_for

PASSWORD = "s3cret-Pa55word"
TO = "+13125550142"
TO_MASKED = "+1******0142"

StartRedis = Callable[..., str]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = common.cli.main(argv)
    return code, capsys.readouterr().out


def step_status(out: str) -> dict[str, str]:
    """``{"ping": "ok", "set/get": "FAILED", ...}`` from the step lines."""
    names = ("ping", "set/get", "ttl", "del", "incr", "lpush/lpop", "lua")
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip().split(" ")[0] in names}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound and not listening: connecting is refused (and nobody else gets the port meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def start_redis(service_dir: Path) -> Iterator[StartRedis]:
    """Start a private redis-server with extra command-line settings; its URL (no password in it)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*settings: str) -> str:
        port = free_port()
        data = service_dir / f"redis-{port}"
        data.mkdir()
        process = subprocess.Popen(
            [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", "",
             "--appendonly", "no", "--logfile", str(data / "redis.log"), *settings],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(process)

        def accepts() -> bool:
            assert process.poll() is None, (data / "redis.log").read_text(errors="replace")[-500:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_for(accepts, timeout_s=10, what=f"redis-server on port {port}")
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


# -- check redis ------------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_check_redis_passes_against_the_configured_redis_and_leaves_no_key(env: Settings, capsys, redis_prefix):
    code, out = run(["check", "redis"], capsys)
    assert code == 0, out
    assert step_status(out) == dict.fromkeys(("ping", "set/get", "ttl", "del", "incr", "lpush/lpop", "lua"), "ok")
    assert "ms" in out.splitlines()[1]  # each step with its latency
    assert "60 s left of 60" in out or "59 s left of 60" in out
    assert "cleanup     ok" in out
    assert "server: Redis " in out and "maxmemory-policy" in out and "persistence:" in out
    assert "redis: ok: 7/7 steps passed" in out
    client = redis.Redis.from_url(env.redis_url)
    try:
        assert list(client.scan_iter(match=f"{{{redis_prefix}}}:check:*")) == []
    finally:
        client.close()


def test_plain_check_still_checks_configuration_postgresql_and_redis(env: Settings, capsys):
    code, out = run(["check"], capsys)
    assert code == 0, out
    assert out.splitlines()[0].startswith("configuration: ok")
    assert "postgresql: ok" in out and "redis: ok" in out
    assert "ping" not in out  # the deeper steps only run under `check redis`


def test_connection_refused_is_diagnosed_and_the_password_never_printed(env, capsys, monkeypatch, closed_port):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0"})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    assert step_status(out)["ping"] == "FAILED"
    assert list(step_status(out).values())[1:] == ["skipped"] * 6  # one cause, not five more failures
    assert f"nothing listens at 127.0.0.1:{closed_port}: is redis-server running there?" in out
    assert "fix host and port in REDIS_URL" in out
    assert f"127.0.0.1:{closed_port}/0" in out and "a password" in out
    assert PASSWORD not in out
    assert "redis: FAILED: 0/7 steps passed" in out


def test_a_password_required_refused_and_right(env, capsys, monkeypatch, start_redis):
    url = start_redis("--requirepass", PASSWORD)
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: url})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    assert "NOAUTH: a password is required" in out
    assert "put it in REDIS_URL as redis://:PASSWORD@host:port/db" in out

    set_env(monkeypatch, **{constants.REDIS_URL_ENV: url.replace("redis://", "redis://:wrong-one@")})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    assert "WRONGPASS: the password is refused" in out
    assert "wrong-one" not in out

    set_env(monkeypatch, **{constants.REDIS_URL_ENV: url.replace("redis://", f"redis://:{PASSWORD}@")})
    code, out = run(["check", "redis"], capsys)
    assert code == 0, out
    assert PASSWORD not in out


def test_an_evicting_maxmemory_policy_is_a_warning_that_names_the_recovery(env, capsys, monkeypatch, start_redis):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: start_redis("--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru")})
    code, out = run(["check", "redis"], capsys)
    assert "WARNING maxmemory-policy is allkeys-lru" in out, out
    assert "PostgreSQL holds every message" in out and "Set maxmemory-policy noeviction" in out
    assert "maxmemory 1,048,576 bytes" in out
    assert code == 0, out  # a warning, not a failure: every command worked


def test_a_full_redis_is_diagnosed_as_oom(env, capsys, monkeypatch, start_redis):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: start_redis("--maxmemory", "1")})  # 1 byte: always over
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    status = step_status(out)
    assert status["ping"] == "ok" and status["set/get"] == "FAILED" and status["incr"] == "FAILED"
    assert (status["ttl"], status["del"]) == ("skipped", "skipped")  # they read what set/get failed to write
    assert "OOM: maxmemory reached" in out
    assert "keep maxmemory-policy noeviction" in out


def test_a_replica_is_diagnosed_as_readonly(env, capsys, monkeypatch, start_redis, closed_port):
    # A replica of a primary that is not there: still a replica, so read-only (and cheaper than a real pair).
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: start_redis("--replicaof", "127.0.0.1", str(closed_port))})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    assert step_status(out)["set/get"] == "FAILED"
    assert "READONLY: this is a replica" in out
    assert "point REDIS_URL at the primary" in out
    assert "role slave" in out and "WARNING this server is a replica (role slave)" in out
    assert "cleanup     nothing to delete (every write was refused)" in out


def test_a_renamed_command_is_named_in_the_diagnosis(env, capsys, monkeypatch, start_redis):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: start_redis("--rename-command", "INCR", "")})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    status = step_status(out)
    assert status["incr"] == "FAILED" and status["set/get"] == "ok" and status["lpush/lpop"] == "ok"
    assert "INCR unknown to the server" in out
    assert "disabled or renamed" in out and "rename-command" in out


def test_a_database_the_server_does_not_have(env, capsys, monkeypatch):
    base = env.redis_url.rsplit("/", 1)[0]
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: f"{base}/9999"})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    assert "database 9999 does not exist" in out and "use /0 at the end of REDIS_URL" in out


def test_a_host_that_does_not_resolve(env, capsys, monkeypatch):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: "redis://koinonia-check.invalid:6379/0"})
    code, out = run(["check", "redis"], capsys)
    assert code == 1, out
    assert "DNS: host not found" in out and "koinonia-check.invalid" in out


# -- check failover ---------------------------------------------------------------------------------------------


def failover(church_id: str, capsys, *extra: str) -> tuple[int, str]:
    return run(["check", "failover", "--church", church_id, "--to", TO, *extra], capsys)


def rows(pool) -> list[tuple[str, int, int]]:
    """(status, attempts, attempt rows) of every message, oldest first."""
    return [
        (status, attempts, count)
        for status, attempts, count in pool.run(
            "SELECT m.status, m.attempts, (SELECT count(*) FROM message_attempts a WHERE a.message_id = m.id)"
            " FROM messages m ORDER BY m.id"
        )
    ]


@pytest.mark.smoke
def test_failover_sends_inline_without_redis_then_through_redis_each_once(send_env, pool, sandbox: Sandbox, capsys):
    tenant = make_church(pool)
    code, out = failover(tenant.church_id, capsys)
    assert code == 0, out
    ledger = sandbox.ledger
    assert (ledger.accepted, ledger.unique, ledger.duplicates) == (2, 2, 0)
    assert ledger.by_to() == {TO: 2}
    texts = sorted(entry.text or "" for entry in ledger.entries())
    assert "1/2 (sent inline while Redis was unavailable)" in texts[0] and "2/2 (queued in Redis" in texts[1]
    assert rows(pool) == [("sent", 1, 1), ("sent", 1, 1)]
    lines = out.splitlines()
    assert any("sends 2 REAL texts" in line and TO_MASKED in line for line in lines)
    assert any(line.startswith("phase 1 (Redis unavailable): answered mode 'inline'") for line in lines)
    assert any(line.startswith("phase 1 (Redis unavailable): row reached 'sent' inline") for line in lines)
    assert any(line.startswith("phase 2 (Redis back): answered mode 'queued'") for line in lines)
    assert any(line.startswith("phase 2 (Redis back): consumer: dequeued 1, sent 1") for line in lines)
    assert any(line.startswith("phase 2 (Redis back): row reached 'sent' by a consumer") for line in lines)
    assert any(line.startswith("phase 3 (nothing lost): ok: 2 of 2 accepted message(s)") for line in lines)
    for name in ("phase 1 (Redis unavailable)", "phase 2 (Redis back)", "phase 3 (nothing lost)"):
        assert any(line.strip().startswith(name) and " ok " in line and line.endswith(" s") for line in lines), name
    assert lines[-1].startswith("check failover: ok")
    assert TO not in out  # the number is shown masked


@pytest.mark.parametrize(
    ("fault", "fix"),
    [
        ("5xx", "the carrier did not take the message"),
        ("api_key", "the carrier refused our credentials"),
    ],
)
def test_failover_with_a_failing_carrier_exits_1_with_the_fix_and_retries_nothing(
    send_env, pool, sandbox: Sandbox, capsys, monkeypatch, fault, fix
):
    tenant = make_church(pool)
    if fault == "5xx":
        sandbox.configure(rate_5xx=1.0)
    else:
        set_env(monkeypatch, **{constants.TELNYX_API_KEY_ENV: "KEY_not_the_sandbox_one"})
    code, out = failover(tenant.church_id, capsys)
    assert code == 1, out
    assert sandbox.ledger.accepted == 0
    # One attempt each, then a dead letter: a failed check never texts the operator later.
    assert rows(pool) == [("failed", 1, 1), ("failed", 1, 1)]
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 2
    assert f"phase 1 (Redis unavailable): FAILED: row is 'failed': {fix}" in out
    assert f"phase 2 (Redis back): FAILED: row is 'failed': {fix}" in out
    if fault == "api_key":
        assert "check TELNYX_API_KEY" in out
    assert "check failover: FAILED. What to do:" in out


def test_failover_for_an_unknown_church_sends_nothing(send_env, pool, sandbox: Sandbox, capsys):
    missing = str(uuid7())
    code, out = failover(missing, capsys)
    assert code == 1, out
    assert f"church {missing} does not exist: run `koinonia seed`" in out and "nothing was sent" in out
    assert sandbox.ledger.accepted == 0 and rows(pool) == []


def test_failover_for_a_church_without_subscription_is_refused_like_the_api(send_env, pool, sandbox: Sandbox, capsys):
    tenant = make_church(pool, allowance=None)
    code, out = failover(tenant.church_id, capsys)
    assert code == 1, out
    assert "phase 1 (Redis unavailable): FAILED: refused, nothing sent" in out
    assert "has no active subscription" in out and "start or renew its plan" in out
    assert "phase 2 (Redis back): skipped" in out
    assert sandbox.ledger.accepted == 0 and rows(pool) == []


def test_failover_with_the_configured_redis_down_fails_phase_2_and_points_at_check_redis(
    send_env, pool, sandbox: Sandbox, capsys, monkeypatch, closed_port
):
    tenant = make_church(pool)
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: f"redis://127.0.0.1:{closed_port}/0"})
    code, out = failover(tenant.church_id, capsys)
    assert code == 1, out
    assert "phase 1 (Redis unavailable): row reached 'sent' inline" in out
    assert "run `koinonia check redis`" in out and "nothing was sent in this phase" in out
    assert sandbox.ledger.accepted == 1 and rows(pool) == [("sent", 1, 1)]


def test_failover_refuses_to_run_with_queues_off(send_env, pool, sandbox: Sandbox, capsys, monkeypatch):
    tenant = make_church(pool)
    set_env(monkeypatch, **{constants.ENABLE_QUEUES_ENV: "false"})
    code, out = failover(tenant.church_id, capsys)
    assert code == 1, out
    assert "ENABLE_QUEUES=false" in out and "nothing was sent" in out
    assert sandbox.ledger.accepted == 0


def test_failover_needs_a_phone_number_and_a_church_id(send_env, capsys):
    with pytest.raises(SystemExit) as exited:
        common.cli.main(["check", "failover", "--church", str(uuid.uuid4())])
    assert exited.value.code == 2
    assert "--to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        common.cli.main(["check", "failover", "--church", str(uuid.uuid4()), "--to", "call me"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "not a phone number" in err and "+E.164" in err
