"""PostgreSQL: the source of truth. A pool, migrations, and the process-wide pool."""

from __future__ import annotations

import functools

from common.config import get_settings
from common.db.pool import Connection, DatabaseUnavailable, Pool, PoolStats, PoolTimeout

__all__ = ["Connection", "DatabaseUnavailable", "Pool", "PoolStats", "PoolTimeout", "get_pool"]


@functools.cache
def get_pool() -> Pool:
    """The pool of this process, sized from ``DATABASE_URL``."""
    return Pool(get_settings().database)
