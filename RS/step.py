"""One training step of RS.train: the forward passes a stage's losses read, its loss parts, the micro-step
(backward, NaN guard) and, at the step's last micro-step, the global-token-mean gradient scaling, clipping and the
optimizer update; the validation loss uses the same forward."""

from __future__ import annotations

import torch

from RS import losses
from RS.args import TrainArgs
from RS.losses import LossSpec, Outputs
from RS.run import Run
from RS.stages import Stage


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stopped, earlier checkpoints were kept."""


def forward_logits(model, batch: dict, prefix: str = "", window: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels), aligned as ``RS.losses`` expects. ``window``: only over the positions that carry a loss:
    every loss reads only the logits that predict a labelled token, so the positions before the batch's first such
    logit (the prompt prefix) are skipped with the model's ``logits_to_keep`` (the output-layer product and its
    log-softmax are a large share of a small model's step); the losses agree with the full forward to ~1e-6."""
    labels = batch[f"{prefix}labels"]
    width, extra = labels.shape[1], {}
    if window:
        labelled = labels.ne(losses.IGNORE_INDEX).any(0).nonzero()
        first = int(labelled[0]) if len(labelled) else width
        extra["logits_to_keep"] = width - max(first - 1, 0)  # logit t predicts label t + 1
    logits = model(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"],
                   **extra).logits
    return logits, (labels[:, width - logits.shape[1]:] if window else labels)


def _outputs(model, batch: dict, prefix: str, level: str, window: bool) -> Outputs:
    """``model``'s outputs on the ``prefix`` columns of ``batch`` at the loss's level (RS.losses)."""
    logits, labels = forward_logits(model, batch, prefix, window=window)
    if level == "sequence":
        logp, lengths = losses.sequence_logprob(logits, labels)
        return Outputs(logp=logp, lengths=lengths)
    return Outputs(logits=logits, labels=labels)


def loss_term(spec: LossSpec, args: TrainArgs, model, ref, batch: dict) -> torch.Tensor:
    """One registered loss on one batch: the policy's forward passes, then (no gradient) the reference's."""
    window = args.loss_window and not spec.every_position(args)
    prefixes = ("chosen_", "rejected_") if spec.pairs else ("",)
    cur = tuple(_outputs(model, batch, p, spec.level, window) for p in prefixes)
    ref_out = None
    if spec.needs_ref:
        with torch.no_grad():
            ref_out = tuple(_outputs(ref, batch, p, spec.level, window) for p in prefixes)
    if not spec.pairs:
        cur, ref_out = cur[0], ref_out[0] if ref_out else None
    return spec.fn(cur, ref_out, args)


def compute_loss(stage: Stage, args: TrainArgs, model, ref, batch: dict, retain_batch: dict | None) -> dict:
    """The stage's total loss and its parts (tensors) for one micro-batch: ``forget`` (and ``retain``) from their
    registries, weighted by --forget_weight / --retain_weight into ``loss``. With --loss_reduction
    global_token_mean the NLL/GA loss is the micro-batch's token sum; the step divides the gradient by the
    labelled tokens of the whole effective batch (StepLoss)."""
    forget, *retain = stage.losses()
    parts = {"forget": loss_term(forget, args, model, ref, batch)}
    total = args.forget_weight * parts["forget"]
    if retain and retain_batch is not None:
        parts["retain"] = loss_term(retain[0], args, model, ref, retain_batch)
        total = total + args.retain_weight * parts["retain"]
    parts["loss"] = total
    return parts


class StepLoss:
    """The logged loss parts of one optimizer step and, with --loss_reduction global_token_mean, its gradient
    normalisation. There each micro-step's loss is its token sum; once the step's gradient is synced (averaged over
    processes by DDP/FSDP, divided by the accumulation steps by accelerate) it is multiplied by processes x
    accumulation / N, N = the labelled tokens of every micro-batch of the step on every process: the gradient of
    sum(token losses) / N, the token mean over the whole effective batch that the release's one-process batch of 8
    computes, whatever the split into processes and micro-steps."""

    def __init__(self, global_mean: bool):
        self.global_mean = global_mean
        self.values: dict[str, list[float]] = {}
        self.tokens = 0

    def add(self, parts: dict, labels: torch.Tensor | None) -> None:
        for k, v in parts.items():
            self.values.setdefault(k, []).append(v.item())
        if self.global_mean:
            self.tokens += losses.labelled_tokens(labels)

    def finish(self, accelerator, optimizer) -> dict[str, list[float]]:
        """At the step's last micro-step: normalise the gradient (global mean); the values to log."""
        values, tokens, self.values, self.tokens = self.values, self.tokens, {}, 0
        if not self.global_mean:
            return values
        keys = sorted(values)
        totals = torch.tensor([tokens] + [sum(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
        totals = accelerator.reduce(totals, reduction="sum")
        n = max(1.0, float(totals[0]))
        scale_gradients(optimizer, accelerator.num_processes * accelerator.gradient_accumulation_steps / n)
        return {k: [float(totals[i + 1]) / n] for i, k in enumerate(keys)}


@torch.no_grad()
def scale_gradients(optimizer, factor: float) -> None:
    """Multiply the gradient of every parameter the optimizer updates (its local shard under FSDP) by ``factor``."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(factor)


def micro_step(run: Run, batch: dict, retain_batch: dict | None, tally: StepLoss, epoch: int) -> dict:
    """One micro-step (forward, backward) and, at the step's last one, the gradient normalisation, clipping and the
    optimizer/scheduler update (accelerate skips them on the other micro-steps); the logged values, or {}."""
    acc, args = run.accelerator, run.args
    logged: dict[str, list[float]] = {}
    with acc.accumulate(run.model):
        parts = run.compute_loss(run.stage, args, run.model, run.ref, batch, retain_batch)
        if not torch.isfinite(parts["loss"]).all():
            raise NonFiniteLossError(
                f"non-finite loss {parts['loss'].item()} at step {run.step + 1} (epoch {epoch}); training stopped. "
                f"Last good checkpoint: {run.last_good or 'none'}. Lower --learning_rate or check data.")
        acc.backward(parts["loss"])
        tally.add(parts, batch.get("labels"))
        if acc.sync_gradients:
            logged = tally.finish(acc, run.optimizer)
            if args.max_grad_norm > 0:
                logged["grad_norm"] = [float(acc.clip_grad_norm_(run.model.parameters(), args.max_grad_norm))]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return logged


@torch.no_grad()
def val_loss(model, loader, window: bool = False) -> float:
    """Mean over the validation batches of their token-mean NLL."""
    model.eval()
    tot, n = 0.0, 0
    for batch in loader:
        tot += losses.nll_loss(*forward_logits(model, batch, window=window)).item()
        n += 1
    model.train()
    return tot / max(1, n)
