"""MUSE-Books evaluation (Shi et al., 2024), following the benchmark's own evaluation code.

Prompts are raw text (no chat template): the MUSE target is a base model, and the metrics are defined that way.
- VerbMem: greedy 128 new tokens from each ``prompt``; ROUGE-L F1 (``rouge_score``, no stemmer) against the
  first 128 tokens of ``gt``. ``verbmem_prompt="muse"``: the raw prompt, no stop (MUSE's code); "release": the RULE
  release's evaluator wraps it as "Completion: {prompt}\nAnswer: " (its MUSE training format) and stops at a newline.
- KnowMem forget / retain: few-shot prefix of the ``_icl`` file as "Question: {q}\\nAnswer: {a}\\n\\n", then
  "Question: {q}\\nAnswer: "; greedy 32 new tokens; output cut at "\\n\\n", "\\nQuestion", "Question:"; ROUGE-L F1.
- PrivLeak: Min-40% score of each privleak text (forget, holdout); AUC as MUSE computes it
  (metrics.muse_auc); PrivLeak = (AUC - AUC_retrain) / AUC_retrain with AUC_retrain = 0.5393 (Books).
All scores are fractions (MUSE prints x100). The MUSE target model is not needed: whatever model is given is scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from data.muse import load_muse
from verl.eval import metrics as M
from verl.eval.generation import generate, sequence_logprobs
from verl.eval.rwku import _limit  # one rule for every suite: a limit must be positive
from verl.rule.prompts import MUSE_COMPLETION, MUSE_QA, muse_icl_prefix

logger = logging.getLogger("verl.eval")

VERBMEM_TOKENS = 128
KNOWMEM_TOKENS = 32
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")
PRIVLEAK_K = 0.4
MUSE_SUITES = ("verbmem", "knowmem", "privleak")
VERBMEM_PROMPTS = ("muse", "release")


def knowmem_prompt(question: str, icl: Sequence[dict]) -> str:
    return muse_icl_prefix(icl) + MUSE_QA.format(text=question)


def verbmem_request(prompt: str, form: str = "muse") -> tuple[str, tuple[str, ...]]:
    """(text to complete, stop strings) of one VerbMem probe in form ``form`` (VERBMEM_PROMPTS, module doc)."""
    if form == "muse":
        return prompt, ()
    if form == "release":
        return MUSE_COMPLETION.format(text=prompt), ("\n",)
    raise ValueError(f"verbmem_prompt={form!r}: choose one of {VERBMEM_PROMPTS}")


def evaluate_verbmem(model, tokenizer, records, batch_size=8, gen_model=None,
                     prompt_form: str = "muse") -> tuple[float, list[dict]]:
    if not records:
        return float("nan"), []
    requests = [verbmem_request(r["prompt"], prompt_form) for r in records]
    outs = generate(gen_model or model, tokenizer, [text for text, _ in requests], VERBMEM_TOKENS,
                    stop_strings=requests[0][1], batch_size=batch_size, desc="verbmem")
    items = []
    for r, o in zip(records, outs):
        gt_ids = tokenizer(r["gt"], add_special_tokens=True)["input_ids"][:VERBMEM_TOKENS]
        gt = tokenizer.decode(gt_ids, skip_special_tokens=True)
        items.append({"query": r["prompt"][-200:], "answer": gt, "output": o, "score": M.rougel_f1(o, gt)})
    return M.mean([it["score"] for it in items]), items


def evaluate_knowmem(model, tokenizer, qa, icl, batch_size=8, gen_model=None) -> tuple[float, list[dict]]:
    if not qa:
        return float("nan"), []
    prompts = [knowmem_prompt(d["question"], icl) for d in qa]
    outs = generate(gen_model or model, tokenizer, prompts, KNOWMEM_TOKENS, stop_strings=KNOWMEM_STOPS,
                    batch_size=batch_size, desc="knowmem")
    items = [{"query": d["question"], "answer": d["answer"], "output": o, "score": M.rougel_f1(o, d["answer"])}
             for d, o in zip(qa, outs)]
    return M.mean([it["score"] for it in items]), items


def min_k_scores(model, tokenizer, texts: Sequence[str], k: float = PRIVLEAK_K, batch_size=2, desc=None) -> list[float]:
    lps = sequence_logprobs(model, tokenizer, list(texts), batch_size=batch_size, desc=desc)
    return [M.mia_min_k(lp.tolist(), k) for lp in lps if len(lp)]


def evaluate_privleak(model, tokenizer, forget: Sequence[str], holdout: Sequence[str], batch_size=2,
                      auc_retrain: float = M.MUSE_AUC_RETRAIN["books"]) -> tuple[dict, dict]:
    f = min_k_scores(model, tokenizer, forget, batch_size=batch_size, desc="privleak forget")
    h = min_k_scores(model, tokenizer, holdout, batch_size=batch_size, desc="privleak holdout")
    auc = M.muse_auc(f, h)
    return {"PrivLeak": M.privleak(auc, auc_retrain), "auc": auc}, {"forget_min40": f, "holdout_min40": h}


def evaluate_muse(model, tokenizer, suites: Sequence[str] = MUSE_SUITES, limit: int | None = None, batch_size=8,
                  gen_model=None, data_dir=None, corpus: str = "books",
                  verbmem_prompt: str = "muse") -> tuple[dict, dict, dict]:
    """Run the MUSE suites; returns ``(metrics, generations, timing)`` with metrics keyed as in the shared
    result format: VerbMem, KnowMem_forget, KnowMem_retain, PrivLeak, auc. ``verbmem_prompt``: VERBMEM_PROMPTS."""
    if corpus != "books":  # only MUSE-Books data exist here; another label would score Books under its name
        raise ValueError(f"MUSE corpus {corpus!r}: only 'books' is supported (the data are MUSE-Books)")
    metrics, gens, timing = {}, {}, {}
    if "verbmem" in suites:
        t0 = time.time()
        metrics["VerbMem"], gens["verbmem/forget"] = evaluate_verbmem(
            model, tokenizer, _limit(load_muse("verbmem/forget", data_dir), limit), batch_size, gen_model,
            verbmem_prompt)
        timing["verbmem"] = round(time.time() - t0, 2)
        logger.info("muse verbmem: %s in %.1fs", metrics["VerbMem"], timing["verbmem"])
    if "knowmem" in suites:
        t0 = time.time()
        for split, key in (("forget", "KnowMem_forget"), ("retain", "KnowMem_retain")):
            qa = _limit(load_muse(f"knowmem/{split}_qa", data_dir), limit)
            icl = load_muse(f"knowmem/{split}_qa_icl", data_dir)
            metrics[key], gens[f"knowmem/{split}_qa"] = evaluate_knowmem(model, tokenizer, qa, icl, batch_size,
                                                                         gen_model)
        timing["knowmem"] = round(time.time() - t0, 2)
        logger.info("muse knowmem: forget %s, retain %s in %.1fs", metrics["KnowMem_forget"],
                    metrics["KnowMem_retain"], timing["knowmem"])
    if "privleak" in suites:
        t0 = time.time()
        res, scores = evaluate_privleak(
            model, tokenizer, _limit(load_muse("privleak/forget", data_dir), limit),
            _limit(load_muse("privleak/holdout", data_dir), limit), batch_size=max(1, batch_size // 4),
            auc_retrain=M.MUSE_AUC_RETRAIN.get(corpus, M.MUSE_AUC_RETRAIN["books"]))
        metrics.update(res)
        gens["privleak"] = [{"query": "", "answer": "", "output": "", "score": s, "split": split}
                            for split in ("forget", "holdout") for s in scores[f"{split}_min40"]]
        timing["privleak"] = round(time.time() - t0, 2)
        logger.info("muse privleak: %s in %.1fs", res, timing["privleak"])
    return metrics, gens, timing
