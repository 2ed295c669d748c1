"""Scoring functions of the evaluator: ROUGE-L, TriviaQA F1 / exact match, n-gram entropy, MIA scores, AUC, PrivLeak.

ROUGE-L lives in ``verl.utils.rouge`` (re-exported here): RWKU's forget/neighbor scores are ``impl="rwku"`` recall
of the gold answer in the stripped output; MUSE's VerbMem / KnowMem are ``impl="rouge_score"`` F-measure.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import string
import zlib
from collections import Counter
from collections.abc import Sequence

from verl.utils.rouge import RWKU_EMPTY, rougel_f1, rougel_recall  # noqa: F401  (re-exported)

MUSE_AUC_RETRAIN = {"books": 0.5393, "news": 0.4772}  # MUSE constants: forget-vs-holdout Min-40% AUC of retrain


# ---------------------------------------------------------------- QA F1 / EM (SQuAD-style normalisation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (RWKU's TriviaQA / BBH normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between normalised prediction and reference (both empty -> 1, one empty -> 0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction).split() == normalize_answer(reference).split())


def max_over_aliases(metric, prediction: str, aliases: Sequence[str]) -> float:
    """Best score of ``metric(prediction, alias)`` over the gold aliases (0 when there are none)."""
    return max((metric(prediction, a) for a in aliases), default=0.0)


# ---------------------------------------------------------------- fluency: weighted n-gram entropy
WORD_TOKENIZERS = ("treebank", "word_tokenize")
logger = logging.getLogger("verl.eval")


def _treebank_tokenize(text: str) -> list[str]:
    """nltk's Treebank-style word tokenizer over the whole text (no punkt data needed), else a regex one."""
    try:
        from nltk.tokenize import NLTKWordTokenizer  # start-up cost: nltk (~0.3 s), only for the fluency metric

        return NLTKWordTokenizer().tokenize(text)
    except ImportError:
        return re.findall(r"\w+(?:'\w+)?|[^\w\s]", text)


@functools.lru_cache(maxsize=1)
def _sentence_splitter():
    """nltk's English punkt model (what ``nltk.word_tokenize`` loads); without its data (``python -m nltk.downloader
    punkt_tab``) an untrained Punkt splitter, which knows no abbreviations, with a warning."""
    from nltk.tokenize import PunktSentenceTokenizer, sent_tokenize  # start-up cost: nltk, only for fluency

    try:
        sent_tokenize("A. B.")
        return sent_tokenize
    except LookupError:
        logger.warning("fluency word_tokenize: nltk's punkt_tab data is not installed; sentences are split by an "
                       "untrained Punkt model instead (python -m nltk.downloader punkt_tab for RWKU's)")
        return PunktSentenceTokenizer().tokenize


def _word_tokenize(text: str, word_tokenizer: str = "treebank") -> list[str]:
    """``treebank``: the Treebank tokenizer over the whole text; ``word_tokenize``: ``nltk.word_tokenize`` as RWKU's
    eval_fluency.py calls it, sentences split first, so a period inside the text becomes its own token ("world." ->
    "world", ".") and the n-grams across it change."""
    if word_tokenizer == "treebank":
        return _treebank_tokenize(text)
    if word_tokenizer != "word_tokenize":
        raise ValueError(f"word_tokenizer={word_tokenizer!r}: choose one of {WORD_TOKENIZERS}")
    from nltk.tokenize import NLTKWordTokenizer  # start-up cost: nltk (~0.3 s), only for the fluency metric

    words = NLTKWordTokenizer()
    return [tok for sent in _sentence_splitter()(text) for tok in words.tokenize(sent)]


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3),
                  word_tokenizer: str = "treebank") -> float:
    """RWKU/ROME fluency of one text: arithmetic mean over n of ``weight_n * H_n`` where ``H_n`` is the entropy
    (bits) of the n-gram frequency distribution; with the defaults ``(2/3 * H2 + 4/3 * H3) / 2``. Words as
    ``_word_tokenize`` splits them (WORD_TOKENIZERS)."""
    tokens = _word_tokenize(text, word_tokenizer)
    terms = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        terms.append(w * h)
    return sum(terms) / len(terms)


# ---------------------------------------------------------------- membership inference
def _lowest(values: Sequence[float], k: float) -> list[float]:
    n = max(1, int(len(values) * k))  # RWKU uses int(len * k); at least one token so short texts stay defined
    return sorted(values)[:n]


def mia_loss(token_logprobs: Sequence[float]) -> float:
    """LOSS: mean negative log-likelihood per token (higher = less member-like)."""
    return -sum(token_logprobs) / len(token_logprobs)


def mia_zlib(token_logprobs: Sequence[float], text: str) -> float:
    """Zlib: LOSS divided by the zlib-compressed length of the text in bytes (RWKU: ll / len(zlib(text)))."""
    return mia_loss(token_logprobs) / len(zlib.compress(text.encode("utf-8")))


def mia_min_k(token_logprobs: Sequence[float], k: float = 0.2) -> float:
    """Min-K%: minus the mean of the lowest k fraction of token log-probs."""
    low = _lowest(token_logprobs, k)
    return -sum(low) / len(low)


def mia_min_k_plus_plus(
    token_logprobs: Sequence[float], mu: Sequence[float], var: Sequence[float], k: float = 0.2
) -> float:
    """Min-K%++: minus the mean of the lowest k fraction of ``(log p(x_t) - mu_t) / sigma_t`` where mu_t and
    var_t are the mean and variance of log p over the vocabulary under the model's own next-token distribution."""
    z = [(lp - m) / math.sqrt(max(v, 1e-12)) for lp, m, v in zip(token_logprobs, mu, var)]
    low = _lowest(z, k)
    return -sum(low) / len(low)


def auc_roc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Area under the ROC curve for "score of a positive > score of a negative" (Mann-Whitney, ties count 1/2);
    equals sklearn's ``roc_auc_score`` with labels 1 for ``pos`` and 0 for ``neg``."""
    if not pos or not neg:
        raise ValueError("auc_roc needs at least one positive and one negative score")
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def muse_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE's PrivLeak AUC from Min-40% scores (``-mean`` of the lowest 40% log-probs): MUSE labels holdout 1,
    forget 0 and ranks by ``-score``, i.e. the AUC that a holdout text looks *more* likely than a forget text."""
    return auc_roc([-s for s in holdout_scores], [-s for s in forget_scores])


def privleak(auc: float, auc_retrain: float = MUSE_AUC_RETRAIN["books"]) -> float:
    """MUSE PrivLeak as a fraction: ``(AUC_unlearn - AUC_retrain) / AUC_retrain`` (MUSE prints it x100;
    near 0 is good, large negative = forget data still looks memorised)."""
    return (auc - auc_retrain) / auc_retrain


def mean(values: Sequence[float]) -> float:
    """Mean that is NaN for an empty list (an absent probe file), never a ZeroDivisionError."""
    return sum(values) / len(values) if values else float("nan")
