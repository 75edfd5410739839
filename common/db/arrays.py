"""Array parameters written as one PostgreSQL array literal, for the statements that pass thousands of values.

pg8000 turns a Python list parameter into an array literal itself, inspecting and escaping every element
through a chain of generic converters; for a 1,000-recipient broadcast's seven columns that is most of the
time the send path spends outside PostgreSQL (bench/costs.py's profile: ``array_string_escape``). The
literal built here is the same text (the statement's ``CAST(:x AS uuid[])`` parses it exactly as it parses
pg8000's), made in one pass with the escaping the array syntax needs and nothing else:

- ``None`` is ``NULL``; text that needs no quoting is written as it is (ids, statuses, time zones, ISO
  timestamps), anything else is double-quoted with ``\\`` and ``"`` escaped;
- ``bytes`` become bytea's hex form (``\\x...``), quoted;
- ``datetime`` must be timezone-aware (its ISO form carries the offset, so nothing depends on the session's
  time zone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

_PLAIN = re.compile(r'[^{}",\\\s]+')


def pg_array(values: Iterable[str | bytes | datetime | None]) -> str:
    """``['a', None, b'\\x01']`` -> ``{a,NULL,"\\\\x01"}``: one literal for a ``CAST(:p AS type[])`` parameter."""
    parts: list[str] = []
    add = parts.append
    for value in values:
        if value is None:
            add("NULL")
        elif isinstance(value, str):
            if _PLAIN.fullmatch(value) and value.upper() != "NULL":
                add(value)
            else:
                add('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(value, bytes):
            add('"\\\\x' + value.hex() + '"')
        elif isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("pg_array: a datetime without a time zone would depend on the session's")
            add(value.isoformat())
        else:
            raise TypeError(f"pg_array: {type(value).__name__} is not str, bytes, datetime or None")
    return "{" + ",".join(parts) + "}"
