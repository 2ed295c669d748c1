"""Core RL maths for ReBO: advantage estimators, PPO losses, KL estimators and controllers.

All functions are pure and work on right-padded response tensors of shape ``[B, T]`` (B sequences, T response
positions) together with a ``response_mask [B, T]`` (1 on real response tokens, 0 on padding). Outcome rewards
are placed on the last valid token of each response, so ``token_level_rewards.sum(-1)`` is the sequence score.

Loss aggregation (``agg_loss``), used by the policy and value losses:

| mode                  | formula                                                         |
|-----------------------|-----------------------------------------------------------------|
| ``token-mean``        | sum of the loss over all valid tokens of the batch / their count (default; long responses weigh more) |
| ``seq-mean-token-sum``| per sequence: sum over its valid tokens; then mean over sequences |
| ``seq-mean-token-mean``| per sequence: mean over its valid tokens; then mean over sequences |
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------- masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1. values/mask: same shape; ``dim=None`` reduces everything."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / (mask.sum() + eps)
    return (values * mask).sum(dim) / (mask.sum(dim) + eps)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (all dims); unbiased uses n/(n-1) like ``torch.var``."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n <= 1:
            raise ValueError("masked_var(unbiased=True) needs at least 2 valid entries")
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps) over the masked entries of the whole batch. Shapes: ``[B, T]`` -> ``[B, T]``.

    The variance is unbiased (like verl); masked-out positions are returned whitened too (callers mask them).
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


# ---------------------------------------------------------------------------------------------- advantages


def _group_scores(index: np.ndarray | list, scores: torch.Tensor) -> dict:
    """uid -> list of row positions (``index`` may be a numpy array, list or tensor of uids)."""
    if isinstance(index, torch.Tensor):
        index = index.tolist()  # tensor elements hash by identity, so use Python scalars as keys
    if len(index) != scores.shape[0]:
        raise ValueError(f"index has {len(index)} entries but the batch has {scores.shape[0]} rows")
    groups: dict = defaultdict(list)
    for i, uid in enumerate(index):
        groups[uid].append(i)
    return groups


@torch.no_grad()
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: per-group normalised outcome score, broadcast over the response.

    token_level_rewards/response_mask: ``[B, T]``; index: ``[B]`` group uids (rows of one prompt share a uid).
    score_i = sum_t r_it; A_i = (score_i - mean_g) / (std_g + eps) with the unbiased std of the group
    (``torch.std``). A group of one row gets mean 0 and std 1 (its advantage is its raw score).
    Returns ``(advantages, returns)``, both ``[B, T]`` = A_i * mask (identical for GRPO).
    """
    scores = token_level_rewards.sum(dim=-1).float()
    out = torch.empty_like(scores)
    for rows in _group_scores(index, scores).values():
        group = scores[rows]
        if len(rows) == 1:
            mean, std = torch.tensor(0.0), torch.tensor(1.0)
        else:
            mean, std = group.mean(), group.std()
        out[rows] = (group - mean) / (std + eps)
    adv = out.unsqueeze(-1) * response_mask
    return adv, adv


@torch.no_grad()
def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: np.ndarray, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: score minus the mean score of the *other* rows of the group (leave-one-out baseline).

    Shapes as for GRPO. A_i = s_i - (sum_g - s_i) / (n_g - 1) = n_g / (n_g - 1) * (s_i - mean_g).
    A group of one row has no baseline: A_i = s_i. ``eps`` is unused (kept for a uniform signature).
    """
    scores = token_level_rewards.sum(dim=-1).float()
    out = torch.empty_like(scores)
    for rows in _group_scores(index, scores).values():
        group = scores[rows]
        n = len(rows)
        out[rows] = group if n == 1 else group - (group.sum() - group) / (n - 1)
    adv = out.unsqueeze(-1) * response_mask
    return adv, adv


@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted return-to-go per token, whitened over all valid tokens of the batch.

    G_t = r_t + gamma * G_{t+1} (the running return restarts after padding). Shapes ``[B, T]``.
    Returns ``(whitened G * mask, G)``.
    """
    returns = torch.zeros_like(token_level_rewards, dtype=torch.float32)
    running = torch.zeros(token_level_rewards.shape[0], dtype=torch.float32, device=token_level_rewards.device)
    mask = response_mask.float()
    for t in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t].float() + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]  # nothing flows back across padding
    returns = returns * mask
    advantages = masked_whiten(returns, mask) * mask
    return advantages, returns


@torch.no_grad()
def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation for PPO with a critic.

    rewards/values/mask: ``[B, T]``. delta_t = r_t + gamma * V_{t+1} - V_t (V after the last valid token = 0);
    A_t = delta_t + gamma * lam * A_{t+1}. Returns ``(whiten(A) * mask, (A + V) * mask)`` where the returns use
    the raw (un-whitened) advantages.
    """
    rewards, values, mask = token_level_rewards.float(), values.float(), response_mask.float()
    bsz, horizon = rewards.shape
    next_value = torch.zeros(bsz, device=rewards.device)
    last_gae = torch.zeros(bsz, device=rewards.device)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(horizon)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * last_gae
        m = mask[:, t]
        # padding positions pass the running values through unchanged
        next_value = m * values[:, t] + (1 - m) * next_value
        last_gae = m * gae + (1 - m) * last_gae
        advantages[:, t] = gae * m
    returns = (advantages + values) * mask
    return masked_whiten(advantages, mask) * mask, returns


ADV_ESTIMATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "grpo": compute_grpo_outcome_advantage,
    "rloo": compute_rloo_outcome_advantage,
    "reinforce_plus_plus": compute_reinforce_plus_plus_outcome_advantage,
    "gae": compute_gae_advantage_return,
}


def compute_advantage(
    name: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to an estimator of ``ADV_ESTIMATORS`` by name; returns ``(advantages, returns)`` ``[B, T]``."""
    if name not in ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(ADV_ESTIMATORS)}")
    if name in ("grpo", "rloo"):
        if index is None:
            raise ValueError(f"{name} needs `index` (the group uid of each row)")
        return ADV_ESTIMATORS[name](token_level_rewards, response_mask, index)
    if name == "reinforce_plus_plus":
        return compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask, gamma=gamma)
    if values is None:
        raise ValueError("gae needs `values` from the critic")
    return compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma=gamma, lam=lam)


def group_signal_share(scores: np.ndarray | list | torch.Tensor, index: np.ndarray | list, tol: float = 1e-6) -> float:
    """Share of prompt groups whose reward varies (max - min > ``tol``): the groups that carry a learning signal.

    scores: ``[B]`` sequence scores; index: ``[B]`` group uids. A group whose n responses all got the same reward
    has zero GRPO/RLOO advantage and teaches nothing; a singleton group counts as no signal. Empty batch: 0.0.
    """
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64) if not isinstance(scores, torch.Tensor) else scores)
    groups = _group_scores(index, s)
    if not groups:
        return 0.0
    live = sum(1 for rows in groups.values() if len(rows) > 1 and float(s[rows].max() - s[rows].min()) > tol)
    return live / len(groups)


# ---------------------------------------------------------------------------------------------- losses

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Reduce a ``[B, T]`` loss to a scalar (see the module table). Sequences with no valid token count as 0
    in the ``seq-mean-*`` modes."""
    mask = loss_mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-sum":
        return (loss_mat * mask).sum(-1).mean()
    if mode == "seq-mean-token-mean":
        return ((loss_mat * mask).sum(-1) / (mask.sum(-1) + 1e-8)).mean()
    raise ValueError(f"unknown loss_agg_mode {mode!r}; choose one of {LOSS_AGG_MODES}")


def compute_policy_loss(
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.3,
    clip_ratio_dual: float = 3.0,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clipping and dual-clip. All inputs ``[B, T]``; returns a scalar loss.

    r = exp(log_probs - old_log_probs) (log-ratio clamped to [-20, 20]);
    L = max(-A * r, -A * clip(r, 1 - low, 1 + high)); for A < 0 additionally L = min(L, -A * dual)
    (dual-clip: a very unlikely-made-likely token cannot push the loss beyond ``dual`` times its advantage).

    Metrics (fractions of valid tokens): ``pg_clipfrac_higher`` (A > 0 and r > 1 + high: upper clip active),
    ``pg_clipfrac_lower`` (A < 0 and r < 1 - low: lower clip active), ``pg_clipfrac_dual`` (A < 0 and
    r > dual: dual clip active), ``ppo_kl`` (mean of old_log_probs - log_probs, the k1 KL(old || new)).
    """
    if clip_ratio_dual <= 1.0:
        raise ValueError(f"clip_ratio_dual must be > 1, got {clip_ratio_dual}")
    log_ratio = torch.clamp(log_probs - old_log_probs, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * clipped_ratio
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    loss_dual = torch.minimum(loss_ppo, -advantages * clip_ratio_dual)
    neg = advantages < 0
    loss_mat = torch.where(neg, loss_dual, loss_ppo)
    loss = agg_loss(loss_mat, response_mask, loss_agg_mode)

    with torch.no_grad():
        mask = response_mask.float()
        metrics = {
            "pg_clipfrac_higher": masked_mean(((advantages > 0) & (ratio > 1.0 + clip_ratio_high)).float(), mask),
            "pg_clipfrac_lower": masked_mean((neg & (ratio < 1.0 - clip_ratio_low)).float(), mask),
            "pg_clipfrac_dual": masked_mean((neg & (ratio > clip_ratio_dual)).float(), mask),
            "ppo_kl": masked_mean(-log_ratio, mask),
        }
    return loss, {k: float(v) for k, v in metrics.items()}


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float = 0.5,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: 0.5 * agg(max((v - R)^2, (clip(v, V_old +- c) - R)^2)). Inputs ``[B, T]``.

    Metrics: ``vf_clipfrac`` (fraction of valid tokens where the clipped term is larger), ``vpred_mean``.
    """
    vclipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    loss1 = (vpreds - returns) ** 2
    loss2 = (vclipped - returns) ** 2
    loss = 0.5 * agg_loss(torch.maximum(loss1, loss2), response_mask, loss_agg_mode)
    with torch.no_grad():
        mask = response_mask.float()
        metrics = {
            "vf_clipfrac": float(masked_mean((loss2 > loss1).float(), mask)),
            "vpred_mean": float(masked_mean(vpreds, mask)),
        }
    return loss, metrics


# ---------------------------------------------------------------------------------------------- KL

KL_PENALTIES = ("kl", "abs", "mse", "low_var_kl")


def compute_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate, ``[B, T]`` -> ``[B, T]`` (Schulman's estimators, d = log pi - log ref).

    ``kl`` (k1): d; ``abs``: |d|; ``mse`` (k2): d^2 / 2; ``low_var_kl`` (k3): exp(-d) + d - 1 with -d clamped to
    [-20, 20] and the result clamped to [-10, 10].
    """
    d = log_probs.float() - ref_log_probs.float()
    if kl_penalty == "kl":
        return d
    if kl_penalty == "abs":
        return d.abs()
    if kl_penalty == "mse":
        return 0.5 * d.square()
    if kl_penalty == "low_var_kl":
        neg = torch.clamp(-d, -20.0, 20.0)
        return torch.clamp(neg.exp() - neg - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown kl_penalty {kl_penalty!r}; choose one of {KL_PENALTIES}")


def apply_kl_penalty(
    token_level_scores: torch.Tensor,
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_penalty: str = "kl",
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL-in-reward: rewards = scores - kl_coef * KL_t * mask. Inputs ``[B, T]``.

    Metrics: ``kl`` = mean over sequences of each sequence's mean token KL (the value fed to a KL controller),
    ``kl_coef``.
    """
    kl = compute_kl(log_probs, ref_log_probs, kl_penalty) * response_mask
    rewards = token_level_scores - kl_coef * kl
    seq_kl = masked_mean(kl, response_mask, dim=-1)
    return rewards, {"kl": float(seq_kl.mean()), "kl_coef": float(kl_coef)}


class FixedKLController:
    """Constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al., 2019): value *= 1 + clip(kl / target - 1, +-0.2) * n_steps / horizon."""

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float):
        if target_kl <= 0 or horizon <= 0:
            raise ValueError(f"target_kl and horizon must be > 0, got {target_kl}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------- entropy


def compute_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dim: ``[B, T, V]`` -> ``[B, T]`` (H = logsumexp(z) - sum p z)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
