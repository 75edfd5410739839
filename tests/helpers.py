"""Small helpers the tests share (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from functions_framework import create_app

ROOT = Path(__file__).resolve().parent.parent


def with_database(url: str, database: str) -> str:
    """The same PostgreSQL URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def function_client(name: str):  # -> flask.testing.FlaskClient
    """A Flask test client for ``functions/<name>/main.py``, as functions-framework serves it."""
    target = name.replace("-", "_")
    return create_app(target, str(ROOT / "functions" / name / "main.py")).test_client()


def rebuild_singletons() -> None:
    """Drop the process-wide settings/pool/Redis/runtime so the next use reads the environment again."""
    from common.config import get_settings
    from common.db import get_pool
    from common.redis_client import get_redis
    from common.runtime import get_runtime

    get_runtime.cache_clear()
    if get_pool.cache_info().currsize:
        get_pool().close()
    if get_redis.cache_info().currsize:
        get_redis().close()
    for cached in (get_settings, get_pool, get_redis):
        cached.cache_clear()


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Set environment variables for this test and rebuild the singletons that read them."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    rebuild_singletons()


def wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """Poll ``condition`` until it is truthy (returned) or ``timeout_s`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)
