"""A minimal greedy RWKU probe scorer (ROUGE-L recall) for the knowledge-injection sandbox.

Uses the RWKU prompt format (section 7 of DESIGN.md) so that injected knowledge matches the evaluation format:
the FB/QA instruction in the chat template's user turn, then "Answer:" appended after the assistant header.
``verl.eval.rwku`` is the project's real evaluator; this module is a stand-in it can replace.
"""

from __future__ import annotations

import torch
from rouge_score import rouge_scorer

from verl.utils.chat import format_prompt

FB_TEMPLATE = "Please complete the blank in the following question.\nQuestion: {q}\n"
QA_TEMPLATE = "Please briefly answer the following question.\nQuestion: {q}\n"
ANSWER_PREFIX = "Answer:"
# probe file -> (suite, template)
PROBE_SUITES = {
    "forget_level1": ("forget_FB", FB_TEMPLATE),
    "forget_level2": ("forget_QA", QA_TEMPLATE),
    "neighbor_level1": ("neighbor_FB", FB_TEMPLATE),
    "neighbor_level2": ("neighbor_QA", QA_TEMPLATE),
}
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def probe_prompt(tokenizer, query: str, template: str) -> str:
    """The full generation prompt: chat-formatted instruction + "Answer:"."""
    return format_prompt(tokenizer, template.format(q=query)) + ANSWER_PREFIX


def rouge_l_recall(output: str, answer: str) -> float:
    return _SCORER.score(answer, output)["rougeL"].recall


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 30, batch_size: int = 16) -> list[str]:
    """Greedy continuations (left padding), cut at the first newline (stopping there when the project's generation
    helper ``verl.eval.generation.generate`` is available)."""
    try:
        from verl.eval.generation import generate
    except ImportError:
        generate = None
    if generate is not None:
        return [o.strip() for o in generate(model, tokenizer, prompts, max_new_tokens, stop_strings=("\n",),
                                            batch_size=batch_size)]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        for row in gen[:, enc["input_ids"].shape[1] :]:
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            outs.append(text.split("\n")[0].strip())
    if was_training:
        model.train()
    return outs


def score_probes(model, tokenizer, target, max_new_tokens: int = 30, limit: int = 0) -> dict:
    """Mean ROUGE-L recall per suite (forget_FB, forget_QA, neighbor_FB, neighbor_QA) plus the generations."""
    scores, generations = {}, {}
    for stem, (suite, template) in PROBE_SUITES.items():
        if not target.has(stem):
            continue
        probes = target.load(stem)[: limit or None]
        outputs = greedy_generate(model, tokenizer, [probe_prompt(tokenizer, p["query"], template) for p in probes],
                                  max_new_tokens)
        vals = [rouge_l_recall(o, p["answer"]) for o, p in zip(outputs, probes)]
        scores[suite] = sum(vals) / max(1, len(vals))
        generations[suite] = [
            {"query": p["query"], "answer": p["answer"], "output": o, "score": v} for p, o, v in zip(probes, outputs, vals)
        ]
    return {"scores": scores, "generations": generations}
