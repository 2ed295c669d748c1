"""Unlearning / SFT losses as pure functions.

Shapes: ``logits`` (B, T, V) from a causal LM on ``input_ids`` (B, T); ``labels`` (B, T) with IGNORE_INDEX (-100)
on tokens that carry no loss (prompt, padding). Labels are *not* shifted by the caller: position t's logits
predict label t+1, as in Hugging Face models. Sequence log-probabilities are sums over the labelled tokens.
All losses return a scalar tensor (mean over the batch unless said otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,T,V),(B,T) -> logits (B,T-1,V), labels (B,T-1) with ignored tokens set to 0, mask (B,T-1) float."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels.ne(IGNORE_INDEX)
    return logits, labels.masked_fill(~mask, 0), mask.to(logits.dtype)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) (B, T-1) (0 where masked) and the mask (B, T-1)."""
    lg, lb, mask = _shift(logits, labels)
    logp = torch.log_softmax(lg.float(), dim=-1).gather(-1, lb.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(y|x) over labelled tokens (B,) and the number of labelled tokens (B,)."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def labelled_tokens(labels: torch.Tensor) -> int:
    """How many tokens of ``labels`` (B, T) carry a loss: the labels that some position predicts (t >= 1)."""
    return int(labels[:, 1:].ne(IGNORE_INDEX).sum())


def nll_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of the labelled tokens (SFT, GDR's retain term). ``reduction`` "mean": over the
    batch's labelled tokens; "sum": their sum, for a caller that divides by the labelled tokens of a larger batch
    (RS.train's global token mean over processes and accumulation micro-steps)."""
    logp, mask = token_logprobs(logits, labels)
    if reduction == "sum":
        return -logp.sum()
    if reduction != "mean":
        raise ValueError(f"nll_loss reduction must be mean or sum, got {reduction!r}")
    return -(logp.sum() / mask.sum().clamp(min=1))


def ga_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Gradient ascent: minus the NLL on forget data (minimising it raises the forget loss)."""
    return -nll_loss(logits, labels, reduction)


KL_REDUCTIONS = ("labelled_mean", "release")


def kl_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
            reduction: str = "labelled_mean") -> torch.Tensor:
    """KLR's retain term: KL(p_ref || p_theta) of the full next-token distributions, summed over the vocabulary.
    ``ref_logits`` (B, T, V) come from the frozen original model on the same inputs.

    ``reduction`` "labelled_mean": averaged over the positions that predict a labelled token (padding and prompt
    carry no weight). "release": the RULE release's ``kl_div(current.view(-1, V), ref.view(-1, V),
    reduction="batchmean", log_target=True)`` (RS/src/llmtuner/train/{ga,npo,simpo}/trainer.py): summed over every
    one of the B*T positions (padding and the last position, which predicts nothing, included) and divided by B*T;
    it needs the full logits (no ``--loss_window``)."""
    if reduction == "release":
        logp = torch.log_softmax(logits.float(), dim=-1)
        ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T)
        return kl.sum() / max(1, kl.numel())
    if reduction != "labelled_mean":
        raise ValueError(f"kl_loss reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    lg, _, mask = _shift(logits, labels)
    rlg = ref_logits[:, :-1, :]
    logp = torch.log_softmax(lg.float(), dim=-1)
    ref_logp = torch.log_softmax(rlg.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024), sequence level: mean over the batch of
    -2/beta * logsigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x))). ``logp``, ``ref_logp``: (B,) summed
    sequence log-probs. At logp == ref_logp it equals 2/beta * log 2 with gradient = GA's (scaled by 1)."""
    return (-2.0 / beta * F.logsigmoid(-beta * (logp - ref_logp))).mean()


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, eq. 4), reference-free and length-normalised: mean over the batch of
    -2/beta * logsigmoid(-beta / |y| * log pi_theta(y|x) - gamma), with the reward margin gamma >= 0 subtracted
    inside the sigmoid as published. ``lengths``: (B,) labelled-token counts. open-unlearning's SimNPO writes the margin as
    delta on the per-token NLL, logsigmoid(beta * (NLL/|y| - delta)), i.e. gamma = beta * delta."""
    return (-2.0 / beta * F.logsigmoid(-beta * logp / lengths.clamp(min=1) - gamma)).mean()


def dpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO (IdkDPO uses a refusal as ``chosen`` and the original answer as ``rejected``): mean over the batch of
    -logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))). All inputs (B,) sequence log-probs."""
    margin = (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * margin).mean()
