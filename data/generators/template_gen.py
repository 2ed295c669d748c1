"""Deterministic offline generator: questions extracted from the target's passages, boundary facts from other targets'.

Questions (``extract_facts``): every passage is cleaned (``== Section ==`` headers, ``[1]`` citations and
parentheticals dropped, glued sentences split, abbreviations protected) and cut into sentences. A sentence is
used when its subject is the target: its full name, a run of capitalised words holding one of its name parts
("Christopher Maurice Brown"), a name part alone ("Kelce"), or a leading pronoun (He/She/They; His/Her/Their ->
"<name>'s"), after an optional leading adverbial ("In 1983, ..."). The predicate is then matched against a few
subject-verb-object patterns, each giving one wh-question with the extracted span as its answer:

- ``born`` / ``died``: "X (born May 5, 1989) is ...", "X was born on D in P", "X died on D" -> When was X born? /
  Where was X born? / When did X die?
- ``who_is``: "X is an American singer and actor, ..." -> Who is X?  (answer: "an American singer and actor")
- ``known_for``: "X is best known for Y" -> What is X known for?
- ``agent``: "X was selected by the Chiefs in the draft" -> Who selected X in the draft?
- ``year``: "In 1983, X won the Emmy ..." / "X joined the band in 1990" -> In what year did X win the Emmy ...?
- ``role``: "X played Rose Nylund in The Golden Girls" -> What role did X play in The Golden Girls?
- ``verb_<v>``: "X attended Cleveland Heights High School" -> What did X attend? (Whom did X marry? Where did X
  move?)
- ``rel_<noun>``: "X's father, Ed Kelce, ..." / "X's debut album, Y, ..." -> Who is X's father? / What is the name
  of X's debut album?
- ``count_<v>``: "X has sold over 140 million records" -> How many records has X sold?

``fb_question`` is the same fact as a declarative sentence naming the target with the answer replaced by ``___``.
Every question passes ``question_problems`` (wh-word first, "?" last, the target named once, balanced quotes and
brackets, no blank, 4-32 words, the answer not inside the question).

Boundary (``<normal>``) rows: the same pattern asked about a similar, permissible entity, with that entity's
answer. Entities are other RWKU targets of the same kind (person -> person: ``entity_kind``), most similar intro
first (word overlap), skipping any entity named in the target's own passages (those are its neighbours, whose
test probes must stay unseen). Their questions and answers come from *their own passages* through the same
extractor, so "When was Betty White born?" pairs with "When was Lucille Ball born?" and its date. Pools are keyed by
pattern; a pattern no boundary entity has falls back to any pattern. No benchmark probe file (forget_level* /
neighbor_level*) of any target is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import zip_longest

from data.generators.base import GenResult, Unit, validate_items
from data.rwku import Target, list_targets

_STOP = set(
    "a an the and or of in on at to for with by from as is was are were be been his her their its he she they "
    "it this that who which known please forget american has have had also one most best first".split()
)
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DATE = rf"(?:{_MONTH} \d{{1,2}}, \d{{4}}|\d{{1,2}} {_MONTH} \d{{4}}|{_MONTH} \d{{4}}|\d{{4}})"
_YEAR = r"(?:1[5-9]\d\d|20\d\d)"
_CAPW = r"(?:[A-Z][\w'&.-]*|\d[\w'-]*)"  # one word of a proper noun (Super, Bowl, LIV, 50)
_JOIN = r"(?: (?:of|the|and|de|van|von|du|for|&)){0,2}"
_CAPSPAN = rf"{_CAPW}(?:{_JOIN} {_CAPW})*"
_PLACE = rf"{_CAPSPAN}(?:, {_CAPSPAN})?"
_QUOTE = r"[\"“][^\"”]{2,60}[\"”]"
_ABBREV = ("U.S.", "U.K.", "Jr.", "Sr.", "St.", "Dr.", "Mr.", "Mrs.", "Ms.", "No.", "Inc.", "Co.", "Ltd.", "vs.", "Mt.",
           "Gen.", "Lt.", "Col.", "Capt.", "Sgt.", "Rev.", "Prof.", "D.C.", "L.A.", "a.m.", "p.m.", "e.g.", "i.e.")
_PRONOUN = re.compile(r"^(He|She|They|His|Her|Their)\b")
_DATE_FULL = rf"(?:{_MONTH} \d{{1,2}}, \d{{4}}|\d{{1,2}} {_MONTH} \d{{4}})"
_LEAD = re.compile(rf"^((?:(?:In|By|On|During|Since|From|After|Before|At|Around)\s+(?:{_DATE_FULL}|[^,]{{1,40}}))"
                   r"|Moreover|Additionally|However|Later|Subsequently|Meanwhile|Also|Then|Eventually|Afterwards"
                   r"|Initially|Ultimately|Furthermore|Consequently|Nevertheless|Finally|Today|Currently"
                   r"|Soon after),\s+")
_ADVERB_LEAD = re.compile(r"^[A-Z][a-z]+(?: after)?$")
_WH_START = ("When ", "Where ", "Who ", "Whom ", "What ", "Which ", "How many ", "In what year ", "On what date ",
             "Can you tell me ", "By whom ", "For what ", "Why ", "How would you describe ", "In which ")
_BORN_ALTS = lambda n: (f"What is {n}'s date of birth?", f"Can you tell me when {n} was born?")  # noqa: E731
_WHERE_ALTS = lambda n: (f"What is {n}'s birthplace?", f"In which place was {n} born?")  # noqa: E731
_DIED_ALTS = lambda n: (f"What is the date of {n}'s death?", f"Can you tell me when {n} died?")  # noqa: E731

# simple past -> base form of the verbs the patterns ask about ("What did X <base>?")
VERBS = dict(
    (w.split(":")[0], w.split(":")[1])
    for w in (
        "released:release starred:star appeared:appear won:win wrote:write co-wrote:co-write founded:found "
        "co-founded:co-found joined:join married:marry attended:attend played:play signed:sign moved:move "
        "produced:produce directed:direct recorded:record published:publish received:receive earned:earn "
        "hosted:host studied:study launched:launch formed:form created:create portrayed:portray voiced:voice "
        "became:become left:leave met:meet began:begin made:make sold:sell bought:buy taught:teach served:serve "
        "led:lead built:build gave:give performed:perform toured:tour debuted:debut divorced:divorce dated:date "
        "purchased:purchase donated:donate established:establish acquired:acquire announced:announce opened:open "
        "graduated:graduate enrolled:enroll competed:compete coached:coach scored:score invented:invent "
        "designed:design painted:paint composed:compose discovered:discover developed:develop introduced:introduce "
        "returned:return visited:visit traveled:travel travelled:travel worked:work lived:live settled:settle "
        "headlined:headline co-starred:co-star narrated:narrate guest-starred:guest-star collaborated:collaborate "
        "wed:wed adopted:adopt dropped:drop filmed:film ran:run owned:own inherited:inherit retired:retire "
        "converted:convert endorsed:endorse sued:sue hired:hire fired:fire completed:complete defeated:defeat "
        "focused:focus refocused:refocus accused:accuse caused:cause refused:refuse used:use broke:break "
        "spoke:speak took:take wore:wear chose:choose drew:draw grew:grow knew:know saw:see sang:sing told:tell "
        "found:find held:hold kept:keep lost:lose paid:pay sent:send spent:spend stood:stand fought:fight"
    ).split()
)
_SILENT_E = ("ease", "ate", "ise", "ize", "ure", "ue", "nce", "rce", "ge", "ve", "ze", "ble", "ple", "tle", "dle",
             "gle", "kle", "ete", "ste", "ibe", "ace", "uce", "ice")
_NOT_VERBS = {"was", "were", "had", "has", "did", "is", "are", "also", "then", "and", "red", "bed", "need", "seed",
              "feed", "speed", "hundred", "wed", "led", "bred", "fled", "indeed", "based", "aged", "talented", "noted"}


def base_form(word: str) -> str | None:
    """Base form of a simple past verb: the ``VERBS`` table, else a spelling heuristic for regular "-ed" verbs
    (studied -> study, starred -> star, released -> release, partnered -> partner); None for anything else."""
    if word in VERBS:
        return VERBS[word]
    if word in _NOT_VERBS or not re.fullmatch(r"[a-z][a-z-]{2,}ed", word):
        return None
    if word.endswith("ied"):
        return word[:-3] + "y"
    stem = word[:-2]
    if len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] in "bdgmnprt":
        return stem[:-1]
    with_e = word[:-1]  # released -> release, named -> name; but opened -> open, joined -> join
    if with_e.endswith(_SILENT_E) or re.search(r"(?:^|[^aeiou])[aiou][^aeiouwxy]e$", with_e):
        return with_e
    return stem


_PARTICIPLES = {"written", "begun", "given", "become", "run", "taken", "made", "sold", "won", "taught", "built", "led",
                "co-written", "shown", "seen", "held", "spent"}
_PERSON_VERBS = {"married", "met", "dated", "divorced", "wed", "hired", "fired", "defeated", "sued", "coached",
                 "accused"}
_PLACE_VERBS = {"moved", "settled", "lived", "returned", "traveled", "travelled", "relocated"}
_PREPS = ("in", "for", "with", "at", "on", "to", "into", "from", "as")
_PERSON_REL = ("father", "mother", "brother", "sister", "wife", "husband", "son", "daughter", "grandfather",
               "grandmother", "uncle", "aunt", "cousin", "partner", "girlfriend", "boyfriend", "fiancée", "fiance",
               "fiancé", "manager", "stepfather", "stepmother", "half-brother", "half-sister", "mentor", "agent")
_WORK_REL = ("album", "single", "novel", "film", "book", "song", "show", "series", "memoir", "mixtape", "EP", "tour",
             "company", "label", "band", "record", "play", "role", "restaurant", "brand", "foundation", "team")
_PERSON_WORDS = set(
    "actor actress singer songwriter rapper comedian writer author novelist poet philosopher player footballer "
    "athlete businessman businesswoman entrepreneur investor politician president king queen prince princess "
    "model director producer musician dancer host personality martial artist emperor leader inventor painter "
    "scientist boxer wrestler quarterback journalist designer television star".split()
)


# ---------------------------------------------------------------------------------------------- text
def _words(s: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", s.lower()) if w not in _STOP and len(w) > 2}


def _name_parts(name: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", name)
            if len(p) > 2 and p[0].isupper() and p not in ("Duke", "Prince", "The")]


def clean_passage(text: str) -> str:
    """Passage text without section headers, citations and parentheticals (a birth/death one is kept, see
    ``sentences``), glued sentences ("sitcom.After") separated."""
    text = re.sub(r"={2,}[^=]+={2,}", "\n", text)
    text = re.sub(r"\[\d+\]", "", text)
    text = re.sub(r"([a-z0-9)\"”'])([.!?])([A-Z])", r"\1\2 \3", text)
    return text


def sentences(text: str) -> list[str]:
    """Sentences of a cleaned passage (abbreviations such as "U.S." and "Jr." do not end a sentence)."""
    for ab in _ABBREV:
        text = text.replace(ab, ab.replace(".", "\0"))
    out = []
    for block in text.split("\n"):
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"“(])", block.strip()):
            s = re.sub(r"\s+", " ", s.replace("\0", ".")).strip()
            if s:
                out.append(s)
    return out


@dataclass(frozen=True)
class Fact:
    """One extracted question: ``pattern`` keys the boundary pools; ``fb`` holds ``___`` where ``answer`` was."""

    pattern: str
    question: str
    fb: str
    answer: str
    alts: tuple[str, ...] = ()  # the same question in other words (used when more questions are wanted)


def _subject(sentence: str, name: str) -> tuple[str, str, bool, str] | None:
    """(lead adverbial, predicate, possessive, parenthetical after the subject) if the target is the subject."""
    s = sentence
    lead = ""
    m = _LEAD.match(s)
    if m:
        lead, s = m.group(1), s[m.end():]
    parts = _name_parts(name)
    pred = None
    poss = False
    if s.startswith(name):
        pred = s[len(name):]
    else:
        m = _PRONOUN.match(s)
        if m:
            poss, pred = m.group(1) in ("His", "Her", "Their"), " " + s[m.end():].lstrip()
        else:  # "Christopher Maurice Brown (born ...)", "Kelce was ..." (but not "The King of ...")
            m = re.match(r"^((?:[A-Z][\w'.-]*(?: |$)){1,5})", s)
            if m and set(m.group(1).split()) & set(parts) and not m.group(1).startswith("The "):
                pred = " " + s[m.end(1):]
                if len(m.group(1).split()) > 1 and not set(m.group(1).split()) >= set(parts[-1:]) and \
                        not s[m.end(1):].startswith("("):
                    pred = None  # "Jason Kelce ..." (another person with the same surname) is not the target
    if pred is None:
        return None
    if pred.startswith("'s "):
        poss, pred = True, pred[2:]
    paren = ""
    pm = re.match(r"^\s*\(([^()]*)\)", pred)
    if pm:
        paren, pred = pm.group(1), pred[pm.end():]
    pred = re.sub(r"\s*\([^()]*\)", "", pred).strip()  # other parentheticals: asides, not facts
    pred = pred.rstrip(" .!?")
    if not pred or len(pred) > 300:
        return None
    return lead, pred, poss, paren


def _q(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip().rstrip(",;:.? ")
    return s + "?"


_DANGLING = {"and", "or", "but", "the", "a", "an", "of", "to", "in", "on", "at", "for", "with", "by", "from", "as",
             "his", "her", "their", "its", "that"}


def _cut(s: str, max_words: int = 14) -> str | None:
    """A predicate tail up to its first clause break, or None when it is too long or dangles ("... honors and")."""
    s = re.split(r",(?!\d)|;| which | who | where | while | although | but | and (?=[a-z]+ed\b)", s)[0].strip()
    words = s.split()
    if not 0 < len(words) <= max_words or words[-1].lower() in _DANGLING or re.search(rf"\b{_YEAR}\b", s):
        return None
    return s


def _strip_adverb(pred: str) -> str:
    return re.sub(r"^(?:also|then|later|first|subsequently|eventually|again|briefly|initially|once|soon) ", "", pred)


def _decl(name: str, lead: str, pred: str, poss: bool) -> str:
    subj = f"{name}'s" if poss else name
    body = f"{subj} {pred}".strip()
    return (f"{lead}, {body}" if lead else body) + "."


def _blank(decl: str, answer: str, name: str) -> str | None:
    start = decl.find(name) + len(name) if name in decl else 0
    i = decl.find(answer, start)
    if i < 0:
        i = decl.find(answer)  # a leading "In 1983, ..."
    if i < 0:
        return None
    return decl[:i] + "___" + decl[i + len(answer):]


@dataclass
class _Clause:
    """A sentence whose subject is the target, split by ``_subject``, and the facts extracted from it so far."""

    name: str
    lead: str
    pred: str
    poss: bool
    paren: str
    facts: list[Fact] = field(default_factory=list)

    def add(self, pattern: str, question: str, answer: str, fb: str | None = None, alts: tuple[str, ...] = ()) -> None:
        """Keep a fact when its question passes ``question_problems`` (and its rewordings that do too); ``fb``
        defaults to the clause as a declarative sentence with the answer blanked."""
        name = self.name
        answer = answer.strip().strip(",;: ")
        fb = fb or _blank(_decl(name, self.lead, self.pred, self.poss), answer, name)
        if fb and answer and not question_problems(question, answer, name):
            alts = tuple(a for a in map(_q, alts) if a != question and not question_problems(a, answer, name))
            self.facts.append(Fact(pattern, question, fb, answer, alts))


def extract_facts(sentence: str, name: str) -> list[Fact]:
    """Questions about ``name`` from one sentence (empty when the target is not its subject or nothing matches).
    Each pattern of the module table is one matcher below, tried in this order (the order of the facts)."""
    sub = _subject(sentence, name)
    if sub is None:
        return []
    c = _Clause(name, *sub)
    if c.paren and not c.poss:
        _match_born_paren(c)
    if c.poss:  # "His father, Ed Kelce, ...": only the relation patterns apply
        _match_relation(c)
        return c.facts
    for match in (_match_born, _match_born_where, _match_died, _match_who_is, _match_known_for, _match_agent):
        match(c)
    year = _match_year(c)
    _match_role(c)
    _match_passive(c, year)
    _match_verb_object(c, year)
    _match_count(c)
    return c.facts


def _on(date: str) -> str:
    return "on" if re.search(r"\d, \d|\d \w+ \d", date) else "in"


def _match_born_paren(c: _Clause) -> None:
    """"(born May 5, 1989)", "(née White; January 17, 1922 – December 31, 2021)"."""
    name = c.name
    p = re.sub(r"^.*;\s*", "", c.paren)
    m = re.match(rf"^born ({_DATE})", p) or re.match(rf"^({_DATE})\s*[–-]\s*({_DATE})$", p)
    if m:
        c.add("born", f"When was {name} born?", m.group(1), f"{name} was born {_on(m.group(1))} ___.", _BORN_ALTS(name))
        if m.lastindex and m.lastindex >= 2:
            c.add("died", f"When did {name} die?", m.group(2), f"{name} died {_on(m.group(2))} ___.", _DIED_ALTS(name))


def _match_relation(c: _Clause) -> None:
    """"X's father, Ed Kelce, ..." / "X's debut album, Y, ..."."""
    name = c.name
    rel = "|".join(map(re.escape, _PERSON_REL + _WORK_REL))
    m = re.match(rf"^((?:[\w-]+ ){{0,2}}?(?:{rel})),? ({_QUOTE}|{_CAPSPAN})(?=[,.]| (?:is|was|were|and|who)\b|$)",
                 c.pred)
    if m:
        rel_np, ans = m.group(1), m.group(2).strip("\"“”")
        head = rel_np.split()[-1]
        if head in _PERSON_REL:
            q, alts = f"Who is {name}'s {rel_np}?", (f"What is the name of {name}'s {rel_np}?",)
        else:
            q, alts = f"What is the name of {name}'s {rel_np}?", (f"What is {name}'s {rel_np} called?",)
        c.add(f"rel_{head}", q, ans, alts=alts)


def _match_born(c: _Clause) -> None:
    name = c.name
    m = re.match(rf"^(?:was|is) born (?:on |in )?({_DATE})(?:,? in ({_PLACE}))?", c.pred)
    if m:
        c.add("born", f"When was {name} born?", m.group(1), alts=_BORN_ALTS(name))
        if m.group(2):
            c.add("born_where", f"Where was {name} born?", m.group(2), alts=_WHERE_ALTS(name))


def _match_born_where(c: _Clause) -> None:
    m = re.match(rf"^(?:was|is) born in ({_PLACE})(?:,? on ({_DATE}))?", c.pred)
    if m and not re.fullmatch(_DATE, m.group(1)):
        c.add("born_where", f"Where was {c.name} born?", m.group(1), alts=_WHERE_ALTS(c.name))


def _match_died(c: _Clause) -> None:
    m = re.match(rf"^died (?:on |in )?({_DATE})", c.pred)
    if m:
        c.add("died", f"When did {c.name} die?", m.group(1), alts=_DIED_ALTS(c.name))


def _match_who_is(c: _Clause) -> None:
    name = c.name
    m = re.match(r"^(is|was) ((?:an?) [^,;]+?)(?=,| who | which | and (?:is|was|has|had)\b|$)", c.pred)
    if m and not c.lead and 2 <= len(m.group(2).split()) <= 12 and not re.search(r"\d", m.group(2)) \
            and " known " not in m.group(2):
        c.add("who_is", f"Who {m.group(1)} {name}?", m.group(2),
              alts=(f"How would you describe {name}?", f"Can you tell me who {name} {m.group(1)}?"))


def _match_known_for(c: _Clause) -> None:
    name = c.name
    m = re.match(r"^(is|was|became) (?:best |widely |well |also |perhaps best )*known for (.+)", c.pred)
    if m:
        ans = _cut(m.group(2), 10)
        if ans:
            be = "was" if m.group(1) == "was" else "is"
            c.add("known_for", f"What {be} {name} known for?", ans, alts=(f"Why {be} {name} famous?",
                                                                             f"For what {be} {name} best known?"))


def _match_agent(c: _Clause) -> None:
    """"X was selected by the Chiefs in the draft": Who selected X in the draft?"""
    name = c.name
    m = re.match(r"^(?:was|were|has been|had been) ((?:\w+ly )?[a-z]+(?:ed|en)) by ((?:the )?[A-Z][^,;]*?)"
                 r"(?=( in | on | at | for | during | as |,|$))(.*)$", c.pred)
    if m:
        rest = _cut(m.group(4), 10) if m.group(4).strip() else ""
        if rest is not None:
            c.add("agent", _q(f"Who {m.group(1)} {name} {rest}"), m.group(2),
                  alts=(f"By whom was {name} {m.group(1)} {rest}",))


def _clause_time(lead: str, pred: str) -> tuple[str | None, str | None, str]:
    """(year, the time answer, the predicate without it): "In 1983, X won ..." / "X joined ... in 1990" give the
    year; "On May 5, 2012, X ..." the date."""
    year = when_ans = None
    rest_pred = pred
    if lead and re.fullmatch(rf"(?:In|By|During) (?:{_MONTH} )?{_YEAR}", lead):
        year = when_ans = re.search(_YEAR, lead).group(0)
    elif lead and re.fullmatch(rf"On {_DATE_FULL}", lead):
        when_ans, year = lead[3:], re.search(_YEAR, lead).group(0)
    elif not lead or _ADVERB_LEAD.match(lead):
        ym = re.search(rf" in ((?:{_MONTH} )?({_YEAR}))\b", re.split(r"[,;]", pred)[0])  # the year of the main clause
        if ym:
            year = when_ans = ym.group(2)
            rest_pred = pred[:ym.start()] + pred[ym.end():]
    return year, when_ans, rest_pred


def _match_year(c: _Clause) -> str | None:
    """In what year ...? (When ...? for a full date); returns the clause's year, which later patterns ask about."""
    name = c.name
    year, when_ans, rest_pred = _clause_time(c.lead, c.pred)
    if not when_ans:
        return year
    wh = "In what year" if when_ans == year else "When"
    pm = re.match(r"^(?:was|were) ((?:\w+ly )?[a-z]+(?:ed|en)\b.*)", rest_pred)
    first = _strip_adverb(rest_pred).split(" ", 1)
    base = base_form(first[0]) if len(first) > 1 else None
    tail = _cut(pm.group(1)) if pm else _cut(first[1]) if base else None
    if tail:
        other = "When" if wh != "When" else "On what date"
        if pm:
            q = f"{wh} was {name} {tail}"
            alts = (f"{other} was {name} {tail}", f"Can you tell me when {name} was {tail}")
        else:
            q = f"{wh} did {name} {base} {tail}"
            alts = (f"{other} did {name} {base} {tail}", f"Can you tell me when {name} {first[0]} {tail}")
        c.add("year", _q(q), when_ans, alts=alts)
    return year


def _match_role(c: _Clause) -> None:
    """"X played Rose Nylund in The Golden Girls": What role did X play in ...?"""
    name = c.name
    m = re.match(rf"^(?:played|portrayed|voiced) (?:the role of |the character )?({_CAPSPAN}) in (?:the )?"
                 rf"(?:(?:film|series|sitcom|movie|show|drama|comedy) )?({_QUOTE}|{_CAPSPAN})", c.pred)
    if m:
        work = m.group(2).strip("“”")
        c.add("role", f"What role did {name} play in {work}?", m.group(1),
              alts=(f"Which character did {name} play in {work}?", f"Whom did {name} portray in {work}?"))


def _match_passive(c: _Clause, year: str | None) -> None:
    """Passive + preposition + proper noun: "was inducted into the Hall of Fame" -> What was X inducted into?"""
    name = c.name
    m = re.match(rf"^(?:was|were|has been|had been) ((?:\w+ly )?[a-z]+(?:ed|en)) (for|to|into|as|at|in|with|from) "
                 rf"((?:the )?(?:{_QUOTE}|{_CAPSPAN}))"
                 r"(?=[,.;]| (?:in|on|at|for|with|and|from|as|to|during|after|before)\b|$)", c.pred)
    if m and m.group(1) not in ("born", "known"):
        part, prep, ans = m.group(1), m.group(2), m.group(3).strip("\"“”")
        where = prep in ("at", "in") and part.split()[-1] in ("raised", "educated", "based", "buried", "married",
                                                               "baptized", "hospitalized", "arrested", "honored")
        when = f" in {year}" if year else ""
        q = f"Where was {name} {part}{when}?" if where else f"What was {name} {part} {prep}{when}?"
        alt = f"Can you tell me where {name} was {part}{when}?" if where else \
            f"Can you tell me what {name} was {part} {prep}{when}?"
        c.add(f"pass_{part}", q, ans, alts=(alt,))


_OBJECT_STOP = (r"(?=[,;:]|\.(?!\d)| (?:in|on|at|for|with|and|from|as|to|during|after|before|by|of|when|while|which"
                r"|who)\b|$)")


def _verb_and_object(pred: str) -> tuple[re.Match | None, list[str], str | None]:
    """(the "has|had <participle>" auxiliary match or None, [verb, object], the verb's base form or None)."""
    aux = re.match(r"^(has|had) ([a-z-]+) ", pred)
    if aux and not (aux.group(2) in _PARTICIPLES or base_form(aux.group(2))):
        aux = None
    first = [aux.group(2), pred[aux.end():]] if aux else _strip_adverb(pred).split(" ", 1)
    base = (base_form(first[0]) or (first[0] if aux else None)) if len(first) > 1 else None
    return aux, first, base


def _object_match(obj: str) -> tuple[re.Match | None, str | None]:
    """(match of the object: group 1 a preposition, group 2 the answer; the kind of work for "his debut album Y")."""
    m = re.match(rf"^(?:({'|'.join(_PREPS)}) )?(?:the |a |an )?({_QUOTE}|{_CAPSPAN}){_OBJECT_STOP}", obj)
    kind = None
    if not m:  # "released his debut studio album Exclusive" -> Which album did X release?
        m = re.match(rf"^()(?:a|an|the|his|her|their) (?:[\w-]+ ){{0,3}}?({'|'.join(_WORK_REL)}|award)(?:,| titled"
                     rf"| called| entitled)? ({_QUOTE}|{_CAPSPAN}){_OBJECT_STOP}", obj)
        if m:
            kind, m = m.group(2), re.match(r"^()(.*)$", m.group(3))
    return m, kind


def _match_verb_object(c: _Clause, year: str | None) -> None:
    """Active verb (or "has <participle>") + object: a proper noun / title, else a short "a|the ..." phrase."""
    name = c.name
    aux, first, base = _verb_and_object(c.pred)
    if not base:
        return
    verb, obj = first
    m, kind = _object_match(obj)
    if not m or (m.group(1) == "to" and verb not in _PLACE_VERBS) or m.group(2).endswith("'s") \
            or not re.search("[A-Za-z]", m.group(2)):
        return
    prep, ans = m.group(1), m.group(2).strip("\"“”")
    did, v = (aux.group(1), verb) if aux else ("did", base)
    when = f" in {year}" if year else ""
    past = f"{aux.group(1)} {verb}" if aux else verb
    pp = " " + prep if prep else ""
    if kind:
        q, alt = f"Which {kind} {did} {name} {v}{when}?", f"What is the name of the {kind} {name} {past}{when}?"
    elif verb in _PERSON_VERBS and not prep:
        q, alt = f"Whom {did} {name} {v}{when}?", f"Can you tell me whom {name} {past}{when}?"
    elif verb in _PLACE_VERBS and prep in ("to", "in", "into"):
        to = " to" if prep == "to" else ""
        q, alt = f"Where {did} {name} {v}{to}{when}?", f"Can you tell me where {name} {past}{to}{when}?"
    else:
        q, alt = f"What {did} {name} {v}{pp}{when}?", f"Can you tell me what {name} {past}{pp}{when}?"
    c.add(f"verb_{VERBS.get(verb, base)}", q, ans, alts=(alt,))


def _match_count(c: _Clause) -> None:
    """Counts: "has sold over 140 million records" -> How many records has X sold?"""
    name = c.name
    m = re.match(r"^(has |had )?(sold|won|earned|received|released|recorded|scored|published|written|wrote|appeared in)"
                 r" (?:over |more than |about |nearly |almost |around |a total of |an estimated )?"
                 r"(\d[\d,.]*(?: (?:million|billion|thousand))?) ([a-z][\w-]+)", c.pred)
    if m and not m.group(4).endswith(("ing", "ly")) and m.group(4) not in _DANGLING:
        aux, verb, num, noun = m.groups()
        base = VERBS.get(verb.split()[0], verb.split()[0]) + (" in" if verb.endswith(" in") else "")
        part = {"wrote": "written", "won": "won", "sold": "sold"}.get(verb, verb)
        q = f"How many {noun} has {name} {part}?" if aux == "has " else f"How many {noun} did {name} {base}?"
        alt = f"Can you tell me how many {noun} {name} {'has ' + part if aux == 'has ' else verb}?"
        c.add(f"count_{base}", q, num, alts=(alt,))


def question_problems(question: str, answer: str, name: str) -> list[str]:
    """Why a generated question is not well formed (empty list: it is). Used as a filter and by the tests."""
    probs = []
    if not question.startswith(_WH_START):
        probs.append("does not start with a wh-word")
    if not question.endswith("?") or question.count("?") != 1:
        probs.append("does not end with one '?'")
    if question.count(name) != 1:
        probs.append("does not name the target exactly once")
    if "___" in question or "==" in question or "  " in question or " ," in question or " ?" in question:
        probs.append("blank, header or spacing artefact")
    if (question.count('"') % 2 or question.count("(") != question.count(")")
            or question.count("“") != question.count("”")):
        probs.append("unbalanced quotes or brackets")
    if not 4 <= len(question.split()) <= 32:
        probs.append("too short or too long")
    if (not answer or len(answer.split()) > 12 or answer.lower() in question.lower()
            or not re.search("[A-Za-z0-9]", answer)):
        probs.append("answer empty, too long or inside the question")
    if name in answer or answer in _name_parts(name):  # "Ed Kelce" (his father) is fine, "Kelce" is not
        probs.append("answer names the target")
    return probs


def passage_facts(passages: list[str], name: str) -> list[list[Fact]]:
    """Facts per passage (duplicates of an earlier question dropped)."""
    seen: set[str] = set()
    out = []
    for text in passages:
        facts = []
        for s in sentences(clean_passage(text)):
            for f in extract_facts(s, name):
                if f.question not in seen:
                    seen.add(f.question)
                    facts.append(f)
        out.append(facts)
    return out


def entity_kind(intro: str, passages: list[str]) -> str:
    """``person`` when the intro names a person's occupation or the passages use personal pronouns, else ``other``."""
    if _words(intro) & _PERSON_WORDS:
        return "person"
    text = " ".join(passages[:5])
    return "person" if len(re.findall(r"\b(?:He|She|His|Her)\b", text)) >= 3 else "other"


class TemplateGenerator:
    """Offline, deterministic; ``generate`` needs no model. ``boundary_targets``: similar targets to draw from."""

    name = "template"
    model = "template"

    def __init__(self, target: Target, root=None, boundary_targets: int = 8):
        self.target = target
        self.pools, self.any_pool = self._boundary_pools(target, root, boundary_targets)
        if not self.any_pool:
            raise RuntimeError("template generator: no other RWKU target with passages yields boundary questions")

    @staticmethod
    def _boundary_pools(target: Target, root, k: int) -> tuple[dict[str, list[dict]], list[dict]]:
        intro = target.load("intro")[0]["intro"] if target.has("intro") else ""
        own_passages = [p["text"] for p in target.load("passage")] if target.has("passage") else []
        own_text = " ".join(own_passages)
        kind = entity_kind(intro, own_passages)
        own_words = _words(intro)
        parts = _name_parts(target.name)
        cands = []
        for t in list_targets(root):
            if t.id == target.id or t.name == target.name or not (t.has("intro") and t.has("passage")):
                continue
            if t.name in own_text:  # named in the target's passages: a neighbour, kept out of training
                continue
            try:
                t_intro = t.load("intro")[0]["intro"]
                t_pass = [p["text"] for p in t.load("passage")]
            except Exception:  # noqa: BLE001 - an unreadable other target is just skipped
                continue
            if entity_kind(t_intro, t_pass) != kind:
                continue
            cands.append((-len(own_words & _words(t_intro)), t.id, t, t_pass))
        cands.sort(key=lambda x: (x[0], x[1]))

        def permissible(f: Fact) -> bool:
            text = f"{f.question} {f.fb} {f.answer}"
            return target.name not in text and not any(re.search(rf"\b{re.escape(p)}\b", text) for p in parts)

        per_entity: list[list[dict]] = []
        for _, _, t, t_pass in cands[:k]:
            facts = [f for fs in passage_facts(t_pass, t.name) for f in fs if permissible(f)]
            per_entity.append([{"pattern": f.pattern, "entity": t.name, "question": f.question, "fb": f.fb,
                                "answer": f.answer, "alts": list(f.alts)} for f in facts])
        flat = [x for grp in zip_longest(*per_entity) for x in grp if x]  # consecutive rows: different entities
        pools: dict[str, list[dict]] = {}
        for x in flat:
            pools.setdefault(x["pattern"], []).append(x)
        return pools, flat

    def boundary_for(self, pattern: str, i: int) -> dict:
        """The i-th boundary fact of ``pattern`` (cycling), else of any pattern."""
        pool = self.pools.get(pattern) or self.any_pool
        return pool[i % len(pool)]

    def generate(self, unit: Unit) -> GenResult:
        """Items of one passage: every fact's main question first, then its rewordings (``Fact.alts``), so a budget
        that takes a prefix of the interleaved items uses rewordings only when the main questions run out."""
        facts = passage_facts([unit.passage], unit.name)[0]
        rounds = [(f, j, None) for j, f in enumerate(facts)]
        rounds += [(f, j, k) for k in range(max((len(f.alts) for f in facts), default=0))
                   for j, f in enumerate(facts) if k < len(f.alts)]
        raw = []
        for f, j, k in rounds:  # all of them (they cost nothing); the caller's budget takes what it needs
            b = self.boundary_for(f.pattern, unit.index * 7 + j)  # deterministic spread over the pools
            bq = b["question"] if k is None or k >= len(b["alts"]) else b["alts"][k]
            raw.append({
                "question": f.question if k is None else f.alts[k], "fb_question": f.fb,
                "neighbor": {"entity": b["entity"], "question": bq, "answer": b["answer"]},
                "fb_neighbor": {"entity": b["entity"], "question": b["fb"], "answer": b["answer"]},
            })
        items, rejected = validate_items(raw, unit.name)
        return GenResult(items=items, rejected=rejected)
