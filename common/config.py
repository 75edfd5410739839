"""Settings, read once from the environment and ``.env``.

Every variable the system reads is declared here and documented in ``.env.example``.
A missing or malformed value stops the process at start with one line that names the
variable and says what is expected; values themselves are never echoed (they may be secrets).
"""

from __future__ import annotations

import base64
import binascii
import functools
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import aws_secrets, constants


class AppEnv(StrEnum):
    development = "development"
    test = "test"
    staging = "staging"
    production = "production"


@dataclass(frozen=True)
class DatabaseTarget:
    """Where PostgreSQL is and how large the pool may grow, parsed from ``DATABASE_URL``."""

    user: str
    password: str | None
    database: str
    host: str | None
    port: int
    unix_sock: str | None
    pool_size: int
    pool_timeout_s: float
    statement_cache: int = 128  # statements prepared once per connection (0: off; common/db/pool.py)

    def describe(self) -> str:
        """Location without credentials, safe to print and log."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{where}/{self.database}"


DATABASE_URL_EXPECTED = (
    "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    "[?connection_limit=N&pool_timeout=SECONDS&statement_cache=N] (a unix socket goes in ?host=/dir)"
)


def parse_database_url(url: str) -> DatabaseTarget:
    """Parse a PostgreSQL URL; raise ``ValueError`` with what is expected."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(DATABASE_URL_EXPECTED)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    database = unquote(parts.path.lstrip("/")) or "postgres"
    try:
        port = parts.port or int(query.get("port", 5432))
        pool_size = int(query.get("connection_limit", constants.default_connection_limit))
        pool_timeout_s = float(query.get("pool_timeout", constants.default_pool_timeout_s))
        statement_cache = int(query.get("statement_cache", 128))
    except ValueError:
        raise ValueError(DATABASE_URL_EXPECTED + "; port, connection_limit, pool_timeout, statement_cache are numbers") from None
    if pool_size < 1 or pool_timeout_s <= 0 or statement_cache < 0:
        raise ValueError("connection_limit must be >= 1, pool_timeout > 0 and statement_cache >= 0")
    socket_dir = query.get("host") if query.get("host", "").startswith("/") else None
    host = None if socket_dir else (parts.hostname or query.get("host") or "127.0.0.1")
    return DatabaseTarget(
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password else None,
        database=database,
        host=host,
        port=port,
        unix_sock=f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None,
        pool_size=pool_size,
        pool_timeout_s=pool_timeout_s,
        statement_cache=statement_cache,
    )


def _decode_key(value: str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"expected base64 of {length} bytes ({what})") from None
    if len(raw) != length:
        raise ValueError(f"expected base64 of {length} bytes ({what}), got {len(raw)} bytes")
    return raw


class Settings(BaseSettings):
    """The whole configuration. Field names are the environment variable names, lower-cased."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(description=DATABASE_URL_EXPECTED)
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis URL (transport only)")
    enable_queues: bool = Field(default=True, description="false: send inline, no Redis queue")
    encryption_key: str = Field(description="expected base64 of 32 random bytes (the AES-256 key for data at rest)")
    encryption_keys_old: str = Field(
        default="", description="comma-separated base64 keys that only decrypt (kept until `koinonia rotate-key` ends)"
    )
    lookup_key: str = Field(description="expected base64 of 32 random bytes (the HMAC key for lookups by phone)")
    telnyx_api_key: str = Field(min_length=1, description="expected the Telnyx API key (KEY...)")
    telnyx_base_url: str = Field(description="expected the Telnyx API base URL, e.g. https://api.telnyx.com/v2 or the sandbox")
    telnyx_public_key: str | None = Field(default=None, description="base64 Ed25519 public key (webhooks)")
    app_env: AppEnv = Field(default=AppEnv.development)
    redis_key_prefix: str = Field(default="kq", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    health_timeout_ms: int = Field(default=80, ge=5, le=5000)
    redis_timeout_ms: int = Field(default=100, ge=10, le=10_000, description="Redis connect/command timeout")
    inline_budget_s: float = Field(default=10.0, gt=0, le=600, description="seconds `send` may spend sending inline")
    account_sms_per_second: float = Field(default=50.0, gt=0, description="carrier account cap, SMS/s")
    account_mms_per_second: float = Field(default=15.0, gt=0, description="carrier account cap, MMS/s")
    consumer_concurrency: int = Field(default=200, ge=1, le=5000, description="carrier requests in flight per consumer")
    consumer_batch: int = Field(default=100, ge=1, le=1000, description="messages per dequeue/claim")
    lease_s: float = Field(default=30.0, ge=1, le=3600, description="how long a claim is exclusive")
    telnyx_webhook_url: str | None = Field(default=None, description="our webhooks endpoint, sent with each message")
    operator_token: str | None = Field(default=None, min_length=32, description="operator credential (all churches)")
    auth_cache_ttl_s: int = Field(default=60, ge=0, le=3600, description="seconds a verified API key stays cached (0: off)")
    dlq_retention_days: int = Field(default=30, ge=1, le=3650, description="dead letters older than this are archived")
    dlq_alert_threshold: int = Field(default=1000, ge=1, description="alert when this many dead letters wait")
    dlq_alert_growth: int = Field(default=100, ge=1, description="alert when this many arrived in the last hour")
    scheduler_budget_s: float = Field(default=50.0, gt=0, le=900, description="seconds one retry-scheduler run loops")
    wake_queue_url: str | None = Field(default=None, description="SQS queue that wakes queue-consume in the cloud")
    # Metrics (common/metrics/): Prometheus text on GET /metrics locally, CloudWatch EMF lines on stdout in the cloud
    metrics_format: Literal["prometheus", "emf", "off"] = Field(
        default="prometheus",
        description="prometheus (GET /metrics on every function), emf (CloudWatch embedded metric format on stdout), off",
    )
    stage: str = Field(default="local", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="deployment stage: the EMF dimension")
    # Mail through Amazon SES (common/mail/); AWS credentials come from the usual AWS chain, never from here
    mail_from: str | None = Field(
        default=None, pattern=r"^[^<>@\s]+@[^<>@\s]+$|^[^<>]*<[^<>@\s]+@[^<>@\s]+>$",
        description="the SES-verified From address: news@church.org or 'Grace Church <news@church.org>'",
    )  # fmt: skip
    ses_region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="AWS region of SES")
    ses_endpoint_url: str | None = Field(default=None, pattern=r"^https?://\S+$", description="SES endpoint (local moto server)")
    ses_configuration_set: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="SES configuration set (event publishing)"
    )
    ses_max_send_rate: float = Field(
        default=14.0, gt=0, le=10_000,
        description="the SES account's maximum send rate, mails/s (14: a new production account's; the sandbox's is 1)",
    )  # fmt: skip
    # Rate limits and quotas (common/limits/, common/billing/quota.py)
    trusted_proxy: Literal["none", "lambda", "x-forwarded-for"] = Field(
        default="none", description="where the client address comes from: none (TCP peer), lambda, x-forwarded-for"
    )
    auth_fail_limit: int = Field(default=20, ge=1, description="failed authentications per address per period")
    auth_fail_period_s: float = Field(default=300.0, gt=0, le=86_400, description="period of AUTH_FAIL_LIMIT (s)")
    church_send_limit: int = Field(default=600, ge=1, description="send requests per church per period")
    church_send_period_s: float = Field(default=60.0, gt=0, le=86_400, description="period of CHURCH_SEND_LIMIT (s)")
    church_bulk_recipients_limit: int = Field(default=50_000, ge=1, description="bulk recipients per church per period")
    church_bulk_recipients_period_s: float = Field(
        default=86_400.0, gt=0, le=31 * 86_400, description="period of CHURCH_BULK_RECIPIENTS_LIMIT (s)"
    )
    quota_cache_ttl_s: float = Field(default=30.0, gt=0, le=3_600, description="how long a church's remaining quota is cached")
    # MMS media check (common/media.py)
    media_check_timeout_s: float = Field(
        default=3.0, gt=0, le=30, description="seconds the MMS media check may take in all (every URL in parallel)"
    )
    media_ca_bundle: str | None = Field(
        default=None, description="a PEM file of CA certificates trusted besides the public roots when checking media URLs"
    )

    @field_validator("media_ca_bundle")
    @classmethod
    def _check_media_ca_bundle(cls, value: str | None) -> str | None:
        if value:
            try:
                with open(value, "rb"):
                    pass
            except OSError:
                raise ValueError("expected a readable PEM file of CA certificates") from None
        return value or None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        parse_database_url(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected redis://HOST:PORT/DB, rediss://... or unix:///path/redis.sock")
        return value

    @field_validator("encryption_key")
    @classmethod
    def _check_encryption_key(cls, value: str) -> str:
        _decode_key(value, 32, "make one with: python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'")
        return value

    @field_validator("lookup_key")
    @classmethod
    def _check_lookup_key(cls, value: str) -> str:
        _decode_key(value, 32, "make one as ENCRYPTION_KEY; keep it for good: lookups by phone depend on it")
        return value

    @field_validator("encryption_keys_old")
    @classmethod
    def _check_old_keys(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            _decode_key(part, 32, "each an earlier ENCRYPTION_KEY, comma-separated")
        return value

    @field_validator("telnyx_public_key")
    @classmethod
    def _check_public_key(cls, value: str | None) -> str | None:
        if value:
            _decode_key(value, 32, "the Ed25519 public key from Telnyx's portal")
        return value or None

    @field_validator("telnyx_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http(s) URL such as https://api.telnyx.com/v2")
        return value.rstrip("/")

    @property
    def database(self) -> DatabaseTarget:
        return parse_database_url(self.database_url)

    @property
    def encryption_key_bytes(self) -> bytes:
        return base64.b64decode(self.encryption_key)

    @property
    def old_encryption_keys_bytes(self) -> list[bytes]:
        return [base64.b64decode(p.strip()) for p in self.encryption_keys_old.split(",") if p.strip()]

    @property
    def lookup_key_bytes(self) -> bytes:
        return base64.b64decode(self.lookup_key)


class ConfigurationError(Exception):
    """Settings could not be loaded; ``str(err)`` is one line naming the variable."""


def load_settings() -> Settings:
    """Read settings now; raise ``ConfigurationError`` with one line per the first bad variable.

    A setting named by ``X_SECRET_ARN`` is read from AWS Secrets Manager first (``common/aws_secrets.py``)
    and then validated like any other."""
    try:
        # Any: the values are text and pydantic converts and validates them, as it does the environment's
        from_secrets: dict[str, Any] = aws_secrets.read_secret_settings(env_file=Settings.model_config.get("env_file"))
    except aws_secrets.SecretSettingError as exc:
        raise ConfigurationError(f"configuration error: {exc}") from None
    try:
        return Settings(**from_secrets)  # the rest come from the environment
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "?"
        if first["type"] == "missing":
            field = Settings.model_fields.get(variable.lower())
            expected = field.description if field and field.description else "a value"
            message = f"{variable} is not set: {expected}"
        else:
            reason = str(first["msg"]).removeprefix("Value error, ")
            message = f"{variable} is invalid: {reason}"
            if variable.lower() in from_secrets:
                message += f" (the value came from the secret in {variable}{aws_secrets.ARN_SUFFIX})"
        raise ConfigurationError(f"configuration error: {message} (see .env.example)") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings; a bad configuration exits the process with one line."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        _exit(str(exc))


def _exit(line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(2)
