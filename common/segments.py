"""How many SMS segments a text costs, in which encoding, and what to send: computed when a send is accepted.

The counts are what the church is billed on, so they must match what the carrier transmits.

Encodings and segments (3GPP TS 23.038 and TS 23.040 9.2.3.24.1; Telnyx "Message size and encoding")
-------------------------------------------------------------------------------------------------------
- **GSM-7**: 160 septets in one segment, 153 per segment when split (6 bytes of each go to the
  concatenation header). A character of the default extension table (``\\f ^ { } \\ [ ~ ] | €``) is an
  escape pair, two septets.
- **UCS-2** (UTF-16 on the wire): used as soon as one character is not GSM-7. 70 UTF-16 code units in
  one segment, 67 per segment when split; a character outside the Basic Multilingual Plane (most emoji)
  is a surrogate pair, two code units.
- A two-unit item (escape pair, surrogate pair) never straddles two segments: it moves whole to the next
  one. Empty text is 0 segments. A message may have at most ``max_segments`` (10) segments.

Where the GSM-7 alphabet comes from: the ``gsm0338`` codec
----------------------------------------------------------
Membership and septet widths are not hand-written here: they are read from the ``gsm0338`` codec
("gsm03.38") once at import. Every one-byte and every ESC-prefixed two-byte sequence is decoded, and a
character is GSM-7 iff ``ch.encode("gsm03.38")`` succeeds and decodes back to ``ch``; its width is the
length of that encoding. That set is complete: a character that round-trips decodes from its own
encoding, which the codec never makes longer than ESC + one byte, so it is among the decoded ones.
Per-character round-tripping implies whole-text round-tripping (and the reverse) because the code is
prefix-free once ESC is excluded: each character is one byte other than 0x1B, or 0x1B + one byte. The
tests check this against ``text.encode("gsm03.38")`` on the whole BMP and on random text.
What was found in gsm0338 1.1.0:

- It maps exactly the TS 23.038 default alphabet (0x00-0x7F) and the default extension table (10
  characters); the Spanish single-shift table ships in the package but is not used by the registered
  codec. Nothing else: no national shift tables, no normalisation, bytes >= 0x80 are errors.
- It does **not** lossy-map look-alikes on encode: ``"ç"``, ``"ê"``, the backtick, no-break space, tab
  and NUL all raise ``UnicodeEncodeError``; nothing is silently folded (``"ç"`` is not turned into
  ``"Ç"``). Every encodable character round-trips, with one exception:
- **ESC (U+001B)** is in its table (0x1B) and encodes to a bare 0x1B, which is the escape prefix itself:
  decoding swallows it or joins it to the next septet (``"\\x1b("`` decodes as ``"{"``, ``"\\x1b"`` as
  ``""``). A handset would do the same, so the round-trip rule makes U+001B non-GSM and a text holding
  it UCS-2. (The hand-written table this module replaced listed ESC as a one-septet GSM character.)
- **0x09 is capital Ç (U+00C7)**, as drawn in TS 23.038 and used by Android's GsmAlphabet, Kannel and
  Clickatell; the codec's README says it deviates here from the Unicode mapping file GSM0338.TXT, whose
  header "corrects" 0x09 to *small* ç (U+00E7) and keeps Ç only as a commented-out line. So ``"Ç"`` is
  one septet and ``"ç"`` makes a text UCS-2. The Telnyx sandbox (infra/telnyx_sandbox/encoding.py)
  makes the same choice.

The fast path: the tables are plain sets derived from the codec, so ``analyze`` is a set test plus
``str.count`` calls (about 3 µs for 160 ASCII characters); it only walks segment boundaries when a text
is multi-part and contains two-unit items, and then it visits one position per segment, not per character.

Smart encoding
--------------
``smart_encode`` replaces typographic look-alikes with GSM-7 characters, with the explicit table
``SMART_REPLACEMENTS`` below (based on Twilio's published Smart Encoding list, which Telnyx's smart
encoding mirrors in spirit: curly quotes, dashes, ellipsis, fancy spaces). Every key is outside GSM-7 and
every value is GSM-7, so it is the identity on GSM-7 text and idempotent. Summary:

=====================================================  ===========================================
Characters                                             Replacement
=====================================================  ===========================================
“ ” „ ‟ « » ″ ʺ ˮ ❝ ❞ 〝 〞                             ``"``
‘ ’ ‚ ‛ ‹ › ′ ‵ ʹ ʻ ʼ ʽ ˈ ˊ ˋ ´ ❛ ❜ and the backtick `   ``'``
‐ ‑ ‒ – — ― ⁃ − ﹣ • (bullet)                           ``-``
… (ellipsis)                                           ``...``
no-break, en/em/thin/hair/figure/… spaces (U+00A0,     a space
U+2000-U+200A, U+202F, U+205F, U+3000), tab
line / paragraph separator (U+2028, U+2029)            ``\\n``
zero-width space/joiners, word joiner, LRM/RLM, BOM,   removed
soft hyphen (U+200B-U+200F, U+2060, U+FEFF, U+00AD)
fullwidth ASCII U+FF01-U+FF5E                          the ASCII character (｀ → ``'``)
ligatures ﬀ ﬁ ﬂ ﬃ ﬄ ﬆ                                  ff fi fl ffi ffl st
fraction slash ⁄, division slash ∕; ¼ ½ ¾              ``/``; ``1/4 1/2 3/4``
=====================================================  ===========================================

Deliberate differences from Twilio's list: the low single quote ‚ and the single guillemets ‹ › become
``'`` (they are quotation marks; Twilio's calculator has ``,`` and a swapped ``>``/``<``); the line and
paragraph separators become a newline; a tab becomes one space. Letters are never transliterated
(``ê`` stays ``ê``, ``ç`` is not turned into ``Ç``): that would change the church's words, not typography.

Policy (``prepare``)
--------------------
The smart-encoded text is sent only when it is GSM-7 **and** costs strictly fewer segments than the
original; otherwise the original is sent untouched. Why:

- If a non-GSM character (an emoji, CJK) survives, the text stays UCS-2 and the replacements save nothing:
  a curly quote and a straight one are both one UTF-16 unit, while "…" → "..." and "ﬁ" → "fi" *add* units;
  only removed zero-width characters would save any, and removing a zero-width joiner inside UCS-2 text
  breaks emoji sequences (👨‍👩‍👧). Twilio and Bird send the original in that case too.
- Replacing can cost more even when it reaches GSM-7 (seventy "…" are one UCS-2 segment but 210 septets,
  two GSM-7 segments), so the counts are compared rather than assumed.
- On a tie (a short "Don’t forget" is one segment either way) the church's own characters are kept.

So ``prepare(text).segments <= analyze(text).segments`` always, and ``smart_encoded`` says whether the text
to send differs from the one given. If the Telnyx messaging profile also has ``smart_encoding`` enabled,
Telnyx would re-run its own replacements on an original we kept (in a UCS-2 text "…" → "..." can add a
segment), so for the counts here to be the billed ones the profile's smart encoding should be off, or the
request should pin the encoding.
"""

# ruff: noqa: RUF002, RUF003  (this module is about look-alike characters: they are shown on purpose)
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import gsm0338  # type: ignore[import-untyped]  # noqa: F401  (importing it registers the "gsm03.38" codec)

max_segments: Final = 10

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_SINGLE: Final = 160  # septets in a one-segment message
GSM7_MULTI: Final = 153  # septets per segment of a concatenated message
UCS2_SINGLE: Final = 70  # UTF-16 code units in a one-segment message
UCS2_MULTI: Final = 67  # UTF-16 code units per segment of a concatenated message

CODEC: Final = "gsm03.38"
_ESC: Final = 0x1B


def _codec_alphabet() -> dict[str, int]:
    """Every character the codec encodes losslessly, with its width in septets (1, or 2 for ESC + char)."""
    widths: dict[str, int] = {}
    for byte in range(0x100):
        for sequence in (bytes((byte,)), bytes((_ESC, byte))):
            try:
                char = sequence.decode(CODEC)
            except UnicodeDecodeError:
                continue
            if len(char) != 1:
                continue
            try:
                encoded = char.encode(CODEC)
            except UnicodeEncodeError:
                continue
            if encoded.decode(CODEC) == char:
                widths[char] = len(encoded)
    return widths


_GSM7_WIDTHS: Final = _codec_alphabet()
GSM7_CHARACTERS: Final = frozenset(_GSM7_WIDTHS)
GSM7_BASIC: Final = frozenset(char for char, width in _GSM7_WIDTHS.items() if width == 1)
GSM7_EXTENSION: Final = frozenset(char for char, width in _GSM7_WIDTHS.items() if width == 2)
_EXTENSION_CHARS: Final = tuple(sorted(GSM7_EXTENSION))


@dataclass(frozen=True, slots=True)
class Segmentation:
    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


@dataclass(frozen=True, slots=True)
class SmartEncoded:
    text: str
    replaced: int  # characters replaced or removed


@dataclass(frozen=True, slots=True)
class PreparedText:
    text: str  # what to send and store
    encoding: Encoding
    units: int
    segments: int
    smart_encoded: bool  # True when ``text`` is the smart-encoded form of the text given
    replaced: int  # characters replaced or removed (0 when smart_encoded is False)


def is_gsm7(text: str) -> bool:
    """Whether the whole text can travel as GSM-7 (default alphabet + extension table)."""
    return GSM7_CHARACTERS.issuperset(text)


def analyze(text: str) -> Segmentation:
    """Encoding, units and segments of ``text`` exactly as given (no smart encoding)."""
    if GSM7_CHARACTERS.issuperset(text):
        units = len(text) + sum(map(text.count, _EXTENSION_CHARS))
        if units <= GSM7_SINGLE:
            return Segmentation("GSM-7", units, 1 if units else 0)
        if units == len(text):  # no escape pairs: every split point is allowed
            return Segmentation("GSM-7", units, -(-units // GSM7_MULTI))
        septets = text  # one str character per septet: each extension character becomes ESC + itself
        for char in _EXTENSION_CHARS:
            septets = septets.replace(char, "\x1b" + char)
        return Segmentation("GSM-7", units, _split(units, GSM7_MULTI, lambda i: septets[i] == "\x1b"))
    try:
        data, lone_surrogates = text.encode("utf-16-le"), False
    except UnicodeEncodeError:  # a lone surrogate (possible in a Python str) is one 16-bit unit
        data, lone_surrogates = text.encode("utf-16-le", "surrogatepass"), True
    units = len(data) // 2
    if units <= UCS2_SINGLE:
        return Segmentation("UCS-2", units, 1)  # not GSM-7, so not empty
    if units == len(text) and not lone_surrogates:  # no surrogate pairs: every split point is allowed
        return Segmentation("UCS-2", units, -(-units // UCS2_MULTI))

    def starts_pair(i: int) -> bool:  # unit i is a high surrogate and unit i + 1 its low surrogate
        return 0xD8 <= data[2 * i + 1] <= 0xDB and 0xDC <= data[2 * i + 3] <= 0xDF

    return Segmentation("UCS-2", units, _split(units, UCS2_MULTI, starts_pair))


def _split(units: int, per_segment: int, starts_pair: Callable[[int], bool]) -> int:
    """Segments of a multi-part message: each takes ``per_segment`` units, one fewer when that would
    separate a pair (``starts_pair(i)``: units ``i`` and ``i + 1`` are one character). Visits one
    position per segment."""
    segments = start = 0
    while start < units:
        end = start + per_segment
        if end < units and starts_pair(end - 1):
            end -= 1
        segments += 1
        start = end
    return segments


def _fullwidth_ascii() -> dict[str, str]:
    """U+FF01-U+FF5E are fullwidth forms of U+0021-U+007E; the backtick is not GSM-7, so ｀ → '."""
    table = {chr(code): chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)}
    table["\uff40"] = "'"
    return table


SMART_REPLACEMENTS: Final[dict[str, str]] = {
    # Double quotation marks -> "
    "\u201c": '"',  # “ LEFT DOUBLE QUOTATION MARK
    "\u201d": '"',  # ” RIGHT DOUBLE QUOTATION MARK
    "\u201e": '"',  # „ DOUBLE LOW-9 QUOTATION MARK
    "\u201f": '"',  # ‟ DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u00ab": '"',  # « LEFT-POINTING DOUBLE ANGLE QUOTATION MARK
    "\u00bb": '"',  # » RIGHT-POINTING DOUBLE ANGLE QUOTATION MARK
    "\u2033": '"',  # ″ DOUBLE PRIME
    "\u02ba": '"',  # ʺ MODIFIER LETTER DOUBLE PRIME
    "\u02ee": '"',  # ˮ MODIFIER LETTER DOUBLE APOSTROPHE
    "\u275d": '"',  # ❝ HEAVY DOUBLE TURNED COMMA QUOTATION MARK ORNAMENT
    "\u275e": '"',  # ❞ HEAVY DOUBLE COMMA QUOTATION MARK ORNAMENT
    "\u301d": '"',  # 〝 REVERSED DOUBLE PRIME QUOTATION MARK
    "\u301e": '"',  # 〞 DOUBLE PRIME QUOTATION MARK
    # Single quotation marks, apostrophes, primes, accents used as apostrophes -> '
    "\u2018": "'",  # ‘ LEFT SINGLE QUOTATION MARK
    "\u2019": "'",  # ’ RIGHT SINGLE QUOTATION MARK
    "\u201a": "'",  # ‚ SINGLE LOW-9 QUOTATION MARK
    "\u201b": "'",  # ‛ SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2039": "'",  # ‹ SINGLE LEFT-POINTING ANGLE QUOTATION MARK
    "\u203a": "'",  # › SINGLE RIGHT-POINTING ANGLE QUOTATION MARK
    "\u2032": "'",  # ′ PRIME
    "\u2035": "'",  # ‵ REVERSED PRIME
    "\u02b9": "'",  # ʹ MODIFIER LETTER PRIME
    "\u02bb": "'",  # ʻ MODIFIER LETTER TURNED COMMA
    "\u02bc": "'",  # ʼ MODIFIER LETTER APOSTROPHE
    "\u02bd": "'",  # ʽ MODIFIER LETTER REVERSED COMMA
    "\u02c8": "'",  # ˈ MODIFIER LETTER VERTICAL LINE
    "\u02ca": "'",  # ˊ MODIFIER LETTER ACUTE ACCENT
    "\u02cb": "'",  # ˋ MODIFIER LETTER GRAVE ACCENT
    "\u00b4": "'",  # ´ ACUTE ACCENT
    "\u0060": "'",  # ` GRAVE ACCENT (ASCII, but not in GSM-7)
    "\u275b": "'",  # ❛ HEAVY SINGLE TURNED COMMA QUOTATION MARK ORNAMENT
    "\u275c": "'",  # ❜ HEAVY SINGLE COMMA QUOTATION MARK ORNAMENT
    # Hyphens, dashes, minus, bullet -> -
    "\u2010": "-",  # ‐ HYPHEN
    "\u2011": "-",  # ‑ NON-BREAKING HYPHEN
    "\u2012": "-",  # ‒ FIGURE DASH
    "\u2013": "-",  # – EN DASH
    "\u2014": "-",  # — EM DASH
    "\u2015": "-",  # ― HORIZONTAL BAR
    "\u2043": "-",  # ⁃ HYPHEN BULLET
    "\u2212": "-",  # − MINUS SIGN
    "\ufe63": "-",  # ﹣ SMALL HYPHEN-MINUS
    "\u2022": "-",  # • BULLET
    # Ellipsis, slashes, fractions
    "\u2026": "...",  # … HORIZONTAL ELLIPSIS
    "\u2044": "/",  # ⁄ FRACTION SLASH
    "\u2215": "/",  # ∕ DIVISION SLASH
    "\u00bc": "1/4",  # ¼
    "\u00bd": "1/2",  # ½
    "\u00be": "3/4",  # ¾
    # Spaces -> space; line/paragraph separators -> newline
    "\u0009": " ",  # CHARACTER TABULATION (GSM-7 has no tab)
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2000": " ",  # EN QUAD
    "\u2001": " ",  # EM QUAD
    "\u2002": " ",  # EN SPACE
    "\u2003": " ",  # EM SPACE
    "\u2004": " ",  # THREE-PER-EM SPACE
    "\u2005": " ",  # FOUR-PER-EM SPACE
    "\u2006": " ",  # SIX-PER-EM SPACE
    "\u2007": " ",  # FIGURE SPACE
    "\u2008": " ",  # PUNCTUATION SPACE
    "\u2009": " ",  # THIN SPACE
    "\u200a": " ",  # HAIR SPACE
    "\u202f": " ",  # NARROW NO-BREAK SPACE
    "\u205f": " ",  # MEDIUM MATHEMATICAL SPACE
    "\u3000": " ",  # IDEOGRAPHIC SPACE
    "\u2028": "\n",  # LINE SEPARATOR
    "\u2029": "\n",  # PARAGRAPH SEPARATOR
    # Invisible characters -> removed
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u200c": "",  # ZERO WIDTH NON-JOINER
    "\u200d": "",  # ZERO WIDTH JOINER
    "\u200e": "",  # LEFT-TO-RIGHT MARK
    "\u200f": "",  # RIGHT-TO-LEFT MARK
    "\u2060": "",  # WORD JOINER
    "\ufeff": "",  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    "\u00ad": "",  # SOFT HYPHEN
    # Latin ligatures
    "\ufb00": "ff",  # ﬀ
    "\ufb01": "fi",  # ﬁ
    "\ufb02": "fl",  # ﬂ
    "\ufb03": "ffi",  # ﬃ
    "\ufb04": "ffl",  # ﬄ
    "\ufb06": "st",  # ﬆ
    # Fullwidth ASCII (U+FF01-U+FF5E) -> ASCII
    **_fullwidth_ascii(),
}
_SMART_TABLE: Final = {ord(char): replacement for char, replacement in SMART_REPLACEMENTS.items()}
_SMART_KEYS: Final = frozenset(SMART_REPLACEMENTS)


def smart_encode(text: str) -> SmartEncoded:
    """``text`` with every character of ``SMART_REPLACEMENTS`` replaced (or removed).

    Pure replacement: a character with no entry is kept, so the result may still be UCS-2 (use
    ``prepare`` to decide what to send). The identity on GSM-7 text, and idempotent.
    """
    if GSM7_CHARACTERS.issuperset(text):
        return SmartEncoded(text, 0)
    replaced = sum(map(_SMART_KEYS.__contains__, text))
    return SmartEncoded(text.translate(_SMART_TABLE) if replaced else text, replaced)


def prepare(text: str, *, smart_encoding: bool = True) -> PreparedText:
    """What to send for ``text`` and what it costs (see the module's "Policy" section).

    With ``smart_encoding`` the look-alike replacements are applied only when they make the whole text
    GSM-7 and it then needs strictly fewer segments; otherwise the original text is kept.
    """
    seg = analyze(text)
    if smart_encoding and seg.encoding == "UCS-2":
        smart = smart_encode(text)
        if smart.replaced:
            alt = analyze(smart.text)
            if alt.encoding == "GSM-7" and alt.segments < seg.segments:
                return PreparedText(smart.text, alt.encoding, alt.units, alt.segments, True, smart.replaced)
    return PreparedText(text, seg.encoding, seg.units, seg.segments, False, 0)
