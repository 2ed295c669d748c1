"""Forget / neighbor FB and QA scores for the knowledge-injection sandbox, through the project's evaluator.

The injection stage trains on probes in the evaluation format and scores itself before and after; both go through
``verl.eval.rwku`` so that the sandbox's numbers are the evaluator's (RWKU prompts, greedy, 30 tokens, stop at
newline, the ``rouge`` package's ROUGE-L recall).
"""

from __future__ import annotations

from verl.eval.rwku import FILE_LEVEL, build_prompt, evaluate_probes

# probe file -> suite name of the sandbox tables
PROBE_SUITES = {
    "forget_level1": "forget_FB",
    "forget_level2": "forget_QA",
    "neighbor_level1": "neighbor_FB",
    "neighbor_level2": "neighbor_QA",
}


def probe_prompt(tokenizer, query: str, stem: str) -> str:
    """The evaluator's full prompt for a probe of file ``stem`` (chat-formatted instruction, then "Answer:")."""
    return build_prompt({"query": query}, FILE_LEVEL[stem], tokenizer)


def score_probes(model, tokenizer, target, limit: int = 0, batch_size: int = 16) -> dict:
    """Mean ROUGE-L recall per suite (forget_FB, forget_QA, neighbor_FB, neighbor_QA) plus the generations."""
    scores, generations = {}, {}
    for group in ("forget", "neighbor"):  # one batched generation per group; levels are scored apart
        stems = [stem for stem in PROBE_SUITES if stem.startswith(group) and target.has(stem)]
        if not stems:
            continue
        metrics, gens = evaluate_probes(model, tokenizer, target, stems, limit=limit or None, batch_size=batch_size)
        for stem in stems:
            scores[PROBE_SUITES[stem]] = metrics[FILE_LEVEL[stem]]
            generations[PROBE_SUITES[stem]] = gens[stem]
    return {"scores": scores, "generations": generations}
