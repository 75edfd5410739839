"""Segment counting (what the church is billed on) and smart encoding: hand-checked examples, the codec as
the oracle for GSM-7, a reference greedy split, and a cross-check with the Telnyx sandbox's independent
implementation."""

# ruff: noqa: RUF001  (look-alike characters are the subject of these tests)
from __future__ import annotations

import timeit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.segments import (
    CODEC,
    GSM7_BASIC,
    GSM7_CHARACTERS,
    GSM7_EXTENSION,
    SMART_REPLACEMENTS,
    PreparedText,
    Segmentation,
    SmartEncoded,
    analyze,
    max_segments,
    prepare,
    smart_encode,
)
from infra.telnyx_sandbox import encoding as sandbox

# A few hundred examples per property keeps the whole file to a few seconds.
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LIMITS = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


# --- The oracle: the codec itself, and a plain greedy split -------------------------------------------


def codec_septets(text: str) -> bytes | None:
    """The codec's GSM-7 bytes (one per septet) when the text encodes *and* decodes back unchanged."""
    try:
        encoded = text.encode(CODEC)
        return encoded if encoded.decode(CODEC) == text else None
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None


def reference_split(text: str) -> tuple[str, int, list[str]]:
    """Encoding, units and the parts, packed greedily one character at a time: a character whose units do not
    fit in what is left of a part starts the next part (so escape and surrogate pairs never straddle)."""
    if codec_septets(text) is not None:
        encoding, widths = "GSM-7", [len(ch.encode(CODEC)) for ch in text]
    else:
        encoding, widths = "UCS-2", [len(ch.encode("utf-16-le")) // 2 for ch in text]
    single, multi = LIMITS[encoding]
    units = sum(widths)
    if units <= single:
        return encoding, units, [text] if text else []
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for ch, width in zip(text, widths, strict=True):
        if used + width > multi:
            parts.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += width
    parts.append("".join(current))
    return encoding, units, parts


# --- Hand-checked examples ------------------------------------------------------------------------------

EXAMPLES = [
    # (text, encoding, units, segments): why
    ("", "GSM-7", 0, 0),  # nothing to send: no segment, nothing billed
    ("a", "GSM-7", 1, 1),  # one septet
    ("a" * 160, "GSM-7", 160, 1),  # exactly fills one single-part message
    ("a" * 161, "GSM-7", 161, 2),  # one over: now multipart, 153 + 8
    ("a" * 306, "GSM-7", 306, 2),  # 153 + 153
    ("a" * 307, "GSM-7", 307, 3),  # 153 + 153 + 1
    ("a" * 1530, "GSM-7", 1530, 10),  # 10 x 153: the largest text the church can send
    ("a" * 1531, "GSM-7", 1531, 11),  # one over the 10-segment maximum
    ("{" * 80, "GSM-7", 160, 1),  # an extension character is ESC + char: 80 x 2 = 160 septets
    ("{" * 81, "GSM-7", 162, 2),  # 162 septets > 160: multipart
    ("a" * 152 + "€", "GSM-7", 154, 1),  # 154 <= 160: still one single-part message
    ("a" * 159 + "€", "GSM-7", 161, 2),  # the pair does not fit in 160: multipart, 153 + 8
    ("a" * 152 + "{" + "a" * 8, "GSM-7", 162, 2),  # '{' would straddle 153/154: part 2 starts with it
    ("a" * 152 + "{" + "a" * 153, "GSM-7", 307, 3),  # 152 + 153 + 2
    ("a" * 151 + "€" + "a" * 153, "GSM-7", 306, 2),  # '€' takes septets 152-153: fits part 1 exactly
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # '€' would take 153-154: moves whole to part 2, 152+153+1
    ("{" * 765, "GSM-7", 1530, 11),  # 1530 septets but 76 pairs (152 septets) per part: 11, not 10
    ("€", "GSM-7", 2, 1),  # euro sign is in the extension table
    ("\f", "GSM-7", 2, 1),  # so is form feed (ESC 0x0A)
    ("@", "GSM-7", 1, 1),  # '@' is 0x00 of the default alphabet, one septet
    ("£$¥¤§¿¡", "GSM-7", 7, 1),  # currency and Spanish punctuation are in the default alphabet
    ("ΔΦΓΛΩΠΨΣΘΞ", "GSM-7", 10, 1),  # the Greek capitals of the default alphabet
    ("é" * 10, "GSM-7", 10, 1),  # 'é' is 0x05
    ("ê", "UCS-2", 1, 1),  # 'ê' is not GSM-7: the whole text becomes UCS-2
    ("Ç", "GSM-7", 1, 1),  # 0x09 is capital C-cedilla per TS 23.038 (and the codec)
    ("ç", "UCS-2", 1, 1),  # small c-cedilla is not (GSM0338.TXT disagrees; see the module docstring)
    ("`", "UCS-2", 1, 1),  # the backtick is ASCII but not GSM-7
    ("\x1b", "UCS-2", 1, 1),  # ESC does not round-trip through the codec (it is the escape prefix)
    ("\r\n" * 80, "GSM-7", 160, 1),  # CR and LF are one septet each: CRLF costs two
    ("\r\n" * 81, "GSM-7", 162, 2),
    ("Sunday 🙏", "UCS-2", 9, 1),  # one emoji switches to UCS-2 and is a surrogate pair, 2 units
    ("a" * 159 + "🙏", "UCS-2", 161, 3),  # 160 GSM-looking characters are 161 UCS-2 units: 67 + 67 + 27
    ("a" * 70, "GSM-7", 70, 1),  # 70 GSM-7 characters are far from any limit
    ("я" * 70, "UCS-2", 70, 1),  # exactly one UCS-2 single-part message
    ("я" * 71, "UCS-2", 71, 2),  # 67 + 4
    ("я" * 134, "UCS-2", 134, 2),  # 67 + 67
    ("я" * 135, "UCS-2", 135, 3),
    ("🙏" * 35, "UCS-2", 70, 1),  # 35 pairs = 70 units
    ("🙏" * 36, "UCS-2", 72, 2),
    ("a" * 65 + "🙏" + "a" * 67, "UCS-2", 134, 2),  # the pair takes units 66-67: fits part 1 exactly
    ("a" * 66 + "🙏" + "a" * 66, "UCS-2", 134, 3),  # the pair would straddle 67/68: moves, 66 + 67 + 1
    ("я" * 670, "UCS-2", 670, 10),  # 10 x 67: the UCS-2 maximum
    ("я" * 671, "UCS-2", 671, 11),
    ("🙏" * 335, "UCS-2", 670, 11),  # 670 units, but 33 pairs (66 units) per part: 11 parts
    ("主日崇拜", "UCS-2", 4, 1),  # CJK: one BMP unit each
    ("主" * 71, "UCS-2", 71, 2),
    ("e\u0301", "UCS-2", 2, 1),  # e + COMBINING ACUTE: the mark is not GSM-7 (precomposed 'é' would be)
    ("Ünïcode", "UCS-2", 7, 1),  # 'Ü' is GSM-7, 'ï' is not
]


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), EXAMPLES)
def test_examples(text: str, encoding: str, units: int, segments: int) -> None:
    assert analyze(text) == Segmentation(encoding, units, segments)
    # The reference split agrees on every hand-checked row too.
    assert reference_split(text)[:2] == (encoding, units)
    assert len(reference_split(text)[2]) == segments


def test_max_segments() -> None:
    assert max_segments == 10


def test_a_lone_surrogate_counts_as_one_unit_instead_of_crashing() -> None:
    # A Python str can hold unpaired surrogates (e.g. from a JSON "\ud83d" escape); UCS-2 sends one unit each.
    assert analyze("\ud83d") == Segmentation("UCS-2", 1, 1)
    assert analyze("\ud83d" * 71) == Segmentation("UCS-2", 71, 2)
    # Two surrogate code points that make a pair are the same bytes as the emoji: kept together.
    assert analyze("a" * 66 + "\ud83d\ude4f" + "a" * 66) == analyze("a" * 66 + "🙏" + "a" * 66)


# --- The alphabet comes from the codec -----------------------------------------------------------------


def test_alphabet_is_the_default_table_and_its_extension() -> None:
    assert len(GSM7_BASIC) == 127  # 128 codes minus ESC
    assert frozenset("\f^{}\\[~]|€") == GSM7_EXTENSION
    assert GSM7_CHARACTERS == GSM7_BASIC | GSM7_EXTENSION
    assert "\x1b" not in GSM7_CHARACTERS


def test_alphabet_is_exactly_what_the_codec_round_trips_on_the_whole_bmp() -> None:
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        septets = codec_septets(ch)
        assert (ch in GSM7_CHARACTERS) == (septets is not None), hex(code)
        if septets is not None:
            assert analyze(ch).units == len(septets)
        assert sandbox.segment(ch).encoding == analyze(ch).encoding, hex(code)  # and the sandbox agrees


def test_the_codec_does_not_fold_look_alikes() -> None:
    for ch in ("ç", "ê", "`", "\u00a0", "\t", "’", "—"):
        with pytest.raises(UnicodeEncodeError):
            ch.encode(CODEC)
    # ESC encodes but is read back as the escape prefix: "\x1b(" is '{' on the handset.
    assert "\x1b(".encode(CODEC).decode(CODEC) == "{"


# --- Smart encoding -------------------------------------------------------------------------------------

SMART_EXAMPLES = [
    ("Don’t forget", "Don't forget", 1),
    ("“Amen,” she said.", '"Amen," she said.', 2),
    ("‘Come’ — all welcome", "'Come' - all welcome", 3),
    ("Sunday – 10am", "Sunday - 10am", 1),
    ("Wait for it…", "Wait for it...", 1),
    ("10\u00a0am", "10 am", 1),  # no-break space
    ("Hope\u2009Café", "Hope Café", 1),  # thin space; 'é' is GSM-7 and stays
    ("a\u200bb\ufeff", "ab", 2),  # zero-width space and BOM are removed
    ("«Gloria»", '"Gloria"', 2),
    ("‹hi›", "'hi'", 2),
    ("• bring a dish", "- bring a dish", 1),
    ("5 − 3", "5 - 3", 1),  # minus sign
    ("ﬁsh & ﬂour", "fish & flour", 2),
    ("ＡＢＣ１２３！", "ABC123!", 7),  # fullwidth ASCII
    ("`code`", "'code'", 2),
    ("Plain GSM text {ok}", "Plain GSM text {ok}", 0),  # identity on GSM-7 text
    ("Join us 🙏", "Join us 🙏", 0),  # nothing to replace; the emoji stays
    ("Don’t miss it 🙏", "Don't miss it 🙏", 1),  # smart_encode replaces; prepare() keeps the original (below)
]


@pytest.mark.parametrize(("text", "expected", "replaced"), SMART_EXAMPLES)
def test_smart_encode_examples(text: str, expected: str, replaced: int) -> None:
    assert smart_encode(text) == SmartEncoded(expected, replaced)


def test_the_table_maps_non_gsm_characters_to_gsm_text() -> None:
    for key, value in SMART_REPLACEMENTS.items():
        assert len(key) == 1
        assert key not in GSM7_CHARACTERS, repr(key)  # so smart_encode is the identity on GSM-7 text
        assert codec_septets(value) is not None, repr(value)  # so one pass is enough (idempotent)


def test_prepare_sends_the_smart_encoded_text_when_it_saves_a_segment() -> None:
    text = "Don’t forget the potluck this Sunday — bring a dish to share… and a friend!"  # 75 chars
    assert analyze(text) == Segmentation("UCS-2", 75, 2)
    assert prepare(text) == PreparedText(
        "Don't forget the potluck this Sunday - bring a dish to share... and a friend!", "GSM-7", 77, 1, True, 3
    )


def test_prepare_keeps_the_original_on_a_tie() -> None:
    # One segment either way: the church's own apostrophe is kept.
    assert prepare("Don’t forget") == PreparedText("Don’t forget", "UCS-2", 12, 1, False, 0)


def test_prepare_keeps_the_original_when_an_emoji_keeps_it_ucs2() -> None:
    text = "Don’t forget the potluck this Sunday — bring a dish to share… and a friend 🙏"
    seg = analyze(text)
    assert prepare(text) == PreparedText(text, "UCS-2", seg.units, seg.segments, False, 0)


def test_prepare_keeps_the_original_when_replacing_would_cost_more() -> None:
    # 70 ellipses: one UCS-2 segment; as "..." they are 210 septets, two GSM-7 segments.
    assert prepare("…" * 70) == PreparedText("…" * 70, "UCS-2", 70, 1, False, 0)


def test_prepare_without_smart_encoding_is_analyze() -> None:
    text = "Don’t forget the potluck this Sunday — bring a dish to share… and a friend!"
    assert prepare(text, smart_encoding=False) == PreparedText(text, "UCS-2", 75, 2, False, 0)


# --- Properties on random text --------------------------------------------------------------------------

LOOK_ALIKES = [*sorted(SMART_REPLACEMENTS)[:40], "’", "“", "”", "—", "–", "…", "\u00a0", "\u200b", "ﬁ"]
OTHERS = ["🙏", "👨", "👩", "\u200d", "я", "主", "ê", "ç", "\x1b", "\u0301", "`", "\t"]

gsm_text = st.text(st.sampled_from(sorted(GSM7_CHARACTERS)), max_size=1600)
ext_heavy_text = st.text(st.sampled_from(["a", "{", "€", "\f", "~"]), max_size=1600)
# Broad Unicode: every plane, astral emoji included; lone surrogates (category Cs) excluded here, as in any
# well-formed text (they have their own test above).
broad_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=700)
mixed_text = st.text(
    st.one_of(
        st.sampled_from(sorted(GSM7_CHARACTERS)),
        st.sampled_from(LOOK_ALIKES),
        st.sampled_from(OTHERS),
        st.characters(min_codepoint=0x10000),  # astral plane
    ),
    max_size=800,
)
any_text = st.one_of(gsm_text, ext_heavy_text, broad_text, mixed_text)


@PROPERTY
@given(any_text)
@example("a" * 152 + "{" + "a" * 152)
@example("a" * 66 + "🙏" + "a" * 66)
def test_counts_match_the_codec_and_a_greedy_split(text: str) -> None:
    seg = analyze(text)
    septets = codec_septets(text)
    # GSM-7 iff the codec encodes the text and reads it back unchanged.
    assert (seg.encoding == "GSM-7") == (septets is not None)
    if septets is not None:
        assert seg.units == len(septets)
    else:
        assert seg.units == len(text.encode("utf-16-le")) // 2
    single, multi = LIMITS[seg.encoding]
    assert (seg.segments == 0) == (seg.units == 0)
    assert (seg.segments == 1) == (0 < seg.units <= single)
    if seg.segments > 1:
        # Each part holds at most `multi` units, and at least `multi - 1` except the last (a pair that does
        # not fit moves whole to the next part). The tighter (segments - 1) * multi < units does NOT hold:
        # 765 '{' are 1530 septets in 11 parts.
        assert (seg.segments - 1) * (multi - 1) < seg.units <= seg.segments * multi
    encoding, units, parts = reference_split(text)
    assert (encoding, units, len(parts)) == (seg.encoding, seg.units, seg.segments)
    assert "".join(parts) == text
    if len(parts) > 1:
        part_units = [len(p.encode(CODEC)) if encoding == "GSM-7" else len(p.encode("utf-16-le")) // 2 for p in parts]
        assert all(multi - 1 <= n <= multi for n in part_units[:-1])
        assert 0 < part_units[-1] <= multi


@PROPERTY
@given(st.one_of(gsm_text, ext_heavy_text))
def test_gsm_text_is_always_gsm7(text: str) -> None:
    seg = analyze(text)
    assert seg.encoding == "GSM-7"
    assert seg.units == len(text) + sum(ch in GSM7_EXTENSION for ch in text)


@PROPERTY
@given(any_text)
def test_smart_encode_properties(text: str) -> None:
    smart = smart_encode(text)
    # Identity on GSM-7 text (so it never adds septets to a text that was already GSM-7).
    if codec_septets(text) is not None:
        assert smart == SmartEncoded(text, 0)
    # Counts exactly the characters it replaced or removed.
    assert smart.replaced == sum(ch in SMART_REPLACEMENTS for ch in text)
    assert smart.text == "".join(SMART_REPLACEMENTS.get(ch, ch) for ch in text)
    # Idempotent.
    assert smart_encode(smart.text) == SmartEncoded(smart.text, 0)
    # Reaches GSM-7 exactly when every character was GSM-7 or had a replacement.
    reachable = all(ch in GSM7_CHARACTERS or ch in SMART_REPLACEMENTS for ch in text)
    assert (codec_septets(smart.text) is not None) == reachable


@PROPERTY
@given(any_text)
def test_prepare_never_costs_more(text: str) -> None:
    plain = analyze(text)
    prepared = prepare(text)
    assert prepared.segments <= plain.segments
    assert analyze(prepared.text) == Segmentation(prepared.encoding, prepared.units, prepared.segments)
    if prepared.smart_encoded:
        smart = smart_encode(text)
        assert (prepared.text, prepared.replaced, prepared.encoding) == (smart.text, smart.replaced, "GSM-7")
        assert prepared.segments < plain.segments
    else:
        assert (prepared.text, prepared.replaced) == (text, 0)
    off = prepare(text, smart_encoding=False)
    assert off == PreparedText(text, plain.encoding, plain.units, plain.segments, False, 0)


# --- Cross-check with the sandbox's independent implementation ------------------------------------------


@PROPERTY
@given(any_text)
@example("\x1b")
@example("ç")
@example("Ç")
def test_agrees_with_the_telnyx_sandbox(text: str) -> None:
    ours = analyze(text)
    theirs = sandbox.segment(text)
    if text:
        assert (ours.encoding, ours.units, ours.segments) == (theirs.encoding, theirs.units, theirs.parts)
    else:
        # The one known difference: the sandbox counts empty text as one part (it refuses an empty SMS
        # before counting); nothing is sent, so nothing is billed here.
        assert (ours.segments, theirs.parts) == (0, 1)


def test_same_alphabet_as_the_sandbox() -> None:
    assert sandbox.GSM_BASIC == GSM7_BASIC
    assert sandbox.GSM_EXTENSION == GSM7_EXTENSION


# --- Speed: analyze runs on every accepted request ------------------------------------------------------


def test_analyze_is_fast() -> None:
    text = "Reminder: potluck Sunday after the 10:30 service. Bring a dish & a friend! Questions? Call 555-0142. "
    text = (text * 2)[:160]
    per_call = min(timeit.repeat(lambda: analyze(text), number=2000, repeat=5)) / 2000
    assert per_call < 50e-6  # measured about 2-3 microseconds
