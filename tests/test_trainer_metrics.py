"""verl.trainer.metrics on hand-made batches (arithmetic in the comments)."""

import math

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from verl.trainer import metrics as M

A = pytest.approx
PAD = 0


def _batch() -> tuple[DataProto, np.ndarray, dict]:
    """Two prompts x two responses. Lengths 3, 1, 2, 3 of T=3 (rows 0 and 3 end at the limit: clipped)."""
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    responses = torch.tensor([[5, 6, 7], [5, PAD, PAD], [5, 6, PAD], [5, 6, 7]])
    adv = torch.tensor([[1.0, 1, 1], [-1, 9, 9], [0.5, 0.5, 9], [0, 0, 0]])  # 9 = padding, never counted
    batch = DataProto(
        batch={"responses": responses, "response_mask": mask, "advantages": adv, "returns": 2 * adv},
        non_tensor_batch={"label": np.array(["<reject>", "<reject>", "<normal>", "<normal>"], dtype=object),
                          "uid": np.array(["a", "a", "b", "b"], dtype=object)})
    scores = np.array([1.0, 0.0, 0.5, 0.5])
    sub = {"refusal": [1.0, 0.0, 0.0, 0.0], "rouge": [float("nan"), float("nan"), 0.2, 0.4]}
    return batch, scores, sub


def test_batch_metrics_by_hand():
    batch, scores, sub = _batch()
    prompt_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    m = M.batch_metrics(batch, prompt_mask, scores, sub, {"timing/gen": 2.0}, PAD)
    # scores [1, 0, .5, .5]: mean .5, population var (.25 + .25) / 4 = .125
    assert m["reward/mean"] == A(0.5) and m["reward/std"] == A(math.sqrt(0.125))
    assert m["response_length/mean"] == A(9 / 4) and m["response_length/clip_ratio"] == A(0.5)
    assert m["prompt_length/mean"] == A(3.5)
    # valid advantages: 1 1 1 -1 .5 .5 0 0 0 -> 3 / 9; returns twice that
    assert m["critic/advantages_mean"] == A(3 / 9) and m["critic/returns_mean"] == A(6 / 9)
    assert m["perf/rollout_tokens"] == 9.0 and m["perf/rollout_tokens_per_s"] == A(4.5)
    assert m["reward/reject_mean"] == A(0.5) and m["reward/normal_mean"] == A(0.5)
    assert m["reward/refusal_reject"] == A(0.5) and m["reward/refusal_normal"] == 0.0
    assert m["reward/refusal"] == A(0.25) and m["reward/rouge"] == A(0.3)  # NaN rows skipped
    assert m["reward/signal_share"] == A(0.5)  # group a differs, group b does not
    assert list(m)[:3] == ["reward/mean", "reward/std", "response_length/mean"]


def test_metrics_without_a_label_refusals_or_sub_score_values():
    labels = np.array(["<reject>", "<reject>"], dtype=object)
    m = M.label_metrics(np.array([1.0, 0.0]), {"rouge": [0.1, 0.3]}, labels)
    assert m == {"reward/reject_mean": A(0.5)}  # no <normal> row, no refusal sub-score
    assert math.isnan(M.sub_score_metrics({"rouge": [float("nan")] * 2})["reward/rouge"])
    assert M.label_mean(np.array([1.0]), labels[:1], "<normal>") is None


def test_length_metrics_of_empty_responses():
    m = M.length_metrics(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0), torch.ones(2, 3), PAD)
    assert m == {"response_length/mean": 0.0, "response_length/clip_ratio": 0.0, "prompt_length/mean": 3.0}


def test_ref_kl_only_with_both_log_probs():
    batch, _, _ = _batch()
    assert M.ref_kl_metrics(batch, "kl") == {}
    # k1 = old - ref = .1 on every valid token
    batch.batch["old_log_probs"] = torch.full((4, 3), -1.0)
    batch.batch["ref_log_probs"] = torch.full((4, 3), -1.1)
    assert M.ref_kl_metrics(batch, "kl")["actor/ref_kl"] == A(0.1, abs=1e-6)
