"""Deterministic offline generator: heuristics over passage sentences plus other targets' probes.

- Questions: sentences of the passage that mention the target (its name, first/last name, or a leading
  pronoun, which is replaced by the name) get one salient span blanked: a quoted title, a year, a number, or
  a capitalised phrase that is not the target's name. ``fb_question`` is the sentence with ``___``;
  ``question`` is the echo-question form ("... what year ...?"). Crude, but about the target and answerable
  from its corpus.
- Boundary: entities are *other* RWKU targets (most similar intro first, by word overlap) and those targets'
  neighbor entities; boundary questions and answers are those entities' own probes (QA from forget_level2 /
  neighbor_level2, FB from forget_level1 / neighbor_level1). The target's own neighbor probes are never used
  (they are its locality test set). Probes mentioning the target are skipped.
"""

from __future__ import annotations

import re
from itertools import zip_longest

from data.generators.base import GenResult, Unit, validate_items
from data.rwku import Target, list_targets

_STOP = set(
    "a an the and or of in on at to for with by from as is was are were be been his her their its he she they "
    "it this that who which known please forget american".split()
)
_PRONOUN_START = re.compile(r"^(He|She|They|His|Her|Their)\b")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_QUOTED = re.compile(r"[\"“]([^\"”]{3,60})[\"”]")
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_NUMBER = re.compile(r"\b(\d[\d,.]*(?:\s(?:million|billion|thousand|hundred))?)\b")
_CAPS = re.compile(r"\b([A-Z][a-zA-Z'&.-]+(?:\s+(?:of|the|and|de|van|von|du)?\s*[A-Z][a-zA-Z'&.-]+)*)(?![\w-])")


def _words(s: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", s.lower()) if w not in _STOP and len(w) > 2}


def _name_parts(name: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", name) if len(p) > 2 and p[0].isupper()]


def _spans(sentence: str, name: str) -> list[tuple[str, str]]:
    """Candidate (kind, span) answers in salience order, never overlapping the target's name."""
    parts = set(_name_parts(name))
    out: list[tuple[str, str]] = []
    for m in _QUOTED.finditer(sentence):
        out.append(("title", m.group(1)))
    for m in _YEAR.finditer(sentence):
        out.append(("year", m.group(1)))
    for m in _CAPS.finditer(sentence):
        span = m.group(1).rstrip(".")
        if m.start() == 0 or span.split()[0] in _SKIP_CAPS:
            continue
        if set(span.split()) & parts or name in span or len(span) < 3:
            continue
        out.append(("name", span))
    for m in _NUMBER.finditer(sentence):
        if not _YEAR.fullmatch(m.group(1)):
            out.append(("number", m.group(1)))
    seen, uniq = set(), []
    for kind, span in out:
        if span not in seen:
            seen.add(span)
            uniq.append((kind, span))
    return uniq


def _about_target(sentence: str, name: str) -> str | None:
    """The sentence rewritten to name the target explicitly, or None if it is not about the target."""
    s = sentence.strip()
    if name in s:
        return s
    m = _PRONOUN_START.match(s)
    if m:
        possessive = m.group(1) in ("His", "Her", "Their")
        return name + ("'s" if possessive else "") + s[m.end() :]
    parts = _name_parts(name)
    if parts and all(re.search(rf"\b{re.escape(p)}\b", s) for p in parts):  # "Stephen Edwin King ..."
        return s
    for part in parts:  # "King was born ..." -> "Stephen King was born ..." (not "the King of ...")
        m = re.search(rf"(?<!the )(?<!The )\b{re.escape(part)}\b", s)
        if m:
            return s[: m.start()] + name + s[m.end() :]
    return None


_SKIP_CAPS = set(
    "He She They His Her In The On At After Before During When While Although January February March April May June "
    "July August September October November December Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
)
_WH = {"title": "what title", "year": "what year", "number": "how many", "name": "what name"}


def sentence_items(sentence: str, name: str, max_per_sentence: int = 2) -> list[tuple[str, str, str]]:
    """(question, fb_question, answer) triples from one sentence about the target."""
    s = _about_target(sentence, name)
    if not s or len(s) < 25 or len(s) > 400 or "___" in s or s.count('"') % 2:
        return []
    s = s.rstrip()
    if s[-1] not in ".!?":
        s += "."
    out = []
    for kind, span in _spans(s, name)[:max_per_sentence]:
        fb = s.replace(span, "___", 1)
        q = s.replace(span, _WH[kind], 1).rstrip(".!?") + "?"
        out.append((q, fb, span))
    return out


class TemplateGenerator:
    """Offline, deterministic; ``generate`` needs no model. ``boundary_targets``: similar targets to draw from."""

    name = "template"
    model = "template"

    def __init__(self, target: Target, root=None, boundary_targets: int = 6):
        self.target = target
        self.qa_pool, self.fb_pool = self._boundary_pools(target, root, boundary_targets)
        if not self.qa_pool or not self.fb_pool:
            raise RuntimeError("template generator: no other RWKU targets with probes found for boundary questions")

    @staticmethod
    def _boundary_pools(target: Target, root, k: int) -> tuple[list[dict], list[dict]]:
        own = _words(target.load("intro")[0]["intro"]) if target.has("intro") else set()
        others = []
        for t in list_targets(root):
            if t.id == target.id or t.name == target.name or not t.has("intro"):
                continue
            try:
                sim = len(own & _words(t.load("intro")[0]["intro"]))
            except Exception:  # noqa: BLE001 - an unreadable neighbour target is just skipped
                continue
            others.append((-sim, t.id, t))
        others.sort(key=lambda x: (x[0], x[1]))
        parts = _name_parts(target.name)

        def ok(q: str) -> bool:
            return target.name not in q and not any(re.search(rf"\b{re.escape(p)}\b", q) for p in parts)

        qa_lists, fb_lists = [], []
        for _, _, t in others[:k]:
            qa, fb = [], []
            for stem, dst in (("forget_level2", qa), ("neighbor_level2", qa), ("forget_level1", fb), ("neighbor_level1", fb)):
                if not t.has(stem):
                    continue
                for p in t.load(stem):
                    if ok(p["query"]):
                        ent = p.get("neighbor") or t.name
                        dst.append({"entity": ent, "question": p["query"], "answer": p["answer"]})
            qa_lists.append(qa)
            fb_lists.append(fb)
        # interleave the targets so consecutive items use different entities
        qa_pool = [x for grp in zip_longest(*qa_lists) for x in grp if x]
        fb_pool = [x for grp in zip_longest(*fb_lists) for x in grp if x and "___" in x["question"]]
        return qa_pool, fb_pool

    def generate(self, unit: Unit) -> GenResult:
        text = re.sub(r"\s+", " ", re.sub(r"=+[^=\n]+=+", " ", unit.passage))  # drop "== Section ==" headers
        sentences = _SENT_SPLIT.split(text.strip())
        triples = [t for s in sentences for t in sentence_items(s, unit.name)]
        if len(triples) < unit.n_items:  # short passage: blank further spans of the same sentences
            triples += [t for s in sentences for t in sentence_items(s, unit.name, max_per_sentence=4)[2:]]
        raw = []
        for j, (q, fb, _answer) in enumerate(triples[: unit.n_items]):
            i = unit.index * 7 + j  # deterministic spread over the pools
            raw.append(
                {"question": q, "fb_question": fb, "neighbor": self.qa_pool[i % len(self.qa_pool)],
                 "fb_neighbor": self.fb_pool[i % len(self.fb_pool)]}
            )
        items, rejected = validate_items(raw, unit.name)
        return GenResult(items=items, rejected=rejected)
