"""When a bulk text may go out: inside a church-configurable window of the recipient's local day.

Bulk messages are not sent outside the window (default 09:00-20:00) in the recipient's time zone: the
contact's zone, else the church's, else UTC when neither names a known zone (bad data never raises).
They are deferred to the next opening, never dropped.

The rule, exactly, so that a SQL version can mirror it. ``local`` is the wall-clock time of day of the
instant ``now`` in the zone (PostgreSQL: ``(now AT TIME ZONE zone)::time``), and the window is open when

    start = end                                    -- "always open"
    start < end  and  start <= local < end         -- half-open: 09:00:00 is open, 20:00:00 is closed
    start > end  and  (local >= start or local < end)   -- end <= start wraps midnight: 22:00-06:00

It reads the wall clock alone, so a DST change only moves the clock: a 22:00-06:00 window is an hour
longer on a fall-back night and an hour shorter on a spring-forward night.

The next opening (``None`` when open at ``now``: send now) is the earliest instant after ``now`` at
which the rule holds. In practice that is the wall-clock ``start`` on the next date it occurs, with:

- a repeated ``start`` (fall-back): its first occurrence (``fold=0``);
- a ``start`` that does not exist that day (spring-forward gap): the first instant after the gap, i.e.
  the transition itself. A 02:30 start in America/New_York on 2026-03-08 opens at 03:00 EDT (07:00 UTC),
  or not at all that day if the window also ends inside the gap;
- a window ending inside a repeated hour: it closes, then reopens at the fall-back instant when the
  clock goes back into it; this follows from the rule and is the only other way a window opens.

PostgreSQL resolves a wall-clock time in a gap or a repeated hour differently (docs, "Handling of
Invalid or Ambiguous Timestamps"): ``(date + start) AT TIME ZONE zone`` reads it as standard time, which
gives 03:30 EDT for the 02:30 gap and the second occurrence (01:30 EST) for a repeated 01:30. A SQL twin
built on it therefore opens later than this rule in those cases, never earlier, provided it also checks
the ``open`` predicate before sending (for a window lying wholly inside a gap it names an instant at
which the window is still closed). Only windows with a bound between about 00:00 and 04:00 local are
affected; 09:00-20:00 never is. Zone names are matched exactly, then case-insensitively as PostgreSQL
does; store ``zone(...).key``, the canonical name, for SQL to use.
"""

from __future__ import annotations

import functools
import math
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_SEARCH_DAYS = range(-1, 8)  # local dates around now that can hold the next opening (DST can skip a whole day)


@dataclass(frozen=True)
class SendWindow:
    """Local wall-clock times, no tzinfo. ``end <= start`` wraps midnight; ``start == end`` is always open."""

    start: time = time(9, 0)
    end: time = time(20, 0)

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a send window is wall-clock time in the recipient's zone: no tzinfo")

    def contains(self, local: time) -> bool:
        start, end, local = self.start.replace(fold=0), self.end.replace(fold=0), local.replace(tzinfo=None, fold=0)
        if start == end:
            return True
        if start < end:
            return start <= local < end
        return local >= start or local < end


default_window = SendWindow()


def zone(name: str | None, fallback: str | None) -> ZoneInfo:
    """The recipient's zone, else the church's, else UTC; never raises on bad data."""
    return _lookup(name) or _lookup(fallback) or ZoneInfo("UTC")


def is_open(now: datetime, tz: ZoneInfo, window: SendWindow = default_window) -> bool:
    return window.contains(_aware(now).astimezone(tz).time())


def next_opening(now: datetime, tz: ZoneInfo, window: SendWindow = default_window) -> datetime | None:
    """None when the window is open at ``now``, else the UTC instant it next opens."""
    if is_open(now, tz, window):
        return None
    today = now.astimezone(tz).date()
    openings = [
        instant
        for offset in _SEARCH_DAYS
        for instant in _candidates(today + timedelta(days=offset), tz, window)
        if instant > now and is_open(instant, tz, window)
    ]
    if not openings:  # unreachable: a window with start != end opens at least every other day
        raise RuntimeError(f"no opening of {window} in {tz.key} near {now.isoformat()}")
    return min(openings)


def _candidates(day: date, tz: ZoneInfo, window: SendWindow) -> list[datetime]:
    """Every instant of ``day`` where the window may open: ``start`` (each occurrence, or the transition
    that skips it) and the fall-back transition when ``end`` is repeated."""
    start, end = (datetime.combine(day, t.replace(fold=0)) for t in (window.start, window.end))
    candidates = _occurrences(start, tz) or [_transition(start, tz)]
    if len(_occurrences(end, tz)) == 2:
        candidates.append(_transition(end, tz))
    return candidates


def _occurrences(wall: datetime, tz: ZoneInfo) -> list[datetime]:
    """The UTC instants whose local wall-clock time is ``wall``: none in a gap, two in a repeated hour."""
    instants = {_utc(wall, tz, fold) for fold in (0, 1)}
    return sorted(i for i in instants if i.astimezone(tz).replace(tzinfo=None, fold=0) == wall)


def _transition(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC offset change around a gapped or repeated ``wall``: the first whole second (tzdata changes
    offsets on whole seconds) between the two readings of ``wall`` at which the later offset applies."""
    lo, hi = sorted((_utc(wall, tz, 0), _utc(wall, tz, 1)))
    before = lo.astimezone(tz).utcoffset()
    a, b = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while b - a > 1:
        mid = (a + b) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            a = mid
        else:
            b = mid
    return datetime.fromtimestamp(b, UTC)


def _utc(wall: datetime, tz: ZoneInfo, fold: int) -> datetime:
    return wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("quiet hours need an aware datetime (UTC typically)")
    return now


@functools.lru_cache(maxsize=512)
def _lookup(name: str | None) -> ZoneInfo | None:
    key = (name or "").strip()
    if not key:
        return None
    zone = _load(key)
    if zone is None and (canonical := _keys_by_casefold().get(key.casefold())) is not None:
        zone = _load(canonical)
    return zone


def _load(key: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(key)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; bad paths raise ValueError
        return None


@functools.cache
def _keys_by_casefold() -> dict[str, str]:
    return {key.casefold(): key for key in zoneinfo.available_timezones()}
