"""What the actor and the critic share: the optimizer, the clipped step, and the mini/micro-batch update loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from verl.protocol import DataProto
from verl.workers import fsdp_utils


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss is NaN/inf: the update is skipped and the run stops (last good checkpoint kept)."""


def build_optimizer(module: nn.Module, optim_cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters with a linear warm-up to a constant lr."""
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay,
        betas=tuple(optim_cfg.betas),
    )
    warmup = max(0, optim_cfg.lr_warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


def clip_and_step(module, optimizer, scheduler, max_grad_norm: float, offload: bool, device) -> float:
    """Clip gradients, step unless the norm is non-finite; returns the pre-clip norm.

    The norm is global under FSDP (every rank gets the same value, so all ranks stop together). ``offload``: the
    optimizer state lives on the CPU between steps and joins the parameters for the step
    (``fsdp_utils.optimizer_step_device``: the GPU, or the CPU when FSDP offloads the parameters there).
    """
    if isinstance(module, FSDP):
        grad_norm = module.clip_grad_norm_(max_grad_norm)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"non-finite gradient norm ({float(grad_norm)}); stopping before the optimizer step")
    if offload:
        fsdp_utils.move_optimizer_state(optimizer, fsdp_utils.optimizer_step_device(optimizer, device))
    optimizer.step()
    scheduler.step()
    if offload:
        fsdp_utils.move_optimizer_state(optimizer, torch.device("cpu"))
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (an all-reduce MAX; the local value without a process group). Every rank
    must call it the same number of times."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


LossFn = Callable[[DataProto], tuple[torch.Tensor, dict[str, float]]]


def minibatch_update(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    data: DataProto,
    loss_fn: LossFn,
    *,
    n_mini_batches: int,
    micro_batch_size: int,
    epochs: int,
    max_grad_norm: float,
    offload_optimizer: bool,
    device: torch.device,
    prefix: str,
) -> dict[str, float]:
    """``epochs`` x ``n_mini_batches`` optimizer steps over ``data``, accumulating gradients over micro-batches.

    ``loss_fn(micro_batch_on_device) -> (loss, metrics)``; a non-finite loss zeroes the gradients and raises
    ``NonFiniteLossError`` before any step. The decision is collective: each micro-batch's non-finite flag is
    all-reduced before its backward, so when one rank sees NaN every rank raises (a rank that raised alone would leave
    the others blocked in FSDP's gradient reduce-scatter). Returns the metrics averaged over micro-batches, plus
    ``{prefix}/grad_norm`` (mean pre-clip norm over steps) and ``{prefix}/lr``.
    """
    module.train()
    mini_size = len(data) // n_mini_batches
    micro = min(micro_batch_size, mini_size)
    sums: dict[str, float] = {}
    count = 0
    for _ in range(epochs):
        for mini in data.split(mini_size):
            n_micro = math.ceil(len(mini) / micro)
            for mb in mini.split(micro):
                loss, metrics = loss_fn(mb.to(device))
                finite = bool(torch.isfinite(loss))
                if any_rank(not finite, device):
                    optimizer.zero_grad(set_to_none=True)
                    detail = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                    where = f"{prefix} loss is {loss.item()} ({detail})" if not finite else \
                        f"{prefix} loss is non-finite on another rank (here {loss.item():.4g})"
                    raise NonFiniteLossError(f"{where}; stopping")
                (loss / n_micro).backward()
                fsdp_utils.restore_frozen_param_views(module)
                for k, v in {f"{prefix}/loss": loss.item(), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            grad_norm = clip_and_step(module, optimizer, scheduler, max_grad_norm, offload_optimizer, device)
            sums[f"{prefix}/grad_norm"] = sums.get(f"{prefix}/grad_norm", 0.0) + grad_norm * n_micro
    out = {k: v / count for k, v in sums.items()}
    out[f"{prefix}/lr"] = scheduler.get_last_lr()[0]
    return out
