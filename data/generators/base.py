"""What every generator shares: the work unit, the synthesis prompt, JSON parsing and item validation.

One *unit* is one passage of the target; a generator turns it into up to ``n_items`` items::

    {"question": str,            # a question about the target (names it)
     "fb_question": str,         # the same fact as a fill-in-the-blank sentence with "___"
     "neighbor":    {"entity": str, "question": str, "answer": str},   # boundary question + answer
     "fb_neighbor": {"entity": str, "question": str, "answer": str}}   # boundary fill-in-the-blank
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema

_ENTITY_QA = {
    "type": "object",
    "required": ["entity", "question", "answer"],
    "properties": {
        "entity": {"type": "string", "minLength": 1},
        "question": {"type": "string", "minLength": 8},
        "answer": {"type": "string", "minLength": 1},
    },
}
ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["question", "fb_question", "neighbor", "fb_neighbor"],
    "properties": {
        "question": {"type": "string", "minLength": 8},
        "fb_question": {"type": "string", "minLength": 8, "pattern": "___"},
        "neighbor": _ENTITY_QA,
        "fb_neighbor": _ENTITY_QA,
    },
}
RESPONSE_SCHEMA: dict[str, Any] = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}}
_ITEM_VALIDATOR = jsonschema.Draft7Validator(ITEM_SCHEMA)

SYSTEM_PROMPT = "You write training data for machine unlearning research. Reply with one JSON object only."
USER_PROMPT = """Target: {name}
Description: {intro}
Passage about the target:
\"\"\"{passage}\"\"\"
Number of items: {n}

Write {n} items. Each item has:
- "question": a specific question about {name} answerable from the passage; it must mention {name} by name.
- "fb_question": the same fact as one declarative sentence in which the answer is replaced by "___".
- "neighbor": the same kind of question about a different but similar, well-known entity (not {name} and not
  mentioning {name}), as {{"entity": the entity's name, "question": ..., "answer": a short correct answer}}.
- "fb_neighbor": a fill-in-the-blank sentence ("___") about that kind of similar entity, as
  {{"entity": ..., "question": ..., "answer": the text of the blank}}.
Reply with JSON only: {{"items": [{{"question": "...", "fb_question": "...", "neighbor": {{"entity": "...",
"question": "...", "answer": "..."}}, "fb_neighbor": {{"entity": "...", "question": "...", "answer": "..."}}}}]}}"""


@dataclass(frozen=True)
class Unit:
    """One generation request: a passage of the target and how many items to draw from it."""

    key: str  # stable id of the unit (resume key), e.g. "p0007"
    name: str  # target name, e.g. "Stephen King"
    intro: str  # one-line description of the target
    passage: str  # the passage text
    n_items: int  # items requested
    index: int = 0  # passage index (template generator uses it for deterministic variety)


@dataclass
class GenResult:
    """Valid items of one unit and how many were rejected (bad JSON or failing validation)."""

    items: list[dict] = field(default_factory=list)
    rejected: int = 0
    requests: int = 0  # endpoint/model calls made (0 on a cache hit)
    cache_hits: int = 0


class Generator(Protocol):
    name: str
    model: str

    def generate(self, unit: Unit) -> GenResult: ...


def build_messages(unit: Unit) -> list[dict[str, str]]:
    """The chat messages sent to an LLM generator for one unit (same for `openai` and `local`)."""
    user = USER_PROMPT.format(name=unit.name, intro=unit.intro, passage=unit.passage.strip(), n=unit.n_items)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class MalformedResponse(ValueError):
    """The model's answer is not a JSON object of the expected shape."""


def parse_response(text: str) -> list:
    """Extract the ``items`` list from a model answer (tolerates code fences and text around the JSON)."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.S)
    if fence:
        s = fence.group(1).strip()
    start, end = s.find("{"), s.rfind("}")
    if start < 0 or end <= start:
        raise MalformedResponse("no JSON object in the answer")
    try:
        obj = json.loads(s[start : end + 1])
    except json.JSONDecodeError as e:
        raise MalformedResponse(f"invalid JSON: {e.msg}") from e
    try:
        jsonschema.validate(obj, RESPONSE_SCHEMA)
    except jsonschema.ValidationError as e:
        raise MalformedResponse(f"answer does not match the response schema: {e.message}") from e
    return obj["items"]


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def validate_items(raw_items: list, name: str) -> tuple[list[dict], int]:
    """Keep items that match ITEM_SCHEMA and the semantic checks; return (kept, rejected count).

    Semantic checks: the boundary entity is not the target, the boundary questions do not mention the
    target's full name (they must be permissible), and questions are single strings without the answer blank
    left empty in the wrong place.
    """
    kept, rejected = [], 0
    target = _norm(name)
    for it in raw_items:
        if not isinstance(it, dict) or next(_ITEM_VALIDATOR.iter_errors(it), None) is not None:
            rejected += 1
            continue
        bad = any(_norm(it[k]["entity"]) == target or target in _norm(it[k]["question"])
                  for k in ("neighbor", "fb_neighbor"))
        if bad:
            rejected += 1
            continue
        kept.append(
            {
                "question": it["question"].strip(),
                "fb_question": it["fb_question"].strip(),
                "neighbor": {k: it["neighbor"][k].strip() for k in ("entity", "question", "answer")},
                "fb_neighbor": {k: it["fb_neighbor"][k].strip() for k in ("entity", "question", "answer")},
            }
        )
    return kept, rejected
