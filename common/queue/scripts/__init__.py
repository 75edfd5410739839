"""The queue's Lua scripts: one ``<name>.lua`` per atomic operation, plus ``lib.lua``.

``lib.lua`` holds the helpers several scripts need (key building, promote, reclaim, token buckets).
Redis 6.2 (what the embedded server runs) has no FUNCTION libraries, so the loader prepends the
library to each script's source; every helper is a Lua ``local``, so nothing leaks between scripts.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Literal

ScriptName = Literal["enqueue", "dequeue", "ack", "renew", "retry_later", "promote_due", "reclaim_expired", "remove", "depths"]
SCRIPT_NAMES: tuple[ScriptName, ...] = (
    "enqueue", "dequeue", "ack", "renew", "retry_later", "promote_due", "reclaim_expired", "remove", "depths",
)  # fmt: skip


def _read(filename: str) -> str:
    return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")


@functools.cache
def source(name: ScriptName) -> str:
    """The complete Lua source sent to Redis for ``name``: the library, then the script."""
    return f"{_read('lib.lua')}\n-- ---- {name}.lua ----\n{_read(f'{name}.lua')}"
