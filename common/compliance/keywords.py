"""What an inbound text means: an opt-out, opt-in or help keyword, or a reply a person should look at.

Keywords match the way the carrier matches them: the whole text is one keyword, in any case, with
leading/trailing whitespace (Unicode spaces and newlines included) ignored and inner runs of whitespace
read as one space ("stop   all", "Opt\\tOut"):

- opt-out: STOP, STOPALL, STOP ALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT, OPT OUT
- opt-in:  START, UNSTOP, YES
- help:    HELP, INFO

The text is NFKC-normalised first (full-width letters and no-break spaces count) and invisible format
characters (soft hyphen, zero-width and bidi marks, word joiner, BOM) are dropped. Nothing else is forgiven: "STOP." or "Stop!" is
not a keyword, since the carrier matches the exact word only and does not block on it; it is flagged
instead (below). A one-word "Cancel" or "End" is an opt-out whatever question it answers, as it is for
the carrier.

YES is an opt-in here (Twilio's and Braze's lists have it) but not at Telnyx, whose default opt-ins are
START and UNSTOP: YES does not lift a carrier block, and a bare "Yes" is usually an answer ("Coming
Sunday?"). Treat YES as an opt-in only where one was asked for (a double opt-in confirmation).

Flags. Under the FCC's 2024 revocation rule, consent can be revoked by any reasonable means, misspellings
and other languages included. A text that is not a keyword but reads like an opt-out comes back as
``kind="none", flagged=True`` with a short reason naming the rule that fired (never quoting the text), for
the church to review. A flag only means a person looks, so the rules prefer recall, but they leave the
usual friendly replies alone. A text is flagged when:

1. it holds only opt-out words and filler such as "please" or "now": "STOP.", "Stop!", "stop pls",
   "Please stop", "STOP STOP", "Opt-out", "S.T.O.P", "Alto por favor", "Baja", "Arrêt";
2. it contains an opt-out word that is never small talk: unsubscribe and its misspellings, revoke, opt
   out, stopall, misspelled stop (stpo, sotp, stopp, stooop), cancel misspelled, French arrêt /
   désinscrire / désabonner, Spanish desuscribir, Portuguese descadastrar;
3. it contains a phrase: stop texting, stop the texts, remove me, take me off the list, opt me out,
   don't text me, no more texts, leave me alone, wrong number, not interested, spamming, or the Spanish,
   French or Portuguese counterparts (darme de baja, no me envíen más, ne m'envoyez plus, pare de enviar);
4. it opens with stop/quit/cancel/revoke followed by punctuation ("Stop! Who is this?"), or it ends
   with stop/quit ("I said stop"), except after a negation or a noun use ("don't stop", "bus stop").

Otherwise stop, end, cancel and quit inside a sentence are not flagged, nor are Spanish/Portuguese alto,
para, pare, baja, cancelar: "Please stop by the office", "What time does choir end?", "I sing alto" and
"nos vemos para la misa" are what a church's inbox usually holds. Known false positives, accepted
because a person reviews them: "Alto" alone (the choir part), "Cancel, I can come after all", "I had
to quit", "Can we stop?".

Matching folds the text: NFKC, casefold, accents stripped, apostrophes dropped ("don't" is "dont"), then
read as words (runs of letters and digits; punctuation and emoji separate words).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Kind = Literal["opt_out", "opt_in", "help", "none"]

OPT_OUT_KEYWORDS = ("STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT")
OPT_IN_KEYWORDS = ("START", "UNSTOP", "YES")
HELP_KEYWORDS = ("HELP", "INFO")
# What Telnyx itself acts on by default: only these lift a carrier block (YES does not).
CARRIER_OPT_IN_KEYWORDS = ("START", "UNSTOP")


@dataclass(frozen=True)
class Keyword:
    kind: Kind
    keyword: str | None = None  # the canonical keyword matched, e.g. "STOP ALL"
    flagged: bool = False  # reads like an opt-out but is not a keyword: a person should review it
    reason: str | None = None  # which rule flagged it, e.g. "phrase: stop texting"; never the text itself


NOT_A_KEYWORD = Keyword("none")

_BY_KIND: tuple[tuple[Kind, tuple[str, ...]], ...] = (
    ("opt_out", OPT_OUT_KEYWORDS),
    ("opt_in", OPT_IN_KEYWORDS),
    ("help", HELP_KEYWORDS),
)
_EXACT: dict[str, Keyword] = {keyword.casefold(): Keyword(kind, keyword) for kind, keywords in _BY_KIND for keyword in keywords}
# An opt-out keyword written with punctuation, spaces or accents inside: "S.T.O.P", "opt-out", "stöp".
_SPELLED: dict[str, str] = {keyword.casefold().replace(" ", ""): keyword for keyword in OPT_OUT_KEYWORDS}

# Words that may surround an opt-out word in a short reply without changing what it means.
_FILLER = frozenset(
    {
        *("please", "pls", "plz", "plse", "pleas", "plez", "now", "thanks", "thank", "you", "thx", "ty", "ok", "okay"),
        *("just", "it", "this", "that", "them", "all", "right", "away", "asap", "already", "again"),
        *("por", "favor", "porfavor", "ahora", "ya", "gracias", "sil", "vous", "plait", "svp", "merci", "obrigado", "obrigada"),
    }
)
# Words that, alone or with filler only, read as an opt-out (rule 1), with the reason reported.
_OPT_OUT_WORDS: dict[str, str] = {
    **{keyword.casefold(): f"short reply: {keyword.casefold()}" for keyword in OPT_OUT_KEYWORDS if " " not in keyword},
    "remove": "short reply: remove",
    "unsub": "short reply: unsub",
    "alto": "spanish: alto",
    "para": "spanish/portuguese: para",
    "parar": "spanish/portuguese: parar",
    "pare": "spanish/portuguese: pare",
    "paren": "spanish: paren",
    "parem": "portuguese: parem",
    "basta": "spanish: basta",
    "baja": "spanish: baja",
    "salir": "spanish: salir",
    "detener": "spanish: detener",
    "cancelar": "spanish/portuguese: cancelar",
    "sair": "portuguese: sair",
    "arret": "french: arret",
    "arrete": "french: arret",
    "arretez": "french: arret",
    "arreter": "french: arret",
}

# Rules 2 and 3: run over the folded words joined by single spaces, so ``\b`` and one space are enough.
_PATTERNS: tuple[tuple[str, str], ...] = (
    # Rule 2: opt-out words that are never small talk.
    (r"\bunsub\w*", "keyword in message: unsubscribe"),
    (r"\bstopall\b", "keyword in message: stopall"),
    (r"\brevok(?:e|ed|es|ing)\b|\brevocation\b", "keyword in message: revoke"),
    (r"\bopt(?:ed|ing)? ?out\b", "keyword in message: opt out"),
    (r"\b(?:stpo|sotp|tsop|st0p|5top|stopit|stoppit|(?!stop\b)s+t+o+p+)\b", "misspelling: stop"),
    (r"\b(?:cancle|cancell|cansel|cancil|canecl)\b", "misspelling: cancel"),
    (r"\b(?:qiut|quti|quitt)\b", "misspelling: quit"),
    (r"\barret(?:e|ez|er)?\b", "french: arret"),
    (r"\bdes(?:inscri|abonn)\w*", "french: desinscrire"),
    (r"\bdesuscri\w*", "spanish: desuscribir"),
    (r"\bdescadastr\w*", "portuguese: descadastrar"),
    # Rule 3: phrases, English.
    (
        r"\b(?:stop|quit|cease) (?:texting|txting|texing|messaging|msging|sending|contacting|emailing|calling"
        r"|bothering|harassing|harrassing)\b",
        "phrase: stop texting",
    ),
    (
        r"\b(?:stop|quit|cease|end|cancel) (?:the |these |those |all |all the |all these |your |ur |my |sending |sending me )?"
        r"(?:texts?|txts?|messages?|msgs?|sms|alerts?|reminders?|notifications?)\b",
        "phrase: stop the texts",
    ),
    (r"\b(?:remove|delete|unenroll|erase|drop) (?:me|my (?:number|phone|cell|name|info|contact))\b", "phrase: remove me"),
    (r"\b(?:lose|forget) (?:my|this) (?:number|phone|cell)\b", "phrase: remove me"),
    (r"\b(?:take|get|put) (?:me|my (?:number|name|phone)) (?:off|out of)\b", "phrase: take me off the list"),
    (
        r"\boff (?:the|your|ur|this|that|ya) (?:list|text list|texting list|mailing list|group text|group)\b",
        "phrase: take me off the list",
    ),
    (r"\bopt me out\b", "phrase: opt me out"),
    (
        r"\b(?:dont|do not|never|stop|quit) (?:text|txt|message|msg|contact|sms|email|call)(?:ing)?"
        r" (?:me|us|this number|my number|again|anymore|any more)\b",
        "phrase: dont text me",
    ),
    (
        r"\b(?:dont|do not|no longer) (?:want|wish|need) (?:to (?:receive|get|be texted)|(?:these|your|any|any more|anymore|the)"
        r" (?:texts?|messages?|msgs?))\b",
        "phrase: dont want these texts",
    ),
    (
        r"\b(?:dont|do not|never) send (?:me |us )?(?:any more |anymore |more |these |the |your |any )?"
        r"(?:texts?|messages?|msgs?)\b",
        "phrase: dont text me",
    ),
    (r"\bno (?:more|further) (?:texts?|txts?|messages?|msgs?|sms|texting|messaging|alerts?)\b", "phrase: no more texts"),
    (r"\bleave me alone\b", "phrase: leave me alone"),
    (r"\bwrong (?:number|num|person|phone)\b", "phrase: wrong number"),
    (r"\b(?:not|no longer|nt) interested\b", "phrase: not interested"),
    (r"\b(?:this is|its|this|thats|stop) spam\b|\bspamm(?:ing|er)\b", "phrase: spam"),
    (r"\bhow (?:do|can) i (?:stop|cancel|quit|unsubscribe|get off|opt out)\b", "phrase: how do i stop"),
    # Rule 3: phrases, Spanish / Portuguese / French.
    (r"\b(?:dar|darme|darnos|darse|doy|da|dame|deme|denme|den|dese) de baja\b", "spanish: darme de baja"),
    (r"\bno (?:me |nos )?(?:envi|mand|escrib|contact|text)\w* (?:mas|mais)\b", "spanish/portuguese: no me envien mas"),
    (r"\bno (?:quiero|deseo) (?:recibir|mas|mensajes|textos)\b", "spanish: no quiero recibir"),
    (r"\bnao (?:quero|desejo) (?:mais|receber)\b|\bnao (?:me )?(?:envie|enviem|mande|mandem)\b", "portuguese: nao quero receber"),
    (r"\bno mas (?:mensajes|textos|sms|msjs?)\b", "spanish: no mas mensajes"),
    (
        r"\b(?:deja|dejen|deje|dejar|para|pare|paren|parar|parem) de (?:me )?(?:envi|mand|escrib|text|contact)\w*",
        "spanish/portuguese: pare de enviar",
    ),
    (
        r"\bcancelar (?:la |mi |a |minha )?(?:suscripcion|subscripcion|inscricao|assinatura|mensajes|textos|sms)\b",
        "spanish/portuguese: cancelar",
    ),
    (
        r"\b(?:sac|saq|quit|borr|elimin|retir|tir|remov)\w* (?:de|da|do) (?:la |su |esta |tu |sua |essa )?lista\b",
        "spanish/portuguese: sacar de la lista",
    ),
    (r"\bno (?:me |nos )?molest(?:ar|en|e)\b", "spanish: no molestar"),
    (r"\bnumero (?:equivocado|incorrecto|errado)\b", "spanish/portuguese: numero equivocado"),
    (r"\bne (?:me |m ?)?(?:envoy|ecri|contact|text)\w* plus\b", "french: ne menvoyez plus"),
    (r"\bplus de (?:messages|sms|textos|texto)\b", "french: plus de messages"),
    (r"\b(?:retire[rz]?|enleve[rz]?|supprime[rz]?) moi\b", "french: retirez moi"),
    (r"\b(?:mauvais|faux) numero\b", "french: mauvais numero"),
)
# Tried only where a word starts (the text is words joined by single spaces): several times faster than
# letting each of the alternatives try every position.
_RULES = re.compile(r"(?:^|(?<= ))(?:" + "|".join(f"(?P<r{i}>{pattern})" for i, (pattern, _) in enumerate(_PATTERNS)) + ")")
_REASONS = tuple(reason for _, reason in _PATTERNS)

# Rule 4: a command word opening the text, then punctuation or an emoji; stop/quit closing it.
_OPENING = re.compile(r"^\W*(stop|quit|cancel|revoke)(?:[^\w\s]|\s+[^\w\s])")
_CLOSING = frozenset({"stop", "quit"})
_NOT_A_COMMAND_BEFORE = frozenset(
    {
        *("dont", "do", "not", "never", "wont", "cant", "cannot", "didnt", "doesnt", "shouldnt", "wouldnt", "couldnt", "no"),
        *("non", "nonstop", "bus", "pit", "one", "full", "last", "next", "first", "the", "a", "rest", "truck"),
    }
)

_WORD = re.compile(r"[^\W_]+")
# Invisible format characters: soft hyphen, Arabic letter mark, zero-width and bidi marks, word joiner, BOM, tags.
_INVISIBLE = re.compile(
    "[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\U000e0001\U000e0020-\U000e007f]"
)
_ACCENTS = re.compile("[\u0300-\u036f]")  # combining diacritical marks, once decomposed (NFD)
_OPT_OUT_PAIR = re.compile(r"\bopt out\b")
_APOSTROPHES = dict.fromkeys(map(ord, "'\u2019\u2018\u02bc`\u00b4"))
_UNSUBSCRIBE = "unsubscribe"


def classify(text: str) -> Keyword:
    """What an inbound text means; pure, and cheap enough to run on every inbound message."""
    base = unicodedata.normalize("NFKC", text)
    if not base.isascii():
        base = _INVISIBLE.sub("", base)
    exact = _EXACT.get(" ".join(base.casefold().split()))
    if exact is not None:
        return exact
    reason = _flag_reason(_fold(text))
    return NOT_A_KEYWORD if reason is None else Keyword("none", None, True, reason)


def _fold(text: str) -> str:
    """NFKC, casefold, accents and apostrophes dropped (before NFKC turns an acute accent into a space)."""
    text = unicodedata.normalize("NFKC", text.translate(_APOSTROPHES)).casefold().translate(_APOSTROPHES)
    if not text.isascii():
        text = _ACCENTS.sub("", unicodedata.normalize("NFD", _INVISIBLE.sub("", text)))
    return text


def _flag_reason(folded: str) -> str | None:
    words = _WORD.findall(folded)
    if not words:
        return None
    spelled = _SPELLED.get("".join(words))
    if spelled is not None:  # rule 1: the keyword itself, with punctuation, emoji or accents
        return f"not an exact keyword: {spelled}"
    joined = " ".join(words)
    core = [word for word in _OPT_OUT_PAIR.sub("optout", joined).split() if word not in _FILLER]
    if core and all(word in _OPT_OUT_WORDS for word in core):  # rule 1: opt-out words and filler only
        return _OPT_OUT_WORDS[core[0]]
    match = _RULES.search(joined)  # rules 2 and 3
    if match is not None and match.lastgroup is not None:
        return _REASONS[int(match.lastgroup[1:])]
    if any(word[0] == "u" and 8 <= len(word) <= 14 and _within(word, _UNSUBSCRIBE, 2) for word in words):
        return "misspelling: unsubscribe"
    opening = _OPENING.match(folded)  # rule 4
    if opening is not None:
        return f"opens with: {opening.group(1)}"
    if len(words) >= 2 and words[-1] in _CLOSING and words[-2] not in _NOT_A_COMMAND_BEFORE:
        return f"ends with: {words[-1]}"
    return None


def _within(word: str, target: str, limit: int) -> bool:
    """Whether ``word`` is at most ``limit`` edits (insert, delete, substitute, swap neighbours) from ``target``."""
    if abs(len(word) - len(target)) > limit:
        return False
    before: list[int] = []
    previous = list(range(len(target) + 1))
    for i in range(1, len(word) + 1):
        current = [i] + [0] * len(target)
        for j in range(1, len(target) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word[i - 1] != target[j - 1]))
            if i > 1 and j > 1 and word[i - 1] == target[j - 2] and word[i - 2] == target[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) > limit:
            return False
        before, previous = previous, current
    return previous[-1] <= limit
