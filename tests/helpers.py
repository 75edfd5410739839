"""Small helpers the tests share (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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
