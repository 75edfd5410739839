from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.compliance.keywords import HELP_KEYWORDS, OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS, Keyword, classify


@pytest.mark.parametrize(
    ("text", "kind", "keyword"),
    [
        ("STOP", "opt_out", "STOP"),
        (" stop ", "opt_out", "STOP"),
        ("Stop", "opt_out", "STOP"),
        ("STOP\n", "opt_out", "STOP"),
        ("\t\r\nsToP \u00a0", "opt_out", "STOP"),  # no-break space
        ("\u3000STOP\u2003", "opt_out", "STOP"),  # ideographic and em spaces
        ("\u200bSTOP\ufeff", "opt_out", "STOP"),  # zero-width space, BOM
        ("\uff33\uff34\uff2f\uff30", "opt_out", "STOP"),  # full-width letters
        ("stopall", "opt_out", "STOPALL"),
        ("StopAll", "opt_out", "STOPALL"),
        ("stop all", "opt_out", "STOP ALL"),
        ("stop   all", "opt_out", "STOP ALL"),
        ("STOP\nALL", "opt_out", "STOP ALL"),
        ("unsubscribe", "opt_out", "UNSUBSCRIBE"),
        ("UNSUBSCRIBE ", "opt_out", "UNSUBSCRIBE"),
        ("cancel", "opt_out", "CANCEL"),
        ("End", "opt_out", "END"),
        ("quit", "opt_out", "QUIT"),
        ("Revoke", "opt_out", "REVOKE"),
        ("optout", "opt_out", "OPTOUT"),
        ("OPTOUT", "opt_out", "OPTOUT"),
        ("opt out", "opt_out", "OPT OUT"),
        ("Opt  Out", "opt_out", "OPT OUT"),
        ("Opt\tOut", "opt_out", "OPT OUT"),
        ("start", "opt_in", "START"),
        (" START\n", "opt_in", "START"),
        ("Unstop", "opt_in", "UNSTOP"),
        ("yes", "opt_in", "YES"),
        ("YES", "opt_in", "YES"),
        ("help", "help", "HELP"),
        ("Help ", "help", "HELP"),
        ("info", "help", "INFO"),
        ("INFO\n", "help", "INFO"),
    ],
)
def test_keywords_in_any_case_and_spacing(text, kind, keyword):
    assert classify(text) == Keyword(kind, keyword)


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        # The carrier does not block on these, so neither do we; a reasonable person means opt-out: flag.
        ("STOP.", True),
        ("Stop!", True),
        ("stop pls", True),
        ("STOP ALL!", True),
        ("Opt-out", True),
        ("S.T.O.P", True),
        ("stöp", True),
        ("STOP 🛑", True),
        # Not opt-outs, and nothing to flag.
        ("stopping by later", False),
        ("stop by", False),
        ("Help!", False),  # help with punctuation is neither a keyword nor an opt-out
        ("Yes!", False),
        ("Yes I'll be there", False),
        ("Start time?", False),
        ("", False),
        ("   \n", False),
        ("🙏", False),
    ],
)
def test_near_keywords_are_not_keywords(text, flagged):
    result = classify(text)
    assert result.kind == "none"
    assert result.keyword is None
    assert result.flagged is flagged
    assert (result.reason is not None) is flagged


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("STOP.", "not an exact keyword: STOP"),
        ("Stop!!!", "not an exact keyword: STOP"),
        ("unsubscribe.", "not an exact keyword: UNSUBSCRIBE"),
        ("Opt-Out", "not an exact keyword: OPT OUT"),
        ("Please stop", "short reply: stop"),
        ("STOP STOP STOP", "short reply: stop"),
        ("cancel please", "short reply: cancel"),
        ("Stop it now", "short reply: stop"),
        ("stpo", "misspelling: stop"),
        ("sotp", "misspelling: stop"),
        ("Stopp", "misspelling: stop"),
        ("stooooop", "misspelling: stop"),
        ("unsuscribe", "misspelling: unsubscribe"),
        ("unsusbcribe me", "misspelling: unsubscribe"),
        ("unsubcribe", "keyword in message: unsubscribe"),
        ("I want to unsubscribe from this", "keyword in message: unsubscribe"),
        ("How do I stop these?", "phrase: how do i stop"),
        ("I revoke my consent", "keyword in message: revoke"),
        ("Please opt out this number", "keyword in message: opt out"),
        ("cancle", "misspelling: cancel"),
        ("Stop texting me", "phrase: stop texting"),
        ("quit messaging me!!", "phrase: stop texting"),
        ("Please stop sending these messages", "phrase: stop texting"),
        ("stop all the texts", "phrase: stop the texts"),
        ("Remove me from this list", "phrase: remove me"),
        ("Take me off your list", "phrase: take me off the list"),
        ("opt me out", "phrase: opt me out"),
        ("Don't text me", "phrase: dont text me"),
        ("do not message me again", "phrase: dont text me"),
        ("DON\u00b4T TEXT ME", "phrase: dont text me"),  # an acute accent for the apostrophe
        ("No more texts", "phrase: no more texts"),
        ("Leave me alone", "phrase: leave me alone"),
        ("Wrong number", "phrase: wrong number"),
        ("Not interested, thanks", "phrase: not interested"),
        ("Stop! Who is this?", "opens with: stop"),
        ("I said stop", "ends with: stop"),
        # Spanish
        ("Alto", "spanish: alto"),
        ("alto por favor", "spanish: alto"),
        ("Para!", "spanish/portuguese: para"),
        ("Baja", "spanish: baja"),
        ("Quiero darme de baja", "spanish: darme de baja"),
        ("Cancelar", "spanish/portuguese: cancelar"),
        ("No me envíen más mensajes", "spanish/portuguese: no me envien mas"),
        ("No más mensajes por favor", "spanish: no mas mensajes"),
        ("Sáquenme de la lista", "spanish/portuguese: sacar de la lista"),
        ("Número equivocado", "spanish/portuguese: numero equivocado"),
        # French
        ("Arrêt", "french: arret"),
        ("ARRET", "french: arret"),
        ("Arrête svp", "french: arret"),
        ("Je veux me désinscrire", "french: desinscrire"),
        ("Ne m\u2019envoyez plus de messages", "french: ne menvoyez plus"),
        # Portuguese
        ("Pare", "spanish/portuguese: pare"),
        ("Pare de enviar mensagens", "spanish/portuguese: pare de enviar"),
        ("Não quero mais receber", "portuguese: nao quero receber"),
        ("descadastrar", "portuguese: descadastrar"),
    ],
)
def test_reads_like_an_opt_out_is_flagged(text, reason):
    assert classify(text) == Keyword("none", None, True, reason)


@pytest.mark.parametrize(
    "text",
    [
        "See you Sunday!",
        "Amen",
        "Amen 🙏🙏",
        "Yes I'll be there",
        "Yes please",
        "Thank you pastor!",
        "Praying for you",
        "Count me in",
        "He is risen!",
        "Ok thanks",
        "No",
        "I can't make it this week",
        "Running late, be there at 10",
        "I'll bring a casserole",
        "Please stop by the office",
        "Stop by anytime!",
        "We'll stop at the store on the way",
        "Can't wait for the potluck, don't stop the music!",
        "Don't stop believing",
        "Meet me at the bus stop",
        "What time does choir practice end?",
        "End of the day works for me",
        "The end times sermon was great",
        "Is Wednesday's Bible study cancelled?",
        "Cancel that, I can come",
        "Quit smoking class starts Monday?",
        "I sing alto in the choir",
        "Nos vemos el domingo para la misa",
        "No me molesta, con gusto ayudo",
        "Gracias, hasta el domingo",
        "Merci, à dimanche",
        "Is spam ok for the potluck?",
        "Start time?",
    ],
)
def test_friendly_replies_are_not_flagged(text):
    assert classify(text) == Keyword("none")


@pytest.mark.parametrize(
    "text",
    [
        "Alto",  # the answer to "which part do you sing?"
        "Cancel, I can come after all",
        "I had to quit",
        "Can we stop?",
    ],
)
def test_known_false_positives_are_flagged_for_a_person(text):
    """Accepted: a flag only puts the text in front of someone at the church."""
    assert classify(text).flagged


def test_a_flag_reason_never_quotes_the_text():
    assert classify("unsuscribe pls, Mrs Smith").reason == "misspelling: unsubscribe"


_KEYWORDS = [*OPT_OUT_KEYWORDS, *OPT_IN_KEYWORDS, *HELP_KEYWORDS]
_SPACE = st.sampled_from([chr(code) for code in range(0x3001) if chr(code).isspace()])  # U+3000 is the last one
_SPACES = st.text(_SPACE, max_size=4)
_RUN = st.text(_SPACE, min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_classify_never_raises_and_is_deterministic(text):
    first = classify(text)
    assert first == classify(text)
    assert first.kind in ("opt_out", "opt_in", "help", "none")
    assert first.flagged is (first.reason is not None)
    assert not (first.flagged and first.kind != "none")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_KEYWORDS), _SPACES, _SPACES, _RUN, st.lists(st.booleans(), min_size=11, max_size=11))
def test_a_keyword_surrounded_by_whitespace_is_that_keyword(keyword, before, after, inner, upper):
    cased = "".join(ch.upper() if up else ch.lower() for ch, up in zip(keyword, upper, strict=False))
    text = before + cased.replace(" ", inner) + after
    kind = "opt_out" if keyword in OPT_OUT_KEYWORDS else "opt_in" if keyword in OPT_IN_KEYWORDS else "help"
    assert classify(text) == Keyword(kind, keyword)
