"""The critic (value model) for real PPO: per-token values and the clipped value-loss update."""

from __future__ import annotations

import torch

from verl import core_algos
from verl.config import CriticConfig
from verl.protocol import DataProto
from verl.workers import forward, fsdp_utils
from verl.workers.optim import build_optimizer, minibatch_update


def response_values(module, data: DataProto, optimized: bool = True, autocast: str = "none") -> torch.Tensor:
    """Values of the states before each response token: ``[B, T]`` (``values[:, -T-1:-1]``, like the log-probs).
    ``optimized`` drops the columns that are padding in every row (the values there are masked anyway)."""
    b = data.batch
    T = b["responses"].shape[1]
    ids, mask, pos = b["input_ids"], b["attention_mask"], b["position_ids"]
    start, t = forward.trim_bounds(mask, T) if optimized else (0, T)
    end = ids.shape[1] - T + t - 1 if optimized else ids.shape[1]
    with forward.autocast_context(ids.device, autocast):
        values = module(input_ids=ids[:, start:end], attention_mask=mask[:, start:end], position_ids=pos[:, start:end])
    values = values[:, -t - 1:-1] if not optimized else (values[:, end - start - t:] if t else values[:, :0])
    values = torch.nn.functional.pad(values.float(), (0, T - values.shape[1]))
    return values * b["response_mask"]


class Critic:
    """An LM backbone + scalar head (``fsdp_utils.ValueModel``) under FSDP, with its own optimizer."""

    def __init__(self, cfg: CriticConfig, device: torch.device, world_size: int, micro_batch_size: int):
        self.cfg, self.device, self.micro = cfg, device, micro_batch_size
        model = fsdp_utils.load_module(cfg.model_path, "critic", torch.float32, cfg.gradient_checkpointing)
        self.module = fsdp_utils.wrap_fsdp(model, device, fsdp_utils.to_dtype(cfg.dtype), world_size,
                                           cfg.offload_params)
        self.optimizer, self.scheduler = build_optimizer(self.module, cfg.optim)

    def compute_values(self, data: DataProto) -> torch.Tensor:
        self.module.eval()
        with torch.no_grad():
            return torch.cat([response_values(self.module, mb.to(self.device), self.cfg.optimized_forward,
                                              self.cfg.autocast).cpu() for mb in data.split(self.micro)])

    def update(self, data: DataProto, n_mini_batches: int) -> dict[str, float]:
        """Needs ``values`` (old), ``returns``, ``response_mask`` and the model inputs."""
        cfg = self.cfg

        def loss_fn(mb: DataProto):
            b = mb.batch
            vpreds = response_values(self.module, mb, cfg.optimized_forward, cfg.autocast)
            loss, m = core_algos.compute_value_loss(vpreds, b["returns"], b["values"], b["response_mask"],
                                                    cfg.cliprange_value, cfg.loss_agg_mode)
            return loss, {"critic/vf_loss": loss.item(), **{f"critic/{k}": v for k, v in m.items()}}

        return minibatch_update(
            self.module, self.optimizer, self.scheduler, data, loss_fn, n_mini_batches=n_mini_batches,
            micro_batch_size=cfg.micro_batch_size_per_device_for_update, epochs=cfg.ppo_epochs,
            max_grad_norm=cfg.max_grad_norm, offload_optimizer=cfg.offload_optimizer, device=self.device,
            prefix="critic",
        )
