"""The policy (actor): log-probs of sampled responses and the clipped policy-gradient update (+ KL loss)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from verl import core_algos
from verl.config import ActorConfig, AlgorithmConfig
from verl.protocol import DataProto
from verl.workers import forward, fsdp_utils, lora
from verl.workers.optim import build_optimizer, minibatch_update


def response_log_probs(module: nn.Module, data: DataProto, temperature: float = 1.0, with_entropy: bool = False,
                       optimized: bool = True, autocast: str = "none", entropy_grad: bool = True,
                       share_prompt: bool = True, chunk_tokens: int = 0):
    """Per-token log-probs of ``responses`` under ``module``: ``[B, T]`` (and entropy ``[B, T]`` if asked).

    ``input_ids = prompt (left-padded) + response (right-padded)``; logits at position t predict token t+1, so
    the response's scores are ``logits[:, -T-1:-1]``. ``optimized`` computes them without padding columns, prompt
    logits or repeated prompts (``verl.workers.forward``; positions after the longest response are 0);
    ``autocast='bf16'`` runs the model under bf16 autocast; ``entropy_grad=False`` computes the entropy without a
    graph (it is only logged); ``share_prompt=False`` turns off the one-pass-per-prompt part of ``optimized``
    (benchmarks). The log-softmax runs in fp32 ``chunk_tokens`` tokens at a time (``forward.token_log_probs``; 0: all
    at once), never on an fp32 copy of the whole logits.
    """
    b = data.batch
    T = b["responses"].shape[1]
    if optimized:
        logits = forward.response_logits(module, b["input_ids"], b["attention_mask"], b["position_ids"], T,
                                         share_prompt=share_prompt, autocast=autocast)
    else:
        logits = forward.plain_response_logits(module, b["input_ids"], b["attention_mask"], b["position_ids"], T,
                                               autocast=autocast)
    t = logits.shape[1]
    log_probs, entropy = forward.token_log_probs(logits, b["responses"][:, :t], temperature, chunk_tokens,
                                                 with_entropy, entropy_grad)
    del logits
    if t < T:  # columns after the longest response: masked everywhere
        log_probs = torch.nn.functional.pad(log_probs, (0, T - t))
        entropy = None if entropy is None else torch.nn.functional.pad(entropy, (0, T - t))
    return log_probs, entropy


def batched_log_probs(module: nn.Module, data: DataProto, micro_batch_size: int, device, temperature: float,
                      optimized: bool = True, autocast: str = "none", chunk_tokens: int = 0) -> torch.Tensor:
    """``response_log_probs`` over micro-batches without gradients, returned on CPU ``[B, T]`` in input order
    (``optimized``: micro-batches of prompts of similar length)."""
    order = forward.length_order(data.batch) if optimized else None
    rows = data[order] if order is not None else data
    out = []
    module.eval()
    with torch.no_grad():
        for mb in rows.split(micro_batch_size):
            lp, _ = response_log_probs(module, mb.to(device), temperature, optimized=optimized, autocast=autocast,
                                       chunk_tokens=chunk_tokens)
            out.append(lp.cpu())
    lp = torch.cat(out)
    if order is None:
        return lp
    restored = torch.empty_like(lp)
    restored[order] = lp
    return restored


def host_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new host tensor of ``t`` in ``dtype``, cast on the host: a device-side cast would allocate a copy of ``t``
    on the device beside the engine's weights, which a weight sync has woken. Always a copy, also of a host tensor:
    the gathered storage is freed when its unit reshards."""
    out = t.detach().to("cpu", copy=True)
    return out if out.dtype == dtype else out.to(dtype)


class Actor:
    """Holds the FSDP policy, its optimizer and scheduler (one per rank).

    Master weights are fp32 (``worker.actor.dtype`` is the compute dtype, through FSDP mixed precision). With
    ``worker.actor.lora.rank > 0`` the policy is a peft model: frozen base + trainable adapters (the optimizer holds the
    adapters only); ``adapter_dir`` restores saved adapters (resume).
    """

    def __init__(self, cfg: ActorConfig, model_path: str, device: torch.device, world_size: int, temperature: float,
                 adapter_dir: str | Path | None = None):
        self.cfg, self.device, self.temperature = cfg, device, temperature
        self.compute_dtype = fsdp_utils.to_dtype(cfg.dtype)
        model = fsdp_utils.load_module(model_path, "actor", torch.float32, cfg.gradient_checkpointing)
        self.lora = cfg.lora.rank > 0
        if self.lora:
            model = lora.add_adapters(model, cfg.lora, adapter_dir)
        elif adapter_dir is not None:
            raise ValueError(f"adapter {adapter_dir} given to an actor without LoRA (worker.actor.lora.rank=0)")
        self.module = fsdp_utils.wrap_fsdp(model, device, self.compute_dtype, world_size, cfg.offload_params)
        self.optimizer, self.scheduler = build_optimizer(self.module, cfg.optim)

    @property
    def inner(self) -> nn.Module:
        """The wrapped model (a peft model for LoRA, else the HF model)."""
        return getattr(self.module, "module", self.module)

    def adapters_off(self):
        """Context in which the policy is its base model (LoRA: peft's ``disable_adapter``); a no-op otherwise."""
        return self.inner.disable_adapter() if self.lora else contextlib.nullcontext()

    def hf_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The policy's full weights under HF names (LoRA merged by peft), on CPU, in ``dtype`` (None: fp32 master).
        A collective under FSDP; every rank gets the weights. Holds the whole model: for checks, not the sync."""
        sd = fsdp_utils.full_state_dict(self.module, rank0_only=False)
        if self.lora:
            sd = lora.merged_state_dict(self.inner, sd, live=self.module)
        return sd if dtype is None else {k: v.to(dtype) for k, v in sd.items()}

    def engine_dtype(self, dtype: str | torch.dtype = "auto") -> torch.dtype:
        """The rollout engine's dtype (``auto``: worker.actor.dtype, as worker.rollout.dtype=auto)."""
        if isinstance(dtype, str):
            return self.compute_dtype if dtype == "auto" else fsdp_utils.to_dtype(dtype)
        return dtype

    def rollout_weights(self, dtype: str | torch.dtype = "auto") -> Iterator[list[tuple[str, torch.Tensor]]]:
        """What the rollout engine loads, one FSDP unit at a time: a list of HF-named tensors in the engine dtype
        (``engine_dtype``) per unit (the root's embeddings, norm and head, then each decoder layer), LoRA merged per
        unit (``lora.merged_unit``). Each unit is gathered, copied to the host in that dtype (``host_copy``) and
        released before the next, so a sync holds one unit's full fp32 weights on the device and the caller's chunk,
        never the whole model (the fp32 copy of an 8B model alone is 32 GB per rank). A collective under FSDP: every
        rank iterates to the end."""
        dtype = self.engine_dtype(dtype)

        def convert(prefix: str, unit: nn.Module, named: list[tuple[str, torch.Tensor]]):
            pairs = lora.merged_unit(unit, prefix, named) if self.lora else named
            return [(n, host_copy(p, dtype)) for n, p in pairs]

        yield from fsdp_utils.gathered_units(self.module, convert)

    def rollout_state_dict(self, dtype: str | torch.dtype = "auto") -> dict[str, torch.Tensor]:
        """``rollout_weights`` as one dict (tests and checks; the sync streams the units instead)."""
        return {n: t for group in self.rollout_weights(dtype) for n, t in group}

    def compute_log_probs(self, data: DataProto) -> torch.Tensor:
        return batched_log_probs(self.module, data, self.cfg.micro_batch_size_per_device_for_experience, self.device,
                                 self.temperature, self.cfg.optimized_forward, self.cfg.autocast,
                                 self.cfg.logprob_chunk_tokens)

    def compute_base_log_probs(self, data: DataProto, micro_batch_size: int) -> torch.Tensor:
        """Log-probs of the frozen base model (the adapters off): a LoRA actor's reference."""
        with self.adapters_off():
            return batched_log_probs(self.module, data, micro_batch_size, self.device, self.temperature,
                                     self.cfg.optimized_forward, self.cfg.autocast, self.cfg.logprob_chunk_tokens)

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
            log_probs, entropy = response_log_probs(self.module, mb, self.temperature, with_entropy=True,
                                                    optimized=cfg.optimized_forward, autocast=cfg.autocast,
                                                    entropy_grad=cfg.entropy_coeff != 0,
                                                    chunk_tokens=cfg.logprob_chunk_tokens)
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
