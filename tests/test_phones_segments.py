from __future__ import annotations

import pytest

from common.phones import InvalidPhone, normalize


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
