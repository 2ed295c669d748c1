"""The frozen reference policy: log-probs for the KL term (optionally with FSDP CPU parameter offload).

A LoRA actor whose reference is its own start model needs no second copy: the reference is the actor's module with
the adapters switched off (``Actor.compute_base_log_probs``); then worker.ref's dtype, autocast and offload settings
do not apply (the actor's do).
"""

from __future__ import annotations

from pathlib import Path

import torch

from verl.config import RefConfig
from verl.models.embedded import resolve_model_path
from verl.protocol import DataProto
from verl.workers import fsdp_utils
from verl.workers.actor import Actor, batched_log_probs


def same_model(path_a: str | None, path_b: str | None) -> bool:
    """Whether two model paths (folders, hub ids or the embedded model's name) name the same weights."""
    if path_a is None or path_b is None:
        return False
    a, b = str(resolve_model_path(path_a)), str(resolve_model_path(path_b))
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


class Reference:
    """No optimizer, no gradients; loaded directly in its compute dtype, or (``base_of``) the base of a LoRA actor."""

    def __init__(self, cfg: RefConfig, device: torch.device, world_size: int, temperature: float, micro_batch_size: int,
                 base_of: Actor | None = None):
        self.cfg, self.device, self.temperature, self.micro = cfg, device, temperature, micro_batch_size
        self.base_of = base_of
        if base_of is not None:
            self.module = base_of.module
            return
        dtype = fsdp_utils.to_dtype(cfg.dtype)
        model = fsdp_utils.load_module(cfg.model_path, "ref", dtype)
        model.requires_grad_(False)
        self.module = fsdp_utils.wrap_fsdp(model, device, dtype, world_size, cfg.offload_params)

    def compute_log_probs(self, data: DataProto) -> torch.Tensor:
        if self.base_of is not None:
            return self.base_of.compute_base_log_probs(data, self.micro)
        return batched_log_probs(self.module, data, self.micro, self.device, self.temperature,
                                 self.cfg.optimized_forward, self.cfg.autocast, self.cfg.logprob_chunk_tokens)
