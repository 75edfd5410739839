"""How many SMS segments a text costs, and in which encoding, computed when a send is accepted.

GSM-7 (3GPP 23.038): 160 characters in one segment, 153 per segment when split (6 bytes of each go to
the concatenation header); the extension table's characters (``^ { } [ ] ~ \\ | €`` and form feed)
take two septets. Any character outside both tables makes the whole text UCS-2: 70 UTF-16 code units
in one segment, 67 per segment when split, and a character outside the Basic Multilingual Plane (most
emoji) is two code units. A segment never splits an escape pair or a surrogate pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

max_segments = 10

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class Segmentation:
    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def analyze(text: str) -> Segmentation:
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        widths = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return Segmentation("GSM-7", sum(widths), _count(widths, single=160, multi=153))
    widths = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return Segmentation("UCS-2", sum(widths), _count(widths, single=70, multi=67))


def _count(widths: list[int], *, single: int, multi: int) -> int:
    total = sum(widths)
    if total <= single:
        return 1 if total else 0
    segments, used = 1, 0
    for width in widths:  # a two-unit character never straddles two segments
        if used + width > multi:
            segments += 1
            used = 0
        used += width
    return segments
