"""Core RL maths for ReBO: advantage estimators, PPO losses, KL estimators and controllers.

All functions are pure and work on right-padded response tensors of shape ``[B, T]`` (B sequences, T response
positions) together with a ``response_mask [B, T]`` (1 on real response tokens, 0 on padding). Outcome rewards
are placed on the last valid token of each response, so ``token_level_rewards.sum(-1)`` is the sequence score.

Three registries name the interchangeable pieces; each entry is added by a decorator on its function, and the
config (``algorithm.adv_estimator``, ``algorithm.kl_penalty``, ``worker.*.loss_agg_mode``) checks its value
against the registry's names, which ``--help`` lists:

- ``ADV_ESTIMATORS`` (``register_adv_estimator``): ``fn(token_level_rewards, response_mask, index=None,
  values=None, gamma=1.0, lam=1.0) -> (advantages, returns)``, all ``[B, T]``; the entry says which of ``index``
  (group uids) and ``values`` (a critic's, so the trainer runs one) it needs.
- ``KL_PENALTIES`` (``register_kl_penalty``): ``fn(d) -> kl``, the per-token estimate from the log-ratio
  ``d = log pi - log ref``, ``[B, T] -> [B, T]``.
- ``LOSS_AGG_MODES`` (``register_loss_agg_mode``): ``fn(loss_mat, mask) -> scalar``, used by the policy and value
  losses:

| mode                   | formula                                                                              |
|------------------------|--------------------------------------------------------------------------------------|
| ``token-mean``         | sum of the loss over all valid tokens of the batch / their count (default; long      |
|                        | responses weigh more)                                                                |
| ``seq-mean-token-sum`` | per sequence: sum over its valid tokens; then mean over sequences                    |
| ``seq-mean-token-mean``| per sequence: mean over its valid tokens; then mean over sequences                   |
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from verl.utils.registry import Registry

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


AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

# the optional inputs an estimator may need, and what each one is (for the error when a caller lacks it)
ADV_INPUTS = {"index": "the group uid of each row", "values": "the critic's values"}


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: its function and which optional inputs (``ADV_INPUTS``) it reads."""

    name: str
    fn: AdvantageFn
    needs: tuple[str, ...] = ()

    @property
    def uses_critic(self) -> bool:
        """It reads a critic's values, so the trainer trains a critic (PPO)."""
        return "values" in self.needs

    @property
    def uses_groups(self) -> bool:
        """It compares the responses to one prompt (a group of one then carries no signal)."""
        return "index" in self.needs


ADV_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def register_adv_estimator(name: str, needs: tuple[str, ...] = ()) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn`` under ``name``; it must take the uniform signature of the module docstring."""
    unknown = set(needs) - set(ADV_INPUTS)
    if unknown:
        raise ValueError(f"advantage estimator {name!r}: unknown needs {sorted(unknown)}; "
                         f"choose from {list(ADV_INPUTS)}")

    def add(fn: AdvantageFn) -> AdvantageFn:
        ADV_ESTIMATORS.add(name, AdvantageEstimator(name, fn, tuple(needs)))
        return fn

    return add


@register_adv_estimator("grpo", needs=("index",))
@torch.no_grad()
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: per-group normalised outcome score, broadcast over the response.

    token_level_rewards/response_mask: ``[B, T]``; index: ``[B]`` group uids (rows of one prompt share a uid).
    score_i = sum_t r_it; A_i = (score_i - mean_g) / (std_g + eps) with the unbiased std of the group
    (``torch.std``). A group of one row gets mean 0 and std 1 (its advantage is its raw score).
    Returns ``(advantages, returns)``, both ``[B, T]`` = A_i * mask (identical for GRPO). values/gamma/lam: unused.
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


@register_adv_estimator("rloo", needs=("index",))
@torch.no_grad()
def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: score minus the mean score of the *other* rows of the group (leave-one-out baseline).

    Shapes as for GRPO. A_i = s_i - (sum_g - s_i) / (n_g - 1) = n_g / (n_g - 1) * (s_i - mean_g).
    A group of one row has no baseline: A_i = s_i. values/gamma/lam: unused.
    """
    scores = token_level_rewards.sum(dim=-1).float()
    out = torch.empty_like(scores)
    for rows in _group_scores(index, scores).values():
        group = scores[rows]
        n = len(rows)
        out[rows] = group if n == 1 else group - (group.sum() - group) / (n - 1)
    adv = out.unsqueeze(-1) * response_mask
    return adv, adv


@register_adv_estimator("reinforce_plus_plus")
@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted return-to-go per token, whitened over all valid tokens of the batch.

    G_t = r_t + gamma * G_{t+1} (the running return restarts after padding). Shapes ``[B, T]``.
    Returns ``(whitened G * mask, G)``. index/values/lam: unused.
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


@register_adv_estimator("gae", needs=("values",))
@torch.no_grad()
def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation for PPO with a critic.

    rewards/values/mask: ``[B, T]``. delta_t = r_t + gamma * V_{t+1} - V_t (V after the last valid token = 0);
    A_t = delta_t + gamma * lam * A_{t+1}. Returns ``(whiten(A) * mask, (A + V) * mask)`` where the returns use
    the raw (un-whitened) advantages. index: unused.
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


def compute_advantage(
    name: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimator registered as ``name`` in ``ADV_ESTIMATORS``; returns ``(advantages, returns)`` ``[B, T]``.
    An input the estimator needs but the caller lacks is an error naming it."""
    estimator = ADV_ESTIMATORS.lookup(name)
    given = {"index": index, "values": values}
    for need in estimator.needs:
        if given[need] is None:
            raise ValueError(f"{name} needs `{need}` ({ADV_INPUTS[need]})")
    return estimator.fn(token_level_rewards, response_mask, index=index, values=values, gamma=gamma, lam=lam)


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

AggFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSS_AGG_MODES: Registry[AggFn] = Registry("loss_agg_mode")


def register_loss_agg_mode(name: str) -> Callable[[AggFn], AggFn]:
    """Decorator: register ``fn(loss_mat [B, T], mask [B, T] in the loss dtype) -> scalar`` under ``name``."""
    return LOSS_AGG_MODES.register(name)


@register_loss_agg_mode("token-mean")
def _agg_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(loss_mat, mask)


@register_loss_agg_mode("seq-mean-token-sum")
def _agg_seq_mean_token_sum(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (loss_mat * mask).sum(-1).mean()


@register_loss_agg_mode("seq-mean-token-mean")
def _agg_seq_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((loss_mat * mask).sum(-1) / (mask.sum(-1) + 1e-8)).mean()


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Reduce a ``[B, T]`` loss to a scalar with the ``LOSS_AGG_MODES`` entry ``mode`` (see the module table).
    Sequences with no valid token count as 0 in the ``seq-mean-*`` modes."""
    return LOSS_AGG_MODES.lookup(mode)(loss_mat, loss_mask.to(loss_mat.dtype))


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

KLFn = Callable[[torch.Tensor], torch.Tensor]
KL_PENALTIES: Registry[KLFn] = Registry("kl_penalty")


def register_kl_penalty(name: str) -> Callable[[KLFn], KLFn]:
    """Decorator: register ``fn(d [B, T] float32) -> [B, T]``, d = log pi - log ref, under ``name``."""
    return KL_PENALTIES.register(name)


@register_kl_penalty("kl")
def _kl_k1(d: torch.Tensor) -> torch.Tensor:
    """k1: d (unbiased, high variance, can be negative)."""
    return d


@register_kl_penalty("abs")
def _kl_abs(d: torch.Tensor) -> torch.Tensor:
    return d.abs()


@register_kl_penalty("mse")
def _kl_k2(d: torch.Tensor) -> torch.Tensor:
    """k2: d^2 / 2."""
    return 0.5 * d.square()


@register_kl_penalty("low_var_kl")
def _kl_k3(d: torch.Tensor) -> torch.Tensor:
    """k3: exp(-d) + d - 1 with -d clamped to [-20, 20] (no overflow) and the result to [-10, 10]."""
    neg = torch.clamp(-d, -20.0, 20.0)
    return torch.clamp(neg.exp() - neg - 1.0, -10.0, 10.0)


def compute_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate, ``[B, T]`` -> ``[B, T]``, by the ``KL_PENALTIES`` entry ``kl_penalty``
    (Schulman's estimators: ``kl`` k1, ``abs``, ``mse`` k2, ``low_var_kl`` k3)."""
    estimator = KL_PENALTIES.lookup(kl_penalty)
    return estimator(log_probs.float() - ref_log_probs.float())


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
