"""Environment variable names, in one place (no scattered string literals)."""

from __future__ import annotations

DATABASE_URL_ENV = "DATABASE_URL"
REDIS_URL_ENV = "REDIS_URL"
ENABLE_QUEUES_ENV = "ENABLE_QUEUES"
ENCRYPTION_KEY_ENV = "ENCRYPTION_KEY"
TELNYX_API_KEY_ENV = "TELNYX_API_KEY"
TELNYX_BASE_URL_ENV = "TELNYX_BASE_URL"
TELNYX_PUBLIC_KEY_ENV = "TELNYX_PUBLIC_KEY"
TELNYX_WEBHOOK_URL_ENV = "TELNYX_WEBHOOK_URL"
APP_ENV_ENV = "APP_ENV"
REDIS_KEY_PREFIX_ENV = "REDIS_KEY_PREFIX"
LOG_LEVEL_ENV = "LOG_LEVEL"
HEALTH_TIMEOUT_MS_ENV = "HEALTH_TIMEOUT_MS"
KOINONIA_HOME_ENV = "KOINONIA_HOME"

# Test suite: real services to use instead of embedded ones.
TEST_DATABASE_URL_ENV = "TEST_DATABASE_URL"
TEST_REDIS_URL_ENV = "TEST_REDIS_URL"

# Defaults for the PostgreSQL pool when DATABASE_URL carries no query parameters.
default_connection_limit = 10
default_pool_timeout_s = 10.0
