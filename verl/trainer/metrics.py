"""Statistics of one training batch as metric dicts (pure functions; the trainer logs what they return).

Inputs are the step's tensors and arrays: ``responses``/``response_mask`` ``[B, T]`` (B = prompts x n responses),
``scores`` ``[B]`` sequence rewards, ``sub`` the reward's sub-scores (name -> ``[B]`` list, NaN where a row has
none), ``labels`` ``[B]`` (``<reject>`` / ``<normal>``), ``index`` ``[B]`` group uids, and ``timings`` the step's
``timing/<phase>`` seconds.
"""

from __future__ import annotations

import numpy as np
import torch

from verl import core_algos
from verl.protocol import DataProto

# label -> the name its metrics carry
LABEL_NAMES = (("<reject>", "reject"), ("<normal>", "normal"))


def label_mean(values: np.ndarray, labels: np.ndarray, label: str) -> float | None:
    """Mean of ``values`` over the rows labelled ``label``; None when there are none."""
    sel = labels == label
    return float(values[sel].mean()) if sel.any() else None


def reward_summary(scores: np.ndarray) -> dict[str, float]:
    """``reward/mean`` and ``reward/std`` (population std) of the sequence scores."""
    return {"reward/mean": float(scores.mean()), "reward/std": float(scores.std())}


def length_metrics(responses: torch.Tensor, response_mask: torch.Tensor, prompt_mask: torch.Tensor,
                   pad_token_id: int) -> dict[str, float]:
    """Mean response length, the share of responses cut by the length limit (last position not padding) and the
    mean prompt length. ``prompt_mask``: ``[P, L]`` attention mask of the step's prompts."""
    clipped = (responses[:, -1] != pad_token_id).float().mean() if response_mask.shape[1] else 0.0
    return {
        "response_length/mean": float(response_mask.float().sum(-1).mean()),
        "response_length/clip_ratio": float(clipped),
        "prompt_length/mean": float(prompt_mask.sum(-1).float().mean()),
    }


def advantage_metrics(advantages: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """Means of the advantages and returns over the valid response tokens."""
    mask = response_mask.float()
    return {"critic/advantages_mean": float(core_algos.masked_mean(advantages, mask)),
            "critic/returns_mean": float(core_algos.masked_mean(returns, mask))}


def throughput_metrics(response_mask: torch.Tensor, timings: dict[str, float]) -> dict[str, float]:
    """Generated tokens and tokens per second of the ``gen`` phase."""
    n_tokens = float(response_mask.float().sum())
    return {"perf/rollout_tokens": n_tokens, "perf/rollout_tokens_per_s": n_tokens / max(timings["timing/gen"], 1e-9)}


def label_metrics(scores: np.ndarray, sub: dict[str, list[float]], labels: np.ndarray) -> dict[str, float]:
    """Mean reward (``reward/<name>_mean``) and, when the reward reports refusals, the refusal share
    (``reward/refusal_<name>``) per label: ``<normal>`` refusals rising with ``<reject>`` ones is a policy that
    refuses everything instead of learning a boundary. A label absent from the batch has no keys."""
    refused = np.asarray(sub["refusal"], dtype=float) if "refusal" in sub else None
    out: dict[str, float] = {}
    for label, name in LABEL_NAMES:
        v = label_mean(scores, labels, label)
        if v is not None:
            out[f"reward/{name}_mean"] = v
        r = label_mean(refused, labels, label) if refused is not None else None
        if r is not None:
            out[f"reward/refusal_{name}"] = r
    return out


def sub_score_metrics(sub: dict[str, list[float]]) -> dict[str, float]:
    """``reward/<sub-score>``: the mean over the rows that have it (NaN when none has)."""
    return {f"reward/{k}": float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")
            for k, vals in sub.items()}


def signal_metrics(scores: np.ndarray, index: np.ndarray) -> dict[str, float]:
    """``reward/signal_share``: the share of prompt groups whose rewards differ; groups whose n rewards are equal
    get zero advantage, so a share near 0 means no learning signal."""
    return {"reward/signal_share": core_algos.group_signal_share(scores, index)}


def ref_kl_metrics(batch: DataProto, kl_penalty: str) -> dict[str, float]:
    """``actor/ref_kl``: the mean KL estimate of the rollout policy to the reference over the valid tokens, when the
    step computed both log-probs."""
    b = batch.batch
    if "ref_log_probs" not in b or "old_log_probs" not in b:
        return {}
    kl = core_algos.compute_kl(b["old_log_probs"], b["ref_log_probs"], kl_penalty)
    return {"actor/ref_kl": float(core_algos.masked_mean(kl, b["response_mask"].float()))}


def batch_metrics(batch: DataProto, prompt_mask: torch.Tensor, scores: np.ndarray, sub: dict[str, list[float]],
                  timings: dict[str, float], pad_token_id: int) -> dict[str, float]:
    """Every statistic of a step's batch but the KL to the reference: rewards, lengths, advantages, throughput,
    per-label rewards and refusals, sub-scores, signal share. ``batch`` holds ``responses``, ``response_mask``,
    ``advantages``, ``returns`` and the non-tensor ``label`` and ``uid``."""
    b, nt = batch.batch, batch.non_tensor_batch
    mask = b["response_mask"]
    return {
        **reward_summary(scores),
        **length_metrics(b["responses"], mask, prompt_mask, pad_token_id),
        **advantage_metrics(b["advantages"], b["returns"], mask),
        **throughput_metrics(mask, timings),
        **label_metrics(scores, sub, nt["label"]),
        **sub_score_metrics(sub),
        **signal_metrics(scores, nt["uid"]),
    }
