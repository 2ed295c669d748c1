"""The paper's prompt forms, shared by RS, ReBO (``data.prompt_format`` rwku | muse) and the evaluator, so that a
model is trained in exactly the text it is tested in.

RWKU probe wrapper (the benchmark's eval_forget.py): the user turn below in the chat template, then "Answer:"
- FB (level 1): "Please complete the blank in the following question.\\nQuestion: {q}\\n"
- QA (level 2): "Please briefly answer the following question.\\nQuestion: {q}\\n"
- AA (level 3) as QA, except two probe types: "affirmative suffix" ends the question without a newline and gets no
  "Answer:" (the query ends in its own lead-in); "incontext learning" drops the "Question: " prefix (the query holds
  its demonstrations) and keeps "Answer:".

MUSE-Books (a base model without a chat template, as the RULE release formats it): qa rows
"Question: {q}\\nAnswer: " after one few-shot prefix, completion rows "Completion: {text}\\nAnswer: ".
"""

from __future__ import annotations

import re

from verl.utils.chat import format_prompt

# ------------------------------------------------------------------------------------------- RWKU probe wrapper
FB_TEMPLATE = "Please complete the blank in the following question.\nQuestion: {}\n"
QA_TEMPLATE = "Please briefly answer the following question.\nQuestion: {}\n"
AFFIRMATIVE_TEMPLATE = "Please briefly answer the following question.\nQuestion: {}"
ICL_TEMPLATE = "Please briefly answer the following question.\n{}\n"
ANSWER_SUFFIX = "Answer:"


def _norm_type(t: str | None) -> str:
    return re.sub(r"[\s_-]+", "", (t or "").lower())


def aa_style(probe_type: str | None) -> str:
    """How RWKU prompts an AA probe type: "affirmative", "icl" or "qa"."""
    t = _norm_type(probe_type)
    if t == "affirmativesuffix":
        return "affirmative"
    if t in ("incontextlearning", "icl"):
        return "icl"
    return "qa"


def build_user_text(probe: dict, level: str) -> tuple[str, bool]:
    """The user-turn text of a probe and whether "Answer:" is appended after the chat template."""
    q = probe["query"]
    if level == "FB":
        return FB_TEMPLATE.format(q), True
    if level == "QA":
        return QA_TEMPLATE.format(q), True
    if level != "AA":
        raise ValueError(f"unknown probe level {level!r} (FB, QA or AA)")
    style = aa_style(probe.get("type"))
    if style == "affirmative":
        return AFFIRMATIVE_TEMPLATE.format(q), False
    if style == "icl":
        return ICL_TEMPLATE.format(q), True
    return QA_TEMPLATE.format(q), True


def build_prompt(probe: dict, level: str, tokenizer) -> str:
    """Full RWKU prompt of one probe: user text in the chat template (+ "Answer:" where RWKU appends it)."""
    text, add_answer = build_user_text(probe, level)
    prompt = format_prompt(tokenizer, text)
    return prompt + ANSWER_SUFFIX if add_answer else prompt


def question_level(query: str) -> str:
    """The wrapper a bare question is asked in: FB for a "___" cloze, else QA."""
    return "FB" if "___" in query else "QA"


# ------------------------------------------------------------------------------------------- MUSE-Books (base model)
MUSE_QA = "Question: {text}\nAnswer: "
MUSE_COMPLETION = "Completion: {text}\nAnswer: "


def muse_icl_prefix(shots) -> str:
    """The few-shot prefix of MUSE's KnowMem format, "Question: {q}\nAnswer: {a}\n\n" per shot."""
    return "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)


def muse_prompt(text: str, mode: str = "qa", prefix: str = "") -> str:
    """A MUSE-Books prompt as the RULE release formats it: qa rows "Question: {q}\nAnswer: " after the (label-
    independent) ICL ``prefix``, completion rows "Completion: {text}\nAnswer: ". Rows already in this format (e.g.
    written by ``data.synthesize --muse_fewshot icl``) are returned unchanged."""
    body = text.removeprefix(prefix) if prefix else text
    if body.startswith(("Question: ", "Completion: ")) and body.rstrip().endswith("Answer:"):
        return text if text.endswith(" ") else text.rstrip() + " "
    if mode == "completion":
        return MUSE_COMPLETION.format(text=text)
    if mode != "qa":
        raise ValueError(f"MUSE row mode must be qa or completion, got {mode!r}")
    return prefix + MUSE_QA.format(text=text)
