"""Unlearning / SFT losses as pure functions.

Shapes: ``logits`` (B, T, V) from a causal LM on ``input_ids`` (B, T); ``labels`` (B, T) with IGNORE_INDEX (-100)
on tokens that carry no loss (prompt, padding). Labels are *not* shifted by the caller: position t's logits
predict label t+1, as in Hugging Face models. Sequence log-probabilities are sums over the labelled tokens.
All losses return a scalar tensor (mean over the batch unless said otherwise).

Two registries name the losses a stage (RS/stages.py) combines: ``FORGET_LOSSES`` (the forget-side batch) and
``RETAIN_LOSSES`` (the retain batch of *_gdr / *_klr). An entry is added by ``register_forget_loss`` /
``register_retain_loss`` on a function ``fn(cur, ref, args) -> scalar`` and says what it reads; RS.train's step
runs the forward passes that provide it:

- ``level`` "token": ``cur``/``ref`` are ``Outputs`` with ``logits`` (B, T, V) and ``labels`` (B, T);
  "sequence": ``Outputs`` with ``logp`` (B,) summed log-probs of the labelled tokens and their count ``lengths``.
- ``needs_ref``: ``ref`` holds the frozen original model's outputs on the same batch (else None).
- ``pairs``: the batch holds preference pairs (``chosen_*`` / ``rejected_*`` columns); ``cur`` and ``ref`` are
  ``(chosen, rejected)`` tuples of ``Outputs``.
- ``every_position(args)``: the loss reads every position's logits, so ``--loss_window`` is not applied to it.

``args`` carries the hyper-parameters (RS.args.TrainArgs: betas, reductions). A token-level forget loss honours
``--loss_reduction`` (``token_reduction``): under global_token_mean it returns the micro-batch's token sum, which the
step normalises by the labelled tokens of the whole effective batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from verl.utils.registry import Registry

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
    inside the sigmoid as published. ``lengths``: (B,) labelled-token counts. open-unlearning's SimNPO writes the
    margin as delta on the per-token NLL, logsigmoid(beta * (NLL/|y| - delta)), i.e. gamma = beta * delta."""
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


# ---------------------------------------------------------------------------------------------- registries


@dataclass
class Outputs:
    """One model's outputs on one batch at the level a loss reads (see the module docstring)."""

    logits: torch.Tensor | None = None  # (B, T, V), token level
    labels: torch.Tensor | None = None  # (B, T), token level
    logp: torch.Tensor | None = None  # (B,), sequence level
    lengths: torch.Tensor | None = None  # (B,), sequence level


LossFn = Callable[[Any, Any, Any], torch.Tensor]
LEVELS = ("token", "sequence")


def _never(args: Any) -> bool:
    return False


@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what its forward passes must provide."""

    name: str
    fn: LossFn
    level: str = "token"
    needs_ref: bool = False
    pairs: bool = False
    every_position: Callable[[Any], bool] = _never

    @property
    def policy_passes(self) -> int:
        """Forward passes of the trained model per micro-batch."""
        return 2 if self.pairs else 1

    @property
    def ref_passes(self) -> int:
        """Forward passes of the frozen reference per micro-batch."""
        return self.policy_passes if self.needs_ref else 0


FORGET_LOSSES: Registry[LossSpec] = Registry("forget loss")
RETAIN_LOSSES: Registry[LossSpec] = Registry("retain loss")


def _register(registry: Registry[LossSpec], name: str, level: str, needs_ref: bool, pairs: bool,
              every_position: Callable[[Any], bool]) -> Callable[[LossFn], LossFn]:
    if level not in LEVELS:
        raise ValueError(f"{registry.kind} {name!r}: level must be one of {LEVELS}, got {level!r}")

    def add(fn: LossFn) -> LossFn:
        registry.add(name, LossSpec(name, fn, level, needs_ref, pairs, every_position))
        return fn

    return add


def register_forget_loss(name: str, level: str = "token", needs_ref: bool = False, pairs: bool = False,
                         every_position: Callable[[Any], bool] = _never) -> Callable[[LossFn], LossFn]:
    """Decorator: register ``fn(cur, ref, args)`` as the forget loss ``name`` (fields as ``LossSpec``)."""
    return _register(FORGET_LOSSES, name, level, needs_ref, pairs, every_position)


def register_retain_loss(name: str, level: str = "token", needs_ref: bool = False, pairs: bool = False,
                         every_position: Callable[[Any], bool] = _never) -> Callable[[LossFn], LossFn]:
    """Decorator: register ``fn(cur, ref, args)`` as the retain loss ``name`` (fields as ``LossSpec``)."""
    return _register(RETAIN_LOSSES, name, level, needs_ref, pairs, every_position)


def token_reduction(args: Any) -> str:
    """The ``reduction`` of a token-level forget loss: "sum" under --loss_reduction global_token_mean."""
    return "sum" if args.loss_reduction == "global_token_mean" else "mean"


@register_forget_loss("nll")
def _forget_nll(cur: Outputs, ref: None, args: Any) -> torch.Tensor:
    """SFT on the forget-side data (RS's refusals, injection)."""
    return nll_loss(cur.logits, cur.labels, token_reduction(args))


@register_forget_loss("ga")
def _forget_ga(cur: Outputs, ref: None, args: Any) -> torch.Tensor:
    return ga_loss(cur.logits, cur.labels, token_reduction(args))


@register_forget_loss("npo", level="sequence", needs_ref=True)
def _forget_npo(cur: Outputs, ref: Outputs, args: Any) -> torch.Tensor:
    return npo_loss(cur.logp, ref.logp, args.npo_beta)


@register_forget_loss("simnpo", level="sequence")
def _forget_simnpo(cur: Outputs, ref: None, args: Any) -> torch.Tensor:
    return simnpo_loss(cur.logp, cur.lengths, args.simnpo_beta, args.simnpo_gamma)


@register_forget_loss("dpo", level="sequence", needs_ref=True, pairs=True)
def _forget_dpo(cur: tuple[Outputs, Outputs], ref: tuple[Outputs, Outputs], args: Any) -> torch.Tensor:
    """IdkDPO: ``chosen`` = an entity-free refusal, ``rejected`` = the target's text."""
    (chosen, rejected), (ref_chosen, ref_rejected) = cur, ref
    return dpo_loss(chosen.logp, rejected.logp, ref_chosen.logp, ref_rejected.logp, args.dpo_beta)


@register_retain_loss("nll")
def _retain_nll(cur: Outputs, ref: None, args: Any) -> torch.Tensor:
    """GDR: NLL on the retain batch (always a token mean)."""
    return nll_loss(cur.logits, cur.labels)


def _klr_release(args: Any) -> bool:
    return args.klr_reduction == "release"


@register_retain_loss("kl", needs_ref=True, every_position=_klr_release)
def _retain_kl(cur: Outputs, ref: Outputs, args: Any) -> torch.Tensor:
    """KLR: KL(original || model) on the retain batch; --klr_reduction release reads every position."""
    return kl_loss(cur.logits, ref.logits, cur.labels, args.klr_reduction)
