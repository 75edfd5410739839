"""Phone numbers: parse what a church typed, store E.164, say why a number is refused."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

default_region = "US"  # numbers without +country code are read as US/Canada (NANP)

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_LENGTH_REASONS = {
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "missing the area code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
}
_NOT_TEXTABLE = {
    PhoneNumberType.FIXED_LINE: "a landline cannot receive texts",
    PhoneNumberType.PREMIUM_RATE: "premium-rate numbers cannot receive texts",
    PhoneNumberType.SHARED_COST: "shared-cost numbers cannot receive texts",
    PhoneNumberType.PAGER: "pagers cannot receive texts",
}


@dataclass(frozen=True)
class InvalidPhone(Exception):
    reason: str

    def __str__(self) -> str:
        return self.reason


def normalize(raw: str, region: str = default_region) -> str:
    """``"(555) 123-4567"`` -> ``"+15551234567"``; ``InvalidPhone`` with a reason a person understands."""
    text = raw.strip()
    if not text:
        raise InvalidPhone("empty")
    if len(text) > 40:
        raise InvalidPhone("too long")
    # The parser skips what it does not understand ("312555\x000142", "+1312\r\n5550142"): refuse instead.
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text):
        raise InvalidPhone("has a control character (a line break, a tab, NUL...)")
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidPhone(_PARSE_REASONS.get(exc.error_type, "not a phone number")) from None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE:
        raise InvalidPhone(_LENGTH_REASONS.get(possible, "wrong number of digits"))
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid number for its country")
    kind = phonenumbers.number_type(number)
    if kind in _NOT_TEXTABLE:
        raise InvalidPhone(_NOT_TEXTABLE[kind])
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
