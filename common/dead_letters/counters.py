"""Dead-letter counters in Redis, per carrier error code, for ``/health/detailed`` (PostgreSQL stays the
truth: ``dead_letters`` rows; these counters are cheap to read and survive nothing important)."""

from __future__ import annotations


def counter_key(prefix: str) -> str:
    return f"{{{prefix}}}:dlq:codes"
