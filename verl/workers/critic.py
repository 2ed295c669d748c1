"""The critic (value model) for real PPO: per-token values and the clipped value-loss update."""

from __future__ import annotations

import torch

from verl import core_algos
from verl.config import CriticConfig
from verl.protocol import DataProto
from verl.workers import fsdp_utils
from verl.workers.optim import build_optimizer, minibatch_update


def response_values(module, data: DataProto) -> torch.Tensor:
    """Values of the states before each response token: ``[B, T]`` (``values[:, -T-1:-1]``, like the log-probs)."""
    b = data.batch
    T = b["responses"].shape[1]
    values = module(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"])
    return values[:, -T - 1:-1].float() * b["response_mask"]


class Critic:
    """An LM backbone + scalar head (``fsdp_utils.ValueModel``) under FSDP, with its own optimizer."""

    def __init__(self, cfg: CriticConfig, device: torch.device, world_size: int, micro_batch_size: int):
        self.cfg, self.device, self.micro = cfg, device, micro_batch_size
        model = fsdp_utils.load_module(cfg.model_path, "critic", torch.float32, cfg.gradient_checkpointing)
        self.module = fsdp_utils.wrap_fsdp(model, device, fsdp_utils.to_dtype(cfg.dtype), world_size, cfg.offload_params)
        self.optimizer, self.scheduler = build_optimizer(self.module, cfg.optim)

    def compute_values(self, data: DataProto) -> torch.Tensor:
        self.module.eval()
        with torch.no_grad():
            return torch.cat([response_values(self.module, mb.to(self.device)).cpu() for mb in data.split(self.micro)])

    def update(self, data: DataProto, n_mini_batches: int) -> dict[str, float]:
        """Needs ``values`` (old), ``returns``, ``response_mask`` and the model inputs."""
        cfg = self.cfg

        def loss_fn(mb: DataProto):
            b = mb.batch
            vpreds = response_values(self.module, mb)
            loss, m = core_algos.compute_value_loss(vpreds, b["returns"], b["values"], b["response_mask"],
                                                    cfg.cliprange_value, cfg.loss_agg_mode)
            return loss, {"critic/vf_loss": loss.item(), **{f"critic/{k}": v for k, v in m.items()}}

        return minibatch_update(
            self.module, self.optimizer, self.scheduler, data, loss_fn, n_mini_batches=n_mini_batches,
            micro_batch_size=cfg.micro_batch_size_per_device_for_update, epochs=cfg.ppo_epochs,
            max_grad_norm=cfg.max_grad_norm, offload_optimizer=cfg.offload_optimizer, device=self.device,
            prefix="critic",
        )
