"""Forget / neighbor FB and QA scores for the knowledge-injection sandbox, through the project's evaluator.

The injection stage trains on probes in the evaluation format and scores itself before and after; both go through
``verl.eval.rwku`` so that the sandbox's numbers are the evaluator's (RWKU prompts, greedy, 30 tokens, stop at
newline, the ``rouge`` package's ROUGE-L recall).
"""

from __future__ import annotations

from data.rwku import FORGET_FILES, PROBE_FILES, PROBE_LEVEL
from verl.eval.rwku import evaluate_probes
from verl.rule.prompts import build_prompt, question_level

# probe file -> suite name of the sandbox tables (forget_FB, forget_QA, neighbor_FB, neighbor_QA: no AA probes)
PROBE_SUITES = {stem: f"{stem.partition('_')[0]}_{PROBE_LEVEL[stem]}" for stem in PROBE_FILES
                if PROBE_LEVEL[stem] != "AA"}


def probe_stem(question: str) -> str:
    """The probe file whose wrapper a refusal question is asked in: FB for a "___" cloze, else QA."""
    return FORGET_FILES[0] if question_level(question) == "FB" else FORGET_FILES[1]


def probe_prompt(tokenizer, query: str, stem: str) -> str:
    """The evaluator's full prompt for a probe of file ``stem`` (chat-formatted instruction, then "Answer:")."""
    return build_prompt({"query": query}, PROBE_LEVEL[stem], tokenizer)


def score_probes(model, tokenizer, target, limit: int = 0, batch_size: int = 16) -> dict:
    """Mean ROUGE-L recall per suite (forget_FB, forget_QA, neighbor_FB, neighbor_QA) plus the generations."""
    scores, generations = {}, {}
    for group in ("forget", "neighbor"):  # one batched generation per group; levels are scored apart
        stems = [stem for stem in PROBE_SUITES if stem.startswith(group) and target.has(stem)]
        if not stems:
            continue
        metrics, gens = evaluate_probes(model, tokenizer, target, stems, limit=limit or None, batch_size=batch_size)
        for stem in stems:
            scores[PROBE_SUITES[stem]] = metrics[PROBE_LEVEL[stem]]
            generations[PROBE_SUITES[stem]] = gens[stem]
    return {"scores": scores, "generations": generations}
