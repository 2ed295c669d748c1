"""ROUGE-L, the one implementation shared by the rewards, the evaluator and the sandbox.

Two scorers, because the benchmarks' official code differ and the numbers must match theirs:
- ``impl="rouge_score"`` (default; MUSE, and the ReBO rewards): Google's ``rouge_score`` ``rougeL``, no stemming,
  lower-cased alphanumeric tokens, so "Rob Reiner." matches "rob reiner". The RULE release scored its rewards
  with the ``rouge`` package; the lenient tokenisation is this project's deliberate choice for the reward.
- ``impl="rwku"`` (RWKU and RULE evaluation): the ``rouge`` package (pltrdy, 1.0.1), case-sensitive, whitespace
  tokens, sentences split at ".", summary-level union-LCS over unique words. RWKU scores an empty output as the
  string "NOANSWER".
- ``impl="release"`` (the RULE release's rewards, paper mode): the same ``rouge`` package called as the release's
  reward code calls it: no "NOANSWER" substitution, and any error of the package (empty text, only periods) scores
  0; several references are averaged by the package (``avg=True``), so one failing reference zeroes the mean.
Text that a scorer cannot score (empty, or only periods for ``rwku``) scores 0 instead of raising.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from rouge import Rouge

RWKU_EMPTY = "NOANSWER"  # RWKU scores an empty output as this string
IMPLS = ("rouge_score", "rwku", "release")


class RougeL(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


@lru_cache(maxsize=1)
def _google_scorer():
    from rouge_score import rouge_scorer  # start-up cost: it imports nltk (~0.5 s), which only this scorer needs

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rwku(prediction: str, reference: str) -> RougeL:
    pred = prediction.strip() or RWKU_EMPTY
    # the package raises on text that is empty after its "." sentence split (e.g. "...")
    if not [s for s in pred.split(".") if s.strip()] or not [s for s in reference.split(".") if s.strip()]:
        return RougeL(0.0, 0.0, 0.0)
    s = Rouge(metrics=["rouge-l"]).get_scores(hyps=[pred], refs=[reference])[0]["rouge-l"]
    f = 1.0 if s["f"] > 0.9999999 else s["f"]  # the package adds 1e-8 to the denominator
    return RougeL(float(s["p"]), float(s["r"]), float(f))


def _release(prediction: str, references: list[str]) -> RougeL:
    try:
        s = Rouge(metrics=["rouge-l"]).get_scores([prediction] * len(references), references, avg=True)["rouge-l"]
    except Exception:  # the release's reward scores every error of the package as 0
        return RougeL(0.0, 0.0, 0.0)
    return RougeL(float(s["p"]), float(s["r"]), float(s["f"]))


def rouge_l(prediction: str, reference: str, impl: str = "rouge_score") -> RougeL:
    """ROUGE-L of ``prediction`` (model output) against ``reference`` (gold text)."""
    if impl == "release":
        return _release(prediction or "", [reference or ""])
    if impl == "rwku":
        return _rwku(prediction or "", reference or "")
    if impl == "rouge_score":
        s = _google_scorer().score(reference or "", prediction or "")["rougeL"]
        return RougeL(float(s.precision), float(s.recall), float(s.fmeasure))
    raise ValueError(f"unknown ROUGE implementation {impl!r} (use one of {IMPLS})")


def rougel_recall(prediction: str, reference: str, impl: str = "rouge_score") -> float:
    """LCS / reference length, in [0, 1]: how much of the reference the prediction recovers."""
    return rouge_l(prediction, reference, impl).recall


def rougel_f1(prediction: str, reference: str, impl: str = "rouge_score") -> float:
    """Harmonic mean of ROUGE-L precision and recall, in [0, 1]."""
    return rouge_l(prediction, reference, impl).fmeasure


def rougel_recall_multi(prediction: str, references: list[str] | str, impl: str = "rouge_score") -> float:
    """Mean ROUGE-L recall over several references (the release averaged over ``solution[1:]``)."""
    if isinstance(references, str):
        references = [references]
    if not references:
        return 0.0
    if impl == "release":
        return _release(prediction or "", [r or "" for r in references]).recall
    return sum(rougel_recall(prediction, r, impl) for r in references) / len(references)
