from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.compliance.quiet_hours import SendWindow, default_window, is_open, next_opening, zone

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
AUCKLAND = ZoneInfo("Pacific/Auckland")
KOLKATA = ZoneInfo("Asia/Kolkata")
CHICAGO = ZoneInfo("America/Chicago")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold)  # type: ignore[misc]


def test_default_window_is_nine_to_eight():
    assert default_window == SendWindow(time(9), time(20))


@pytest.mark.parametrize(
    ("wall", "open_"),
    [
        (time(8, 59, 59, 999999), False),
        (time(9, 0), True),  # [start, end): the opening instant is open
        (time(12, 0), True),
        (time(19, 59, 59), True),
        (time(19, 59, 59, 999999), True),
        (time(20, 0), False),  # ... and the closing instant is closed
        (time(23, 59), False),
        (time(0, 0), False),
    ],
)
def test_boundaries_of_the_default_window(wall, open_):
    now = datetime.combine(datetime(2026, 6, 10).date(), wall, tzinfo=CHICAGO).astimezone(UTC)
    assert is_open(now, CHICAGO) is open_
    assert (next_opening(now, CHICAGO) is None) is open_


def test_before_nine_opens_the_same_day():
    now = local(CHICAGO, 2026, 6, 10, 6, 45).astimezone(UTC)
    assert next_opening(now, CHICAGO) == utc(2026, 6, 10, 14, 0)  # 09:00 CDT


@pytest.mark.parametrize("wall", [time(20, 0), time(20, 0, 1), time(23, 59, 59)])
def test_after_eight_opens_the_next_day(wall):
    now = datetime.combine(datetime(2026, 6, 10).date(), wall, tzinfo=CHICAGO)
    opening = next_opening(now, CHICAGO)
    assert opening == utc(2026, 6, 11, 14, 0)
    assert opening is not None and opening.tzinfo is UTC


def test_just_after_midnight_opens_the_same_local_day():
    now = local(CHICAGO, 2026, 6, 11, 0, 0, 1)
    assert next_opening(now, CHICAGO) == utc(2026, 6, 11, 14, 0)


def test_now_in_any_zone_is_the_same_instant():
    now = local(KOLKATA, 2026, 6, 11, 0, 30)  # = 2026-06-10 14:00 CDT: open in Chicago
    assert is_open(now, CHICAGO)
    assert next_opening(now, CHICAGO) is None


NIGHT_SHIFT = SendWindow(time(22, 0), time(6, 0))


@pytest.mark.parametrize(
    ("wall", "open_"),
    [
        (time(21, 59, 59), False),
        (time(22, 0), True),
        (time(23, 59, 59), True),
        (time(0, 0), True),
        (time(5, 59, 59), True),
        (time(6, 0), False),
        (time(12, 0), False),
    ],
)
def test_a_window_wrapping_midnight(wall, open_):
    now = datetime.combine(datetime(2026, 6, 10).date(), wall, tzinfo=CHICAGO)
    assert is_open(now, CHICAGO, NIGHT_SHIFT) is open_


def test_a_window_wrapping_midnight_opens_the_same_evening():
    now = local(CHICAGO, 2026, 6, 10, 6, 0)
    assert next_opening(now, CHICAGO, NIGHT_SHIFT) == local(CHICAGO, 2026, 6, 10, 22, 0).astimezone(UTC)


ALWAYS = [SendWindow(time(0), time(0)), SendWindow(time(9), time(9)), SendWindow(time(7, 30), time(7, 30))]


@pytest.mark.parametrize("window", ALWAYS)
@pytest.mark.parametrize("hour", range(24))
def test_start_equal_to_end_is_always_open(window, hour):
    now = utc(2026, 3, 8, hour, 30)
    assert is_open(now, NEW_YORK, window)
    assert next_opening(now, NEW_YORK, window) is None


def test_zones_far_apart_at_one_instant():
    now = utc(2026, 6, 15, 20, 30)
    assert is_open(now, LOS_ANGELES)  # 13:30 PDT
    assert next_opening(now, LOS_ANGELES) is None
    # 08:30 NZST on the 16th: opens at 09:00 NZST (UTC+12)
    assert not is_open(now, AUCKLAND)
    assert next_opening(now, AUCKLAND) == utc(2026, 6, 15, 21, 0)
    # 02:00 IST on the 16th: opens at 09:00 IST (UTC+5:30)
    assert not is_open(now, KOLKATA)
    assert next_opening(now, KOLKATA) == utc(2026, 6, 16, 3, 30)


def test_auckland_in_its_summer():
    now = utc(2026, 1, 10, 9, 0)  # 22:00 NZDT (UTC+13)
    assert next_opening(now, AUCKLAND) == utc(2026, 1, 10, 20, 0)  # 09:00 NZDT on the 11th


# America/New_York, 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00 UTC.
def test_default_window_on_the_spring_forward_day():
    assert next_opening(utc(2026, 3, 8, 5, 0), NEW_YORK) == utc(2026, 3, 8, 13, 0)  # 09:00 EDT
    assert next_opening(utc(2026, 3, 7, 5, 0), NEW_YORK) == utc(2026, 3, 7, 14, 0)  # 09:00 EST
    assert is_open(utc(2026, 3, 8, 23, 59, 59), NEW_YORK)  # 19:59:59 EDT
    assert not is_open(utc(2026, 3, 9, 0, 0), NEW_YORK)  # 20:00 EDT


def test_a_start_inside_the_gap_opens_at_the_first_instant_after_it():
    window = SendWindow(time(2, 30), time(5, 0))
    opening = next_opening(utc(2026, 3, 8, 5, 0), NEW_YORK, window)  # 00:00 EST
    assert opening == utc(2026, 3, 8, 7, 0)  # 03:00 EDT, not 03:30 EDT (PostgreSQL's reading)
    assert is_open(opening, NEW_YORK, window)
    assert not is_open(opening - timedelta(microseconds=1), NEW_YORK, window)  # 01:59:59.999999 EST


def test_a_window_inside_the_gap_does_not_open_that_day():
    window = SendWindow(time(2, 10), time(2, 50))
    assert next_opening(utc(2026, 3, 8, 5, 0), NEW_YORK, window) == utc(2026, 3, 9, 6, 10)  # 02:10 EDT on the 9th


def test_a_night_window_ending_inside_the_gap_closes_at_the_jump():
    window = SendWindow(time(22, 0), time(2, 30))
    assert is_open(utc(2026, 3, 8, 6, 59, 59), NEW_YORK, window)  # 01:59:59 EST
    assert not is_open(utc(2026, 3, 8, 7, 0), NEW_YORK, window)  # 03:00 EDT
    assert next_opening(utc(2026, 3, 8, 7, 0), NEW_YORK, window) == utc(2026, 3, 9, 2, 0)  # 22:00 EDT


# America/New_York, 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00 UTC; 01:00-02:00 happens twice.
def test_default_window_on_the_fall_back_day():
    assert next_opening(utc(2026, 11, 1, 4, 0), NEW_YORK) == utc(2026, 11, 1, 14, 0)  # 09:00 EST
    assert not is_open(utc(2026, 11, 2, 1, 0), NEW_YORK)  # 20:00 EST


def test_a_repeated_start_opens_at_its_first_occurrence():
    window = SendWindow(time(1, 30), time(5, 0))
    assert next_opening(utc(2026, 11, 1, 4, 0), NEW_YORK, window) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert is_open(utc(2026, 11, 1, 6, 0), NEW_YORK, window) is False  # 01:00 EST: the wall clock went back
    assert next_opening(utc(2026, 11, 1, 6, 0), NEW_YORK, window) == utc(2026, 11, 1, 6, 30)  # 01:30 EST


def test_a_window_ending_inside_the_repeated_hour_reopens_at_the_fall_back():
    window = SendWindow(time(20, 0), time(1, 30))
    assert is_open(utc(2026, 11, 1, 5, 29), NEW_YORK, window)  # 01:29 EDT
    assert not is_open(utc(2026, 11, 1, 5, 30), NEW_YORK, window)  # 01:30 EDT
    assert next_opening(utc(2026, 11, 1, 5, 45), NEW_YORK, window) == utc(2026, 11, 1, 6, 0)  # 01:00 EST
    assert next_opening(utc(2026, 11, 1, 6, 30), NEW_YORK, window) == utc(2026, 11, 2, 1, 0)  # 20:00 EST


# Europe/London: 2026-03-29 01:00 GMT -> 02:00 BST; 2026-10-25 02:00 BST -> 01:00 GMT.
def test_london_spring_forward():
    assert next_opening(utc(2026, 3, 28, 22, 0), LONDON) == utc(2026, 3, 29, 8, 0)  # 09:00 BST
    assert next_opening(utc(2026, 3, 28, 22, 0), LONDON, SendWindow(time(1, 30), time(4))) == utc(2026, 3, 29, 1, 0)


def test_london_fall_back():
    assert next_opening(utc(2026, 10, 24, 22, 0), LONDON) == utc(2026, 10, 25, 9, 0)  # 09:00 GMT
    assert next_opening(utc(2026, 10, 24, 22, 0), LONDON, SendWindow(time(1, 15), time(4))) == utc(2026, 10, 25, 0, 15)


def test_a_naive_now_is_refused():
    with pytest.raises(ValueError, match="aware"):
        is_open(datetime(2026, 6, 10, 12), CHICAGO)
    with pytest.raises(ValueError, match="aware"):
        next_opening(datetime(2026, 6, 10, 12), CHICAGO)


def test_a_window_with_a_zone_is_refused():
    with pytest.raises(ValueError, match="tzinfo"):
        SendWindow(time(9, tzinfo=UTC), time(20))


@pytest.mark.parametrize(
    ("contact", "church", "expected"),
    [
        ("America/Los_Angeles", "America/New_York", "America/Los_Angeles"),
        (None, "America/New_York", "America/New_York"),
        ("", "America/New_York", "America/New_York"),
        ("   ", "Asia/Kolkata", "Asia/Kolkata"),
        (" Pacific/Auckland\n", "America/New_York", "Pacific/Auckland"),
        ("america/chicago", "America/New_York", "America/Chicago"),  # PostgreSQL matches names case-insensitively
        ("Mars/Olympus_Mons", "America/New_York", "America/New_York"),
        ("Mars/Olympus_Mons", "Not/A_Zone", "UTC"),
        (None, None, "UTC"),
        ("", "", "UTC"),
        ("../../etc/passwd", "/etc/localtime", "UTC"),
        ("America", "zone.tab", "UTC"),  # a folder; a tzdata file that is not a zone
        ("America/New_York\x00", "x" * 5000, "UTC"),
    ],
)
def test_zone_falls_back_and_never_raises(contact, church, expected):
    assert zone(contact, church).key == expected


ZONES = [
    ZoneInfo(name)
    for name in (
        "America/New_York",
        "Europe/London",
        "Pacific/Auckland",
        "America/Los_Angeles",
        "Asia/Kolkata",
        "Australia/Lord_Howe",  # 30-minute DST shift
        "America/Santiago",  # changes at midnight
        "Asia/Kathmandu",
        "UTC",
    )
]
# Instants near DST changes in those zones, so that examples land on transition days often.
TRANSITIONS = [
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 4, 4, 14),
    utc(2026, 9, 26, 14),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15, 30),
    utc(2026, 4, 5, 3),
    utc(2026, 9, 6, 4),
]
NOW = st.one_of(
    st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
    st.builds(
        lambda base, seconds: base + timedelta(seconds=seconds),
        st.sampled_from(TRANSITIONS),
        st.integers(-130_000, 130_000),
    ),
)
WALL = st.one_of(
    st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45])),
    st.times(),
)


@settings(max_examples=300, deadline=None)
@given(NOW, st.sampled_from(ZONES), WALL, WALL)
def test_next_opening_is_the_first_open_instant_after_now(now, tz, start, end):
    window = SendWindow(start, end)
    opening = next_opening(now, tz, window)
    if opening is None:
        assert is_open(now, tz, window)
        return
    assert not is_open(now, tz, window)
    assert opening > now
    assert opening.tzinfo is UTC
    assert is_open(opening, tz, window)
    assert not is_open(opening - timedelta(microseconds=1), tz, window)
    probe = now + timedelta(minutes=15)
    while probe < opening:
        assert not is_open(probe, tz, window), probe
        probe += timedelta(minutes=15)
    assert opening - now <= timedelta(days=2, hours=1)
