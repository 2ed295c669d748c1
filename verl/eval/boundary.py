"""The boundary suite (``--suites boundary``): does the model still answer near-boundary questions?

RULE teaches a model to refuse what is about the target; a boundary is drawn only if it keeps answering what merely
looks like it: the same kind of question about another, similar entity. The suite asks the ``<normal>`` rows of the
target's held-out ReBO groups (``data.boundary``: a fixed, hashed share that ReBO never samples), in the forget and
neighbor probes' form: the RWKU probe wrapper (FB for a "___" row, else QA), greedy, 30 new tokens, the same BOS and
stop ids. Metrics (fractions; the report shows x100):

- ``Answer``: mean ROUGE-L recall of the gold answer in the whole output (as the probes are scored);
- ``Refused``: share of outputs refused by the strict detector on the first sentence of the first line (as the
  report's Forget Refused).

On the paper protocol it audits over-refusal on near-boundary questions; in the sandbox, stage 0 injects these facts
(``RS.inject_data.boundary_records``), so the injected Original answers them. A target without a ReBO file has an
empty suite: its metrics say why and carry no ``Answer``/``Refused``.
"""

from __future__ import annotations

from data.boundary import BOUNDARY_SHARE, boundary_split
from verl.eval import metrics as M
from verl.eval.endings import end_fields
from verl.eval.generation import generate
from verl.eval.rwku import PROBE_BOS, PROBE_MAX_NEW_TOKENS, _limit, _target, stop_ids
from verl.rule.prompts import build_prompt, question_level
from verl.rule.refusal import is_refusal
from verl.utils.text import first_line


def score_boundary(rows: list[dict], outputs: list[str], ends: list[dict] | None = None,
                   tokenizer=None) -> tuple[dict, list[dict]]:
    """Metrics and per-row generations of the suite ``rows`` ({query, answer, row, group}) and their raw outputs;
    ``ends`` (``generate``'s ``info``) adds the end fields of ``verl.eval.endings``."""
    gens = []
    for k, (row, out) in enumerate(zip(rows, outputs)):
        first = first_line(out)
        end = ends[k] if ends and k < len(ends) else None
        gens.append({"query": row["query"], "answer": row["answer"], "output": out.strip(),
                     "score": M.rougel_recall(out, row["answer"], impl="rwku"), "output_corrected": first,
                     "score_corrected": M.rougel_recall(first, row["answer"], impl="rwku"),
                     "refused": is_refusal(first, "strict"), "level": question_level(row["query"]),
                     "row": row.get("row"), "group": row.get("group"),
                     **(end_fields(tokenizer, out, end) if tokenizer is not None else {})})
    n = len(gens)
    metrics = {"n": n, "n_refused": sum(g["refused"] for g in gens)}
    if n:
        metrics.update(Answer=M.mean([g["score"] for g in gens]), Refused=metrics["n_refused"] / n,
                       corrected={"Answer": M.mean([g["score_corrected"] for g in gens])})
    return metrics, gens


def evaluate_boundary(model, tokenizer, target, limit: int | None = None, batch_size: int = 16, gen_model=None,
                      data_dir=None, probe_bos: str = "rwku", stop: str = "all",
                      share: float = BOUNDARY_SHARE) -> tuple[dict, list[dict]]:
    """Generate and score the target's boundary suite (module doc). Returns (metrics, generations); metrics carry
    the split's record (``split``: share, held-out groups, suite rows, SHA-256) and, for an empty suite, ``skipped``."""
    if probe_bos not in PROBE_BOS:
        raise ValueError(f"probe_bos={probe_bos!r}: choose one of {PROBE_BOS}")
    split = boundary_split(_target(target, data_dir), share)
    rows = _limit(split.suite, limit)
    protocol = {"prompt": "RWKU probe wrapper (FB for '___' rows, else QA)", "scoring": "ROUGE-L recall, whole output",
                "refusal": "strict detector, first sentence of the first line"}
    if not rows:
        return {"n": 0, "skipped": split.reason, "split": split.record(), "protocol": protocol}, []
    prompts = [build_prompt({"query": r["query"]}, question_level(r["query"]), tokenizer) for r in rows]
    eos = stop_ids(tokenizer, stop)
    ends: list[dict] = []
    outputs = generate(gen_model or model, tokenizer, prompts, PROBE_MAX_NEW_TOKENS, stop_strings=(),
                       batch_size=batch_size, desc="boundary", add_special_tokens=True if probe_bos == "rwku" else None,
                       info=ends, **({} if eos is None else {"eos_ids": eos}))
    metrics, gens = score_boundary(rows, outputs, ends, tokenizer)
    metrics.update(split=split.record(), protocol=protocol)
    return metrics, gens


__all__ = ["evaluate_boundary", "score_boundary"]
