"""Telnyx's default opt-out handling: keyword families and per-messaging-profile block rules.

Keywords (shared/reference/telnyx.md section 4, "Opt-out"), the one place they are defined:

- STOP family: ``STOP``, ``STOPALL``, ``STOP ALL``, ``UNSUBSCRIBE``, ``CANCEL``, ``END``, ``QUIT``
  create a block rule for (profile of the church number, member number).
- START family: ``START``, ``UNSTOP`` remove it. ``YES`` does *not*: it is not one of Telnyx's
  default opt-in keywords (a profile can add it with an autoresp config; the sandbox does not).
- HELP family: ``HELP``, ``INFO`` only get the help auto-response; no block change.

A message is a keyword only when the whole text, stripped of surrounding whitespace, is one
(case-insensitive; ``STOP ALL`` with any whitespace between the words). ``please stop`` is not.

Block rules are per messaging profile: a STOP sent to one number of a profile blocks every number
of that profile. ``SandboxConfig.number_profiles`` maps church numbers to profile names; a number
it does not list is its own profile. A rule is stored under the profile name the church number
had when the keyword arrived.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Mapping

__all__ = ["BlockList", "Keyword", "classify_keyword", "profile_of"]


class Keyword(enum.StrEnum):
    """The keyword family of an inbound text; the value is Telnyx's ``autoresponse_type``."""

    STOP = "STOP"
    START = "START"
    HELP = "HELP"


_KEYWORDS: dict[str, Keyword] = {
    **dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"), Keyword.STOP),
    **dict.fromkeys(("START", "UNSTOP"), Keyword.START),
    **dict.fromkeys(("HELP", "INFO"), Keyword.HELP),
}
_STOP_ALL = re.compile(r"STOP\s+ALL")


def classify_keyword(text: str | None) -> Keyword | None:
    """The keyword family ``text`` belongs to, or None for an ordinary message."""
    if not text:
        return None
    word = text.strip()
    if not word or not word.isascii():  # ASCII only: U+017F (long s) upper-cases to "S"
        return None
    word = word.upper()
    keyword = _KEYWORDS.get(word)
    if keyword is not None:
        return keyword
    if word.startswith("STOP") and _STOP_ALL.fullmatch(word):
        return Keyword.STOP
    return None


def profile_of(number_profiles: Mapping[str, str], number: str) -> str:
    """The messaging profile of a church number: its ``number_profiles`` entry, else itself."""
    return number_profiles.get(number, number)


class BlockList:
    """The block rules, as (profile, member number) pairs. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, profile: str, number: str) -> bool:
        """Block ``number`` on ``profile``; False when it already was."""
        with self._lock:
            key = (profile, number)
            if key in self._blocks:
                return False
            self._blocks.add(key)
            return True

    def remove(self, profile: str, number: str) -> bool:
        """Lift the block; False when there was none."""
        with self._lock:
            try:
                self._blocks.remove((profile, number))
            except KeyError:
                return False
            return True

    def is_blocked(self, profile: str, number: str) -> bool:
        return (profile, number) in self._blocks  # a set lookup is atomic under the GIL

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()

    def to_list(self) -> list[dict[str, str]]:
        """``[{"profile": ..., "number": ...}]``, sorted."""
        with self._lock:
            pairs = sorted(self._blocks)
        return [{"profile": profile, "number": number} for profile, number in pairs]
