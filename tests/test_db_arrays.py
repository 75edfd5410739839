"""common/db/arrays.py: the array literals read back from PostgreSQL as exactly the values written."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.db.arrays import pg_array

AWKWARD = ["plain", "", "NULL", "null", 'a"b', "a\\b", "{x}", "a,b", " lead", "tab\there", "new\nline", "ünï", "é"]


def test_text_round_trips_whatever_it_holds(pool):
    values = [*AWKWARD, None]
    assert pool.run("SELECT CAST(:a AS text[])", a=pg_array(values))[0][0] == values


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # read-only
@given(st.lists(st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))))
def test_any_text_round_trips(pool, values):
    assert pool.run("SELECT CAST(:a AS text[])", a=pg_array(values))[0][0] == values


def test_bytes_and_uuids_and_times(pool):
    blobs = [bytes(range(256)), b"", os.urandom(33)]
    assert pool.run("SELECT CAST(:a AS bytea[])", a=pg_array(blobs))[0][0] == blobs
    ids = ["0190f5d2-8c4e-7a31-9c1e-2b7d3f4a5b6c", None]
    assert pool.run("SELECT CAST(CAST(:a AS uuid[]) AS text[])", a=pg_array(ids))[0][0] == ids
    when = [datetime(2026, 12, 4, 19, 0, 0, 123456, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-6)))]
    read = pool.run("SELECT CAST(:a AS timestamptz[])", a=pg_array(when))[0][0]
    assert read == when


def test_refuses_what_it_cannot_write_exactly():
    with pytest.raises(ValueError, match="time zone"):
        pg_array([datetime(2026, 1, 1)])  # the point: a naive datetime
    with pytest.raises(TypeError):
        pg_array([1])  # type: ignore[list-item]
