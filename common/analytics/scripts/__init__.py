"""The analytics stream's Lua scripts: ``read.lua`` (reclaim, read, detect loss) and ``ack.lua`` (ack, trim).

One script per operation, atomic and one round trip, like the queue's (common/queue/scripts/).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Literal

ScriptName = Literal["read", "ack"]
SCRIPT_NAMES: tuple[ScriptName, ...] = ("read", "ack")


@functools.cache
def source(name: ScriptName) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
