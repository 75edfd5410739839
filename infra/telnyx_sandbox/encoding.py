"""SMS encoding and part counting, as Telnyx bills it.

- GSM-7: 160 septets in one part, 153 per part when split; the extension characters
  ``^ { } \\ [ ~ ] | €`` and form feed take two septets (escape + char) and never straddle a part.
- UCS-2 (reported as ``"UCS-2"``): 70 UTF-16 code units in one part, 67 per part when split; a
  character outside the BMP (most emoji) is a surrogate pair, two units, never split.
- ``encoding="auto"`` picks GSM-7 when every character is in the GSM 03.38 default alphabet or its
  extension table, UCS-2 otherwise (one non-GSM character switches the whole message).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GSM7", "MAX_PARTS", "UCS2", "Segmentation", "segment"]

GSM7 = "GSM-7"
UCS2 = "UCS-2"
MAX_PARTS = 10

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM_ALL = GSM_BASIC | GSM_EXTENSION
_GSM_EXTENSION_CHARS = tuple(GSM_EXTENSION)

GSM7_SINGLE, GSM7_MULTI = 160, 153  # septets
UCS2_SINGLE, UCS2_MULTI = 70, 67  # UTF-16 code units


@dataclass(frozen=True, slots=True)
class Segmentation:
    encoding: str  # GSM7 or UCS2
    parts: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    num_chars: int  # Python characters (code points)


def is_gsm7(text: str) -> bool:
    return _GSM_ALL.issuperset(text)


def segment(text: str, mode: str = "auto") -> Segmentation:
    """Encoding and part count for ``text``; ``mode`` is ``auto``, ``gsm7`` or ``ucs2``.

    Raises ``ValueError`` when ``mode="gsm7"`` and the text has a character GSM-7 cannot encode.
    """
    if mode == "ucs2":
        return _ucs2(text)
    if is_gsm7(text):
        return _gsm7(text)
    if mode == "gsm7":
        raise ValueError("text contains characters that cannot be encoded in GSM-7")
    return _ucs2(text)


def _gsm7(text: str) -> Segmentation:
    units = len(text) + sum(text.count(c) for c in _GSM_EXTENSION_CHARS)
    if units <= GSM7_SINGLE:
        return Segmentation(GSM7, 1, units, len(text))
    parts, used = 1, 0
    for char in text:
        width = 2 if char in GSM_EXTENSION else 1
        if used + width > GSM7_MULTI:
            parts, used = parts + 1, 0
        used += width
    return Segmentation(GSM7, parts, units, len(text))


def _ucs2(text: str) -> Segmentation:
    units = len(text.encode("utf-16-le")) // 2
    if units <= UCS2_SINGLE:
        return Segmentation(UCS2, 1, units, len(text))
    parts, used = 1, 0
    for char in text:
        width = 2 if ord(char) > 0xFFFF else 1
        if used + width > UCS2_MULTI:
            parts, used = parts + 1, 0
        used += width
    return Segmentation(UCS2, parts, units, len(text))
