"""The frozen reference policy: log-probs for the KL term (optionally with FSDP CPU parameter offload)."""

from __future__ import annotations

import torch

from verl.config import RefConfig
from verl.protocol import DataProto
from verl.workers import fsdp_utils
from verl.workers.actor import batched_log_probs


class Reference:
    """No optimizer, no gradients; loaded directly in its compute dtype."""

    def __init__(self, cfg: RefConfig, device: torch.device, world_size: int, temperature: float, micro_batch_size: int):
        self.cfg, self.device, self.temperature, self.micro = cfg, device, temperature, micro_batch_size
        dtype = fsdp_utils.to_dtype(cfg.dtype)
        model = fsdp_utils.load_module(cfg.model_path, "ref", dtype)
        model.requires_grad_(False)
        self.module = fsdp_utils.wrap_fsdp(model, device, dtype, world_size, cfg.offload_params)

    def compute_log_probs(self, data: DataProto) -> torch.Tensor:
        return batched_log_probs(self.module, data, self.micro, self.device, self.temperature, self.cfg.optimized_forward,
                                 self.cfg.autocast)
