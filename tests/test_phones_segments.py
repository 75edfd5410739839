from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.phones import InvalidPhone, normalize
from common.segments import GSM7_BASIC, GSM7_EXTENSION, analyze


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("(312) 555-0142", "+13125550142"),
        ("312.555.0142", "+13125550142"),
        ("+1 312 555 0142", "+13125550142"),
        ("+44 7400 123456", "+447400123456"),
    ],
)
def test_normalize(raw, e164):
    assert normalize(raw) == e164


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("hello", "not a phone number"),
        ("555-0142", "missing the area code"),
        ("+1 312 555 01423", "too long"),
        ("+1 999 555 0142", "not a valid number for its country"),
        ("+44 20 7946 0958", "a landline cannot receive texts"),
        ("+1 900 555 0142", "premium-rate numbers cannot receive texts"),
    ],
)
def test_invalid_numbers_say_why(raw, reason):
    with pytest.raises(InvalidPhone) as err:
        normalize(raw)
    assert str(err.value) == reason


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("{" * 80, "GSM-7", 160, 1),
        ("{" * 81, "GSM-7", 162, 2),
        ("a" * 152 + "{", "GSM-7", 154, 1),  # fits one segment of 160
        ("a" * 159 + "€", "GSM-7", 161, 2),
        ("é" * 10, "GSM-7", 10, 1),
        ("ç", "UCS-2", 1, 1),  # lower-case c-cedilla is not GSM-7 (only upper-case)
        ("Sunday 🙏", "UCS-2", 9, 1),
        ("🙏" * 35, "UCS-2", 70, 1),
        ("🙏" * 36, "UCS-2", 72, 2),
        ("a" * 70, "GSM-7", 70, 1),
        ("я" * 71, "UCS-2", 71, 2),
        ("я" * 134, "UCS-2", 134, 2),
        ("я" * 135, "UCS-2", 135, 3),
    ],
)
def test_segments(text, encoding, units, segments):
    seg = analyze(text)
    assert (seg.encoding, seg.units, seg.segments) == (encoding, units, segments)


def test_an_escape_pair_never_straddles_two_segments():
    # 152 plain + '{' = 154 septets: over one segment; the '{' would start at 153 -> it moves to part 2.
    assert analyze("a" * 152 + "{" + "a" * 8).segments == 2
    assert analyze("a" * 152 + "{" + "a" * 153).segments == 3


@given(st.text(alphabet=st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION)), max_size=2000))
def test_gsm_segments_bound(text):
    seg = analyze(text)
    assert seg.encoding == "GSM-7"
    if seg.units > 160:
        assert (seg.segments - 1) * 152 < seg.units <= seg.segments * 153


@given(st.text(max_size=800))
def test_ucs2_bound(text):
    seg = analyze(text)
    if seg.encoding == "UCS-2" and seg.units > 70:
        assert (seg.segments - 1) * 66 < seg.units <= seg.segments * 67
