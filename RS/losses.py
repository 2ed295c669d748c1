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


def nll_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over all labelled tokens of the batch (SFT, GDR's retain term)."""
    logp, mask = token_logprobs(logits, labels)
    return -(logp.sum() / mask.sum().clamp(min=1))


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minus the token-mean NLL on forget data (minimising it raises the forget loss)."""
    return -nll_loss(logits, labels)


def kl_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KLR's retain term: token-mean KL(p_ref || p_theta) over labelled positions of the full next-token
    distributions. ``ref_logits`` (B, T, V) come from the frozen original model on the same inputs.

    Normalisation: summed over the vocabulary, averaged over the batch's labelled (non-padding) positions. TOFU /
    open-unlearning's KL uses ``kl_div(..., reduction="batchmean")`` over every flattened position, padding included,
    which is this value times (labelled positions / all positions); the RULE release's KLR code was not available
    to check (README: Fidelity)."""
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
