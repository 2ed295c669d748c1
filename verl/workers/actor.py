"""The policy (actor): log-probs of sampled responses and the clipped policy-gradient update (+ KL loss)."""

from __future__ import annotations

import torch
from torch import nn

from verl import core_algos
from verl.config import ActorConfig, AlgorithmConfig
from verl.protocol import DataProto
from verl.workers import fsdp_utils
from verl.workers.optim import build_optimizer, minibatch_update


def response_log_probs(module: nn.Module, data: DataProto, temperature: float = 1.0, with_entropy: bool = False):
    """Per-token log-probs of ``responses`` under ``module``: ``[B, T]`` (and entropy ``[B, T]`` if asked).

    ``input_ids = prompt (left-padded) + response (right-padded)``; logits at position t predict token t+1, so
    the response's scores are ``logits[:, -T-1:-1]``.
    """
    b = data.batch
    T = b["responses"].shape[1]
    logits = module(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"],
                    use_cache=False).logits
    logits = logits[:, -T - 1:-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    entropy = core_algos.compute_entropy_from_logits(logits) if with_entropy else None
    return log_probs, entropy


def batched_log_probs(module: nn.Module, data: DataProto, micro_batch_size: int, device, temperature: float) -> torch.Tensor:
    """``response_log_probs`` over micro-batches without gradients, returned on CPU ``[B, T]``."""
    out = []
    module.eval()
    with torch.no_grad():
        for mb in data.split(micro_batch_size):
            lp, _ = response_log_probs(module, mb.to(device), temperature)
            out.append(lp.cpu())
    return torch.cat(out)


class Actor:
    """Holds the FSDP policy, its optimizer and scheduler (one per rank)."""

    def __init__(self, cfg: ActorConfig, model_path: str, device: torch.device, world_size: int, temperature: float):
        self.cfg, self.device, self.temperature = cfg, device, temperature
        compute = fsdp_utils.to_dtype(cfg.dtype)
        # master weights in fp32; bf16/fp16 compute through FSDP mixed precision
        model = fsdp_utils.load_module(model_path, "actor", torch.float32, cfg.gradient_checkpointing)
        self.module = fsdp_utils.wrap_fsdp(model, device, compute, world_size, cfg.offload_params)
        self.optimizer, self.scheduler = build_optimizer(self.module, cfg.optim)

    def compute_log_probs(self, data: DataProto) -> torch.Tensor:
        return batched_log_probs(self.module, data, self.cfg.micro_batch_size_per_device_for_experience, self.device,
                                 self.temperature)

    def update(self, data: DataProto, algo: AlgorithmConfig, n_mini_batches: int) -> dict[str, float]:
        """PPO-style update over this rank's rows: ``ppo_epochs`` x ``n_mini_batches`` optimizer steps.

        Needs ``responses, input_ids, attention_mask, position_ids, response_mask, advantages`` (+ ``ref_log_probs``
        for the KL loss). ``old_log_probs`` may be absent only when there is exactly one optimizer step on fresh
        rollouts: then old = current policy and the ratio is 1 with its gradient intact (on-policy).
        """
        cfg = self.cfg
        has_old = "old_log_probs" in data.batch
        if not has_old and (cfg.ppo_epochs > 1 or n_mini_batches > 1):
            raise ValueError("old_log_probs are required for more than one optimizer step per batch")

        def loss_fn(mb: DataProto):
            b = mb.batch
            log_probs, entropy = response_log_probs(self.module, mb, self.temperature, with_entropy=True)
            old = b["old_log_probs"] if has_old else log_probs.detach()
            pg_loss, pg_metrics = core_algos.compute_policy_loss(
                old, log_probs, b["advantages"], b["response_mask"], cfg.clip_ratio_low, cfg.clip_ratio_high,
                cfg.clip_ratio_dual, cfg.loss_agg_mode,
            )
            entropy_loss = core_algos.agg_loss(entropy, b["response_mask"], cfg.loss_agg_mode)
            loss = pg_loss - cfg.entropy_coeff * entropy_loss
            metrics = {"actor/pg_loss": pg_loss.item(), "actor/entropy": entropy_loss.item(),
                       **{f"actor/{k}": v for k, v in pg_metrics.items()}}
            if algo.use_kl_loss and "ref_log_probs" in b:
                kl = core_algos.compute_kl(log_probs, b["ref_log_probs"], algo.kl_penalty)
                kl_loss = core_algos.agg_loss(kl, b["response_mask"], cfg.loss_agg_mode)
                loss = loss + algo.kl_coef * kl_loss
                metrics["actor/kl_loss"] = kl_loss.item()
            return loss, metrics

        return minibatch_update(
            self.module, self.optimizer, self.scheduler, data, loss_fn, n_mini_batches=n_mini_batches,
            micro_batch_size=cfg.micro_batch_size_per_device_for_update, epochs=cfg.ppo_epochs,
            max_grad_norm=cfg.max_grad_norm, offload_optimizer=cfg.offload_optimizer, device=self.device,
            prefix="actor",
        )
