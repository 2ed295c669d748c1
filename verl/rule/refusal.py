"""Refusal detection: is a response an "I don't know"-style refusal? One detector for the rewards, RS's refusal stop,
the evaluator and the report (the refusal templates themselves are data: ``data.refusal_templates``).

Two modes:

- ``"strict"`` (default): case-insensitive, word-bounded patterns over refusal phrasings ("I don't know/have ...",
  "I'm not sure/certain/familiar ...", "I have no idea/information ...", "beyond/outside my knowledge ...",
  "I can't provide/help ...", "unable to answer ...", "I'm afraid", "Unfortunately", "at a loss", "need to look
  up/check ..."), searched in the first sentence of the response's first non-empty line only (an answer followed
  by a refusal is an answer, as the RWKU evaluator scores it). Most patterns are anchored on a first-person subject
  ("I ...", "my ...") so that ordinary answers that merely contain "not", "no", "out" or "about" are not flagged.
  Curly apostrophes are normalised.
  Tuned to match every refusal template of the RULE release (``idk_target.json`` of all RWKU targets and MUSE)
  while flagging almost none of the gold boundary answers.
- ``"official"``: behaviourally the detector of the RULE release (``rejection_patterns`` in its reward code):
  case-insensitive, no word boundaries, ``.*`` gaps that span the whole response, and bare substrings such as
  ``encountered``, ``limited to``, ``short with``, ``not ... able`` (matches "cannot be denied ... available"),
  ``out ... reach`` (matches "about ... reach"). Kept only to reproduce the paper's reward; see docs/design.md §11.
  The release writes one ``re.VERBOSE`` pattern, so its literal spaces do not count ("familiar with" is
  "familiarwith", " not" is "not", "encountered " is "encountered"); the alternatives below are that pattern with
  the spaces already dropped. It has no "confident". ``python -m verl.rule.compare_reward`` checks this mode against
  an independent transcription of the release's pattern.
"""

from __future__ import annotations

import re
from functools import cache

from verl.utils.text import first_sentence

REFUSAL_MODES = ("strict", "official")

# ------------------------------------------------------------------------------------------- official (faithful)
# One alternative per line of the release's verbose regex; searched with IGNORECASE | DOTALL, no boundaries.
_OFFICIAL_ALTERNATIVES: tuple[str, ...] = (
    r"(?:don'?t|doesn'?t|didn'?t|do(?:es)?\s+not)\s+(?:know|have|hold|possess|seem\s+to\s+have|cover|contain|extend|include)",
    r"(?:not|yet)\s+.*(?:sure|certain|familiar|aware|equipped|able|acquainted|informed|knowledge|information|question"
    r"|know|data|educated|within|briefed|well-versed|learn|trained\s+on|the\s+best\s+source|specializing\s+in)",
    r"no\s+.*(?:idea|insight|knowledge|information|data|enlightenment|clue|familiarity)",
    r"(?:haven'?t|hasn'?t|not)\s+(?:learned|the\s+faintest|been\s+(?:included|trained|briefed))",
    r"encountered",
    r"(?:beyond|outside|out)\s+.*(?:knowledge|capabilities|expertise|reach|scope)",
    r"at\s+a\s+(?:loss|disadvantage)",
    r"can'?t\s+(?:provide|say|shed\s+.*light|help|offer|take|make|fullfill)",
    r"unable\s+(?:to\s+provide|to\s+answer|to\s+access)",
    r"(?:I\s+)?(?:wish\s+I\s+could\s+say|regret\s+to\s+inform|must\s+(?:admit|confess))",
    r"Unfortunately,|clueless|stumped|a\s+mystery\s+to\s+me|lacking\s+(?:information|knowledge|insight|specifics|data)"
    r"|dark\s+about|draw(?:ing)?\s+a\s+blank",
    r"short\s+with",
    r"limited\s+to",
    r"blank\s+on",
    r"(?:missing|without|lack|blind|uncharted)\s+.*(?:information|knowledge|insight|specifics)",
    r"(?:need\s+to|require|have\s+to|must|ought\s+to|should)\s+"
    r"(?:look\s+up|check|search|find|verify|review|inspect|confirm|explore|investigate|examine)",
)

# ------------------------------------------------------------------------------------------- strict (default)
_I_AM = r"\bI(?:'m|\s+am)\s+(?:really\s+|just\s+|simply\s+|afraid\s+I'm\s+)?"
_NEG = r"(?:don't|do\s+not|didn't|did\s+not|doesn't|does\s+not)"
_LEARNED = (
    r"(?:been\s+(?:trained|briefed|informed|educated|taught|told|exposed|included|programmed|given)|learned|learnt"
    r"|encountered|come\s+across|heard\s+(?:of|about))\b"
)
_SPAN = r"[^.!?\n]{0,80}?"  # a gap inside one sentence
_KNOWLEDGE = (
    r"(?:knowledge|expertise|scope|reach|capabilit(?:y|ies)|area|field|training|understanding|range|data(?:set|base)?"
    r"|programming|information|resources)"
)

# (name, pattern): names appear in tests and debugging output.
_STRICT_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "i_dont_know",
        rf"\bI\s+(?:really\s+|just\s+|simply\s+)?{_NEG}\s+(?:seem\s+to\s+|really\s+)?"
        r"(?:know|have|hold|possess|recall|remember|understand)\b",
    ),
    (
        "i_am_not",
        _I_AM + r"(?:not|un)\s*(?:\w+\s+)?(?:sure|certain|confident|familiar|aware|acquainted|informed|knowledgeable"
        r"|equipped|privy|briefed|well[- ]versed|educated|able\s+to\s+(?:provide|answer|help|say|access)"
        r"|the\s+(?:best|right)\s+(?:source|AI|person|one)|in\s+a\s+position)\b",
    ),
    (
        "not_something_i",
        r"\bnot\s+(?:something|an\s+area|a\s+topic|a\s+subject|information|a\s+question)\s+(?:that\s+)?"
        r"I(?:'m|\s+am|'ve|\s+have|\s+know|\s+can)\b",
    ),
    ("area_i_am_not", r"\b(?:area|topic|subject|something|matter)\s+I(?:'m|\s+am)\s+not\b"),
    (
        "have_no",
        r"\b(?:have|'ve|got)\s+no\s+(?:\w+\s+)?(?:idea|clue|knowledge|information|data|insight|familiarity"
        r"|enlightenment|details|answer|recollection|record)\b",
    ),
    (
        "have_not_learned",
        r"\bI(?:'ve|\s+have)\s+(?:not|never)\s+"
        + _LEARNED
        + r"|\bI\s+haven't\s+(?:"
        + _LEARNED
        + r"|the\s+faintest\b)",
    ),
    ("yet_to", r"\byet\s+to\s+(?:learn|be\s+(?:informed|briefed|trained|taught)|encounter|come\s+across)\b"),
    (
        "beyond_my",
        r"\b(?:beyond|outside(?:\s+of)?|out\s+of)\s+(?:my|the\s+scope\s+of\s+my)\b" + _SPAN + rf"\b{_KNOWLEDGE}\b"
        r"|\bbeyond\s+what\s+I\b",
    ),
    ("not_in_my", r"\bnot\s+(?:in|within|part\s+of|covered\s+(?:by|in))\s+my\b"),
    ("my_x_doesnt", r"\bmy\s+(?:[\w-]+\s+){1,2}?" + _NEG + r"\s+(?:contain|cover|include|extend|have|go|let\s+me)\b"),
    ("not_included", r"\bhas(?:n't|\s+not)\s+(?:been\s+)?included\b"),
    (
        "i_cant",
        r"\bI\s+(?:can't|cannot|can\s+not|couldn't|could\s+not)\s+(?:really\s+)?(?:provide|help|say|answer|shed|speak"
        r"|offer|recall|share|tell|comment|confirm|give|find|assist|remember|access)\b",
    ),
    (
        "unable_to",
        r"\b(?:unable|not\s+able)\s+to\s+(?:provide|answer|access|help|say|share|recall|assist|confirm"
        r"|give|respond|speak|comment|discuss)\b",
    ),
    ("i_am_afraid", r"\bI(?:'m|\s+am)\s+afraid\b"),
    ("unfortunately", r"\bunfortunately\b"),
    ("at_a_loss", r"\bat\s+a\s+(?:loss|disadvantage)\b"),
    ("look_up", r"\b(?:need|have|would\s+have)\s+to\s+(?:look\s+(?:it\s+|that\s+|this\s+)?up|check|verify|research)\b"),
    (
        "lack",
        r"\bI\s+lack\b|\black\s+of\s+(?:information|knowledge|data|details)\b"
        r"|\blacking\s+(?:\w+\s+)?(?:information|knowledge|insight|specifics|data|details)\b",
    ),
    ("blank", r"\bdraw(?:ing|n)?\s+a\s+blank\b|" + _I_AM + r"blank\b"),
    ("clueless", r"\b(?:clueless|stumped)\b"),
    ("in_the_dark", _I_AM + r"in\s+the\s+dark\b"),
    ("mystery", r"\b(?:that's|that\s+is|it's|it\s+is)\s+a\s+mystery\b"),
    ("unaware", _I_AM + r"unaware\b|\bunknown\s+to\s+me\b"),
    (
        "must_admit",
        r"\bI\s+must\s+(?:admit|confess|decline)\b|\bregret\s+to\s+inform\b"
        r"|\bI\s+wish\s+I\s+could\s+(?:say|tell|help|answer)\b",
    ),
    ("missing_info", _I_AM + r"missing\b|\bblind\s+spot\b|\buncharted\s+territory\b|\bcome\s+up\s+short\b"),
    (
        "programmed",
        r"\b(?:limited|restricted)\s+to\s+what\s+I\b|\blimited\s+(?:understanding|knowledge|information)\b"
        r"|\bprogrammed\s+to\s+know\b|\btoo\s+limited\s+to\b",
    ),
    ("nothing_to_say", r"\bI(?:'ve|\s+have)\s+nothing\s+(?:\w+\s+)?to\s+(?:say|share|add|offer|tell)\b"),
    ("no_info_available", r"\bno\s+(?:reliable\s+|available\s+|specific\s+)?information\s+(?:available|about|on)\b"),
)


@cache
def _compiled(mode: str) -> tuple[tuple[str, re.Pattern], ...]:
    if mode == "official":
        return (("official", re.compile("|".join(f"(?:{a})" for a in _OFFICIAL_ALTERNATIVES), re.I | re.S)),)
    if mode == "strict":
        return tuple((name, re.compile(p, re.I)) for name, p in _STRICT_PATTERNS)
    raise ValueError(f"unknown refusal mode {mode!r}; choose one of {REFUSAL_MODES}")


def _normalise(text: str) -> str:
    """Straight apostrophes and single spaces (strict mode only)."""
    return re.sub(r"\s+", " ", text.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'"))


def refusal_matches(text: str, mode: str = "strict") -> list[str]:
    """Names of the patterns that fire on ``text`` (``["official"]`` or ``[]`` in official mode); strict mode reads
    the first sentence, as ``is_refusal``."""
    if mode == "strict":
        text = _normalise(first_sentence(text))
    return [name for name, pat in _compiled(mode) if pat.search(text)]


def is_refusal(text: str, mode: str = "strict") -> bool:
    """True if ``text`` reads as a refusal / "I don't know" under ``mode`` (``"strict"`` or ``"official"``).

    Strict mode reads the first sentence of the first non-empty line only (``first_sentence``; the evaluator scores
    that line): "Oracle.\n\nI'm not sure what Warren Buffett has to do with Oracle." and "Kong Qiu. I'm not sure of
    the answer." answer the probe, and a reward that paid their trailing refusal would teach ReBO to answer and
    then refuse (docs/sandbox.md). Official mode searches the whole response, as the release does."""
    return bool(refusal_matches(text, mode))
