"""ROUGE-L for the rewards, via ``rouge_score`` (lower-cased, alphanumeric tokens).

The RULE release scored with the ``rouge`` PyPI package (``Rouge().get_scores(...)["rouge-l"]["r"]``), which does
no stemming; so stemming is off by default here too. ``rouge_score`` additionally lower-cases and drops
punctuation, so "Rob Reiner." matches "rob reiner" (the ``rouge`` package would count "Reiner." as a different
token): a deliberate, documented leniency. Empty strings score 0 instead of raising.
"""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer


@lru_cache(maxsize=4)
def _scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def _score(prediction: str, reference: str, use_stemmer: bool):
    return _scorer(bool(use_stemmer)).score(reference or "", prediction or "")["rougeL"]


def rougel_recall(prediction: str, reference: str, use_stemmer: bool = False) -> float:
    """LCS(prediction, reference) / len(reference tokens), in [0, 1]: how much of the reference is recovered."""
    return float(_score(prediction, reference, use_stemmer).recall)


def rougel_f1(prediction: str, reference: str, use_stemmer: bool = False) -> float:
    """Harmonic mean of ROUGE-L precision and recall, in [0, 1]."""
    return float(_score(prediction, reference, use_stemmer).fmeasure)


def rougel_recall_multi(prediction: str, references: list[str] | str, use_stemmer: bool = False) -> float:
    """Mean ROUGE-L recall over several references (the release averaged over ``solution[1:]``)."""
    if isinstance(references, str):
        references = [references]
    if not references:
        return 0.0
    return sum(rougel_recall(prediction, r, use_stemmer) for r in references) / len(references)
