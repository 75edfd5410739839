"""Real PostgreSQL and Redis for every test, each test isolated.

``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` point the suite at running servers (CI uses the machine's);
without them the suite starts embedded ones itself (pgserver, redis-server) and stops them at the end.
Isolation: every test gets its own database, cloned from a migrated template, and its own Redis key
prefix, so tests can run in parallel (``-n auto``) against one server.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from functions_framework import create_app
from werkzeug.serving import make_server

from common import constants
from common.config import Settings, get_settings, parse_database_url
from common.db.migrate import migrate
from common.db.pool import Pool
from common.redis_client import RedisGate
from infra.embedded import PostgresProcess, RedisProcess
from infra.telnyx_sandbox import Sandbox, SandboxConfig
from tests.helpers import ROOT, rebuild_singletons, set_env, with_database
from tests.webhook_signing import Signer


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (``postgres``)."""
    configured = os.environ.get(constants.TEST_DATABASE_URL_ENV)
    if configured:
        yield configured
        return
    # Not under pytest's basetemp: pytest makes that 0700 for root, and pgserver runs PostgreSQL as an
    # unprivileged user that must reach its data folder.
    data_dir = Path(tempfile.mkdtemp(prefix="koinonia-test-pg-"))
    server = PostgresProcess(data_dir / "pg").start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get(constants.TEST_REDIS_URL_ENV)
    if configured:
        yield configured
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """A migrated database that every test's database is cloned from."""
    name = f"kt_tpl_{uuid.uuid4().hex[:12]}"
    admin = Pool(parse_database_url(pg_server_url))
    admin.run(f'CREATE DATABASE "{name}"')
    template = Pool(parse_database_url(with_database(pg_server_url, name)))
    try:
        migrate(template, progress=lambda _line: None)
        # A suite must not pass or fail by the hour it runs: churches made by tests have no send window
        # (quiet hours) unless the test sets one. tests/test_quiet_hours_delivery.py checks the real
        # default (09:00-20:00) on a freshly migrated database.
        template.run(
            "ALTER TABLE churches ALTER COLUMN send_window_start SET DEFAULT NULL,"
            " ALTER COLUMN send_window_end SET DEFAULT NULL"
        )
    finally:
        template.close()
    yield name
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"kt_{uuid.uuid4().hex[:16]}"
    admin = Pool(parse_database_url(pg_server_url))
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield with_database(pg_server_url, name)
    finally:
        admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pool(database_url: str) -> Iterator[Pool]:
    p = Pool(parse_database_url(database_url))
    yield p
    p.close()


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_gate(redis_server_url: str, redis_prefix: str) -> Iterator[RedisGate]:
    gate = RedisGate(redis_server_url, prefix=redis_prefix)
    yield gate
    _delete_prefix(gate)
    gate.close()


def _delete_prefix(gate: RedisGate) -> None:
    keys = list(gate.client.scan_iter(match=f"{{{gate.prefix}}}*", count=1000))
    if keys:
        gate.client.delete(*keys)


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: os.PathLike[str],
    database_url: str,
    redis_server_url: str,
    redis_prefix: str,
) -> Iterator[Settings]:
    """The process environment a function sees, pointed at this test's database and key prefix."""
    monkeypatch.chdir(tmp_path)  # no developer .env leaks into a test
    values = {
        constants.DATABASE_URL_ENV: database_url,
        constants.REDIS_URL_ENV: redis_server_url,
        constants.REDIS_KEY_PREFIX_ENV: redis_prefix,
        constants.ENABLE_QUEUES_ENV: "true",
        constants.ENCRYPTION_KEY_ENV: base64.b64encode(os.urandom(32)).decode(),
        constants.LOOKUP_KEY_ENV: base64.b64encode(os.urandom(32)).decode(),
        constants.TELNYX_API_KEY_ENV: "KEY_sandbox",
        constants.TELNYX_BASE_URL_ENV: "http://127.0.0.1:9/v2",
        constants.APP_ENV_ENV: "test",
        # A cold pool's first connection can take longer than 80 ms on a loaded 2-core CI machine; the
        # test that is about the deadline sets its own.
        constants.HEALTH_TIMEOUT_MS_ENV: "2000",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    _clear_process_singletons()
    yield get_settings()
    _clear_process_singletons()
    cleaner = RedisGate(redis_server_url, prefix=redis_prefix)  # the test may have pointed REDIS_URL elsewhere
    _delete_prefix(cleaner)
    cleaner.close()


def _clear_process_singletons() -> None:
    rebuild_singletons()


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A folder for a test's own PostgreSQL/Redis (outside pytest's 0700 basetemp; see pg_server_url)."""
    path = Path(tempfile.mkdtemp(prefix="koinonia-test-svc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Our Telnyx-compatible carrier, in this process, on a free port."""
    with Sandbox(SandboxConfig()) as sb:
        yield sb


@pytest.fixture
def send_env(env: Settings, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``env`` with the carrier pointed at the sandbox, and the process singletons rebuilt."""
    monkeypatch.setenv(constants.TELNYX_BASE_URL_ENV, f"{sandbox.url}/v2")
    # The sandbox is not Telnyx: tests about throughput caps set their own; the rest run unthrottled.
    monkeypatch.setenv("ACCOUNT_SMS_PER_SECOND", "100000")
    monkeypatch.setenv("ACCOUNT_MMS_PER_SECOND", "100000")
    _clear_process_singletons()
    yield get_settings()
    _clear_process_singletons()


@pytest.fixture
def signer(send_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Signer:
    """A Telnyx-style webhook signing key made for this test; the functions trust its public half."""
    s = Signer()
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: s.public_key})
    return s


@pytest.fixture
def hooks_url(send_env: Settings, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The webhooks function over real HTTP on a free port; the sandbox signs and posts its receipts and
    members' texts there."""
    app = create_app("webhooks", str(ROOT / "functions" / "webhooks" / "main.py"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="webhooks-function", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/webhooks/telnyx"
    set_env(monkeypatch, **{constants.TELNYX_PUBLIC_KEY_ENV: sandbox.webhook_public_key,
                            constants.TELNYX_WEBHOOK_URL_ENV: url})  # fmt: skip
    sandbox.configure(inbound_webhook_url=url)
    try:
        yield url
    finally:
        server.shutdown()
        thread.join(timeout=10)


MAIL_SENDER = "news@grace.example.org"  # the From address of `mail_env`, verified in moto


@pytest.fixture(scope="session")
def moto_ses_server() -> Iterator[str]:
    """moto's server mode (the local stack's SES) in this process on a free port; ``mail_env`` resets it per test."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def mail_env(send_env: Settings, moto_ses_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """``send_env`` with mail through moto (reset, ``MAIL_SENDER`` verified) and fake AWS credentials only: no
    developer profile or config file can leak in, nothing can reach AWS. ``SES_MAX_SEND_RATE`` is high: the
    tests are not about SES's rate."""
    import boto3
    import httpx

    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SES", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    set_env(
        monkeypatch,
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        **{constants.MAIL_FROM_ENV: f"Grace Church <{MAIL_SENDER}>", constants.SES_ENDPOINT_URL_ENV: moto_ses_server,
           constants.SES_MAX_SEND_RATE_ENV: "1000"},
    )  # fmt: skip
    httpx.post(f"{moto_ses_server}/moto-api/reset", timeout=5).raise_for_status()
    admin = boto3.session.Session().client("ses", region_name="us-east-1", endpoint_url=moto_ses_server)
    admin.verify_email_identity(EmailAddress=MAIL_SENDER)
    admin.close()
    yield get_settings()
    rebuild_singletons()
