"""Configuration: one place, and a bad value stops the process with one line naming it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from common import constants
from common.config import ConfigurationError, load_settings, parse_database_url
from tests.helpers import ROOT

GOOD = {
    constants.DATABASE_URL_ENV: "postgresql://app:pw@db.internal:6543/koinonia?connection_limit=30&pool_timeout=45",
    constants.ENCRYPTION_KEY_ENV: base64.b64encode(b"k" * 32).decode(),
    constants.LOOKUP_KEY_ENV: base64.b64encode(b"h" * 32).decode(),
    constants.TELNYX_API_KEY_ENV: "KEY_test",
    constants.TELNYX_BASE_URL_ENV: "http://127.0.0.1:9/v2/",
}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name in Settings_fields():
            monkeypatch.delenv(name)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def Settings_fields() -> set[str]:
    from common.config import Settings

    return {name.upper() for name in Settings.model_fields}


def test_seed_style_database_url_sizes_the_pool(clean_env):
    settings = load_settings()
    db = settings.database
    assert (db.user, db.password, db.host, db.port, db.database) == ("app", "pw", "db.internal", 6543, "koinonia")
    assert (db.pool_size, db.pool_timeout_s) == (30, 45.0)
    assert settings.telnyx_base_url == "http://127.0.0.1:9/v2"
    assert settings.enable_queues is True
    assert "pw" not in db.describe()


def test_old_encryption_keys_are_optional_and_comma_separated(clean_env):
    settings = load_settings()
    assert settings.old_encryption_keys_bytes == []
    assert settings.lookup_key_bytes == b"h" * 32
    old = [base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2)]
    clean_env.setenv(constants.ENCRYPTION_KEYS_OLD_ENV, f" {old[0]} ,{old[1]},")
    assert load_settings().old_encryption_keys_bytes == [b"\x01" * 32, b"\x02" * 32]


def test_unix_socket_urls():
    db = parse_database_url("postgresql://postgres@/postgres?host=/tmp/pg")
    assert db.unix_sock == "/tmp/pg/.s.PGSQL.5432"
    assert db.host is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (constants.DATABASE_URL_ENV, None, "DATABASE_URL is not set: expected postgresql://"),
        (constants.DATABASE_URL_ENV, "mysql://x", "DATABASE_URL is invalid: expected postgresql://"),
        (constants.DATABASE_URL_ENV, "postgresql://h/db?connection_limit=0", "DATABASE_URL is invalid: connection_limit"),
        (constants.ENCRYPTION_KEY_ENV, "short", "ENCRYPTION_KEY is invalid: expected base64 of 32 bytes"),
        (constants.ENCRYPTION_KEY_ENV, None, "ENCRYPTION_KEY is not set"),
        (constants.LOOKUP_KEY_ENV, "short", "LOOKUP_KEY is invalid: expected base64 of 32 bytes"),
        (constants.LOOKUP_KEY_ENV, None, "LOOKUP_KEY is not set"),
        (constants.ENCRYPTION_KEYS_OLD_ENV, "c2hvcnQ=", "ENCRYPTION_KEYS_OLD is invalid: expected base64 of 32 bytes"),
        (
            constants.ENCRYPTION_KEYS_OLD_ENV,
            base64.b64encode(b"o" * 32).decode() + ",not-base64!",
            "ENCRYPTION_KEYS_OLD is invalid: expected base64 of 32 bytes",
        ),
        (constants.TELNYX_BASE_URL_ENV, "ftp://carrier", "TELNYX_BASE_URL is invalid: expected an http(s) URL"),
        (constants.ENABLE_QUEUES_ENV, "perhaps", "ENABLE_QUEUES is invalid"),
        (constants.REDIS_URL_ENV, "http://x", "REDIS_URL is invalid: expected redis://"),
        (constants.TELNYX_PUBLIC_KEY_ENV, "bm90IGEga2V5", "TELNYX_PUBLIC_KEY is invalid: expected base64 of 32 bytes"),
        (constants.APP_ENV_ENV, "qa", "APP_ENV is invalid"),
    ],
)
def test_bad_values_name_the_variable(clean_env, variable, value, expected):
    if value is None:
        clean_env.delenv(variable, raising=False)
    else:
        clean_env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    line = str(err.value)
    assert expected in line
    assert "\n" not in line
    if value:
        assert value not in line.replace(expected, "")  # the bad value (maybe a secret) is not echoed


def test_dotenv_file_is_read(clean_env, tmp_path):
    clean_env.delenv(constants.TELNYX_API_KEY_ENV)
    (tmp_path / ".env").write_text("TELNYX_API_KEY=KEY_from_dotenv\nENABLE_QUEUES=false\n")
    settings = load_settings()
    assert settings.telnyx_api_key == "KEY_from_dotenv"
    assert settings.enable_queues is False


def test_a_function_with_bad_configuration_stops_at_start_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k.upper() not in Settings_fields()}
    env.update(GOOD)
    env[constants.ENCRYPTION_KEY_ENV] = "not-base64!"
    proc = subprocess.run(
        [sys.executable, "-c", "import functions_framework._cli as c; c._cli()",
         "--target=health", f"--source={ROOT / 'functions/health/main.py'}", "--port=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("configuration error: ENCRYPTION_KEY is invalid")
    assert "Traceback" not in proc.stderr
