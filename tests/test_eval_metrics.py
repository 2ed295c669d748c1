"""Evaluator metrics on hand-made inputs with hand-computed values."""

import math
import zlib

import pytest

from verl.eval import metrics as M


def test_rougel_recall_rwku_package_semantics():
    # RWKU/RULE scorer: the `rouge` package, case-sensitive, whitespace tokens
    assert M.rougel_recall("The author is Richard Bachman", "Richard Bachman", impl="rwku") == pytest.approx(1.0)
    assert M.rougel_recall("Richard Smith", "Richard Bachman", impl="rwku") == pytest.approx(0.5)  # LCS 1 of 2 words
    assert M.rougel_recall("richard bachman", "Richard Bachman", impl="rwku") == 0.0  # no lowercasing in RWKU's scorer
    assert M.rougel_recall("", "Maine", impl="rwku") == 0.0  # empty output is scored as "NOANSWER"
    assert M.rougel_recall("...", "Maine", impl="rwku") == 0.0  # would make the package raise


def test_rougel_rouge_score_impl():
    # rouge_score rougeL (MUSE): lowercased; LCS "the cat on the mat" = 5 of 6 tokens each side
    assert M.rougel_f1("the cat sat on the mat", "The cat lay on the mat") == pytest.approx(5 / 6)
    assert M.rougel_recall("a b", "a b c d", impl="rouge_score") == pytest.approx(0.5)
    # F1 from P = 2/2, R = 2/4
    assert M.rougel_f1("a b", "a b c d") == pytest.approx(2 * 1 * 0.5 / 1.5)
    with pytest.raises(ValueError):
        M.rougel_recall("a", "a", impl="nope")


def test_qa_f1_and_aliases():
    assert M.qa_f1("The Golden Snitch!", "golden snitch") == 1.0  # articles, case, punctuation normalised
    assert M.qa_f1("the golden ball", "Golden Snitch") == pytest.approx(0.5)  # P = R = 1/2
    assert M.qa_f1("", "x") == 0.0 and M.qa_f1("", "") == 1.0
    assert M.max_over_aliases(M.qa_f1, "Paris", ["London", "paris"]) == 1.0
    assert M.max_over_aliases(M.qa_f1, "Paris", []) == 0.0
    assert M.exact_match("(A)", "A") == 1.0


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams ab,ba,ab -> H2 = H(2/3, 1/3); trigrams aba,bab -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert M.ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    # "a b c d": 3 distinct bigrams, 2 distinct trigrams
    assert M.ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    assert M.ngram_entropy("") == 0.0


def test_mia_scores_hand_computed():
    lp = [-1.0, -2.0, -3.0, -4.0, -10.0]
    assert M.mia_loss(lp) == pytest.approx(4.0)
    assert M.mia_min_k(lp, 0.2) == pytest.approx(10.0)  # int(5 * 0.2) = 1 lowest token
    assert M.mia_min_k(lp, 0.4) == pytest.approx(7.0)  # mean of -10, -4
    assert M.mia_min_k_plus_plus(lp, [0.0] * 5, [4.0] * 5, 0.2) == pytest.approx(5.0)  # (-10 - 0) / 2
    text = "hello hello hello"
    assert M.mia_zlib(lp, text) == pytest.approx(4.0 / len(zlib.compress(text.encode())))
    assert M.mia_min_k([-1.0, -2.0], 0.2) == pytest.approx(2.0)  # at least one token


def test_auc_and_privleak():
    assert M.auc_roc([3, 2], [1, 2]) == pytest.approx(3.5 / 4)  # one tie counts 1/2
    assert M.auc_roc([1], [2]) == 0.0
    with pytest.raises(ValueError):
        M.auc_roc([], [1])
    # forget texts far more likely (lower Min-40% loss) than holdout -> MUSE AUC 0 -> PrivLeak -100%
    assert M.muse_auc(forget_scores=[1, 2], holdout_scores=[3, 4]) == 0.0
    assert M.privleak(0.0) == pytest.approx(-1.0)
    assert M.privleak(0.5393) == pytest.approx(0.0)
    assert M.privleak(0.6, 0.5) == pytest.approx(0.2)


def test_fluency_word_tokenize_splits_sentences_first():
    """RWKU's eval_fluency.py counts n-grams over nltk.word_tokenize: a period inside the text is its own token."""
    pytest.importorskip("nltk")
    text = "The sea is deep. The sea is blue."
    assert M._word_tokenize(text) == ["The", "sea", "is", "deep.", "The", "sea", "is", "blue", "."]
    assert M._word_tokenize(text, "word_tokenize") == ["The", "sea", "is", "deep", ".", "The", "sea", "is", "blue",
                                                       "."]
    # bigrams: 8 over the whole text with "deep." one word, 9 once "." stands alone (H2 = log2 of 7 vs 8 kinds)
    assert M.ngram_entropy(text) != M.ngram_entropy(text, word_tokenizer="word_tokenize")
    with pytest.raises(ValueError, match="word_tokenizer"):
        M.ngram_entropy(text, word_tokenizer="spaces")
