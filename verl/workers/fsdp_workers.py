"""``FSDPWorker``: everything one rank hosts (colocated roles): actor + rollout, reference, critic.

The same class runs in-process (``LocalWorkerGroup``) or as a Ray actor (``RayWorkerGroup``); the trainer calls
its ``@register``-ed methods through the group, which splits DataProto batches over the ranks.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import psutil
import torch

from verl.config import PPOConfig
from verl.models.embedded import load_tokenizer, resolve_model_path
from verl.protocol import DataProto
from verl.single_controller.base import Dispatch, Worker, register
from verl.utils.checkpoint import CheckpointManager
from verl.utils.cli import UserError
from verl.utils.vllm_engine import resolve_engine
from verl.workers import fsdp_utils, lora
from verl.workers.actor import Actor
from verl.workers.critic import Critic
from verl.workers.ref import Reference, same_model
from verl.workers.rollout import HFRollout, VLLMRollout

logger = logging.getLogger("verl.workers")


def choose_rollout_engine(name: str, device: torch.device | None = None, model_path: str | None = None) -> str:
    """``auto`` -> vllm whenever it is importable (CPU or GPU) and can serve the model, else hf; ``vllm`` without
    vLLM fails clearly."""
    return resolve_engine(name, "worker.rollout.name", model_path, device.type if device is not None else "cpu")


def actor_weights(cfg, resume_dir: str | None) -> tuple[str, str | None]:
    """``(model path, adapter dir)`` the actor starts from: its start path, or in a resume the checkpoint's fp32 master
    weights (``actor_master/``, when the HF export is in a lower precision), else its HF export; a LoRA actor always
    loads its base and the checkpoint's adapter."""
    if not resume_dir:
        return cfg.model_path, None
    ckpt = Path(resume_dir)
    if cfg.lora.rank > 0:
        return cfg.model_path, str(ckpt / "actor_adapter")
    master = ckpt / "actor_master"
    return str(master if master.is_dir() else ckpt / "actor"), None


def resume_file(ckpt: str | Path, rank: int) -> Path:
    """This rank's ``worker_rank<r>.pt`` in ``ckpt``; a UserError saying why when it is missing."""
    file = Path(ckpt) / f"worker_rank{rank}.pt"
    if not file.is_file():
        others = sorted(p.name for p in Path(ckpt).glob("worker_rank*.pt"))
        why = (f"it holds {others}: resume needs the same trainer.n_workers as the saved run" if others else
               CheckpointManager.not_resumable_reason(Path(ckpt)))
        raise UserError(f"cannot resume from {ckpt}: {file.name} is missing; {why}")
    return file


class FSDPWorker(Worker):
    """One rank: builds the roles the config needs. ``resume_dir`` (a complete checkpoint) restores the actor and
    critic weights from it; ``load_checkpoint`` then restores optimizer and RNG state."""

    def __init__(self, config: PPOConfig, resume_dir: str | None = None, num_threads: int | None = None):
        super().__init__()
        self.config = config
        self.device = fsdp_utils.resolve_device(config.trainer.device)
        if num_threads:
            torch.set_num_threads(num_threads)
        self.rank, self.world_size = fsdp_utils.init_distributed(self.device, config.trainer.dist_backend,
                                                                 getattr(config.trainer, "dist_timeout_minutes", None))
        self.device = fsdp_utils.current_device(self.device)
        torch.manual_seed(config.trainer.seed)
        w = config.worker
        actor_path = str(Path(resume_dir) / "actor") if resume_dir else w.actor.model_path
        self.tokenizer = load_tokenizer(w.actor.model_path)
        temperature = w.rollout.temperature
        if resume_dir:
            resume_file(resume_dir, self.rank)  # a checkpoint trimmed to its weights: say so before loading anything
        weights, adapter = actor_weights(w.actor, resume_dir)
        self.actor = Actor(w.actor, weights, self.device, self.world_size, temperature, adapter_dir=adapter)
        self.ref = None
        if config.use_reference:
            base_of = self.actor if self.actor.lora and same_model(w.ref.model_path, w.actor.model_path) else None
            self.ref = Reference(w.ref, self.device, self.world_size, temperature,
                                 w.actor.micro_batch_size_per_device_for_experience, base_of=base_of)
        self.critic = None
        if config.use_critic:
            if resume_dir:
                w.critic.model_path = str(Path(resume_dir) / "critic")
            self.critic = Critic(w.critic, self.device, self.world_size,
                                 w.actor.micro_batch_size_per_device_for_experience)
        self.engine = choose_rollout_engine(w.rollout.name, self.device, resolve_model_path(actor_path))
        if self.engine == "vllm":
            inner = getattr(self.actor.module, "module", self.actor.module)
            self.rollout = VLLMRollout(actor_path, self.tokenizer, w.rollout,
                                       config.data.max_prompt_length + config.data.max_response_length,
                                       w.actor.dtype, self.device, seed=config.trainer.seed + self.rank,
                                       world_size=self.world_size,
                                       generation_config=getattr(inner, "generation_config", None))
            logger.info("vLLM rollout engine started in %.1f s", self.rollout.start_seconds)
            # awake until the first method that is not a generation (``before_method``): a sleep now would only
            # discard the start weights, which are the actor's
        else:
            self.rollout = HFRollout(self.actor.module, self.tokenizer, w.rollout, self.device, self.world_size)

    # ------------------------------------------------------------------ experience
    @register(Dispatch.DP_COMPUTE_PROTO)
    def generate_sequences(self, prompts: DataProto) -> DataProto:
        if "seed" in prompts.meta_info:
            prompts.meta_info = {**prompts.meta_info, "seed": int(prompts.meta_info["seed"]) + 7919 * self.rank}
        if self.engine == "vllm":
            syncs = self.rollout.syncs
            # syncs only when the actor changed (once per step, not per validation chunk), one FSDP unit at a time;
            # stays awake after
            self.rollout.ready(lambda: self.actor.rollout_weights(self.config.worker.rollout.dtype),
                               self._tied_embeddings())
            if self.rollout.syncs > syncs:
                logger.info("vLLM weights synced in %.2f s", self.rollout.sync_seconds)
        out = self.rollout.generate(prompts)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return out

    @register(Dispatch.DP_COMPUTE_PROTO)
    def generate_sequences_hf(self, prompts: DataProto) -> DataProto:
        """The same generation with Hugging Face ``generate`` on the actor's FSDP module, whatever the engine: the
        reference a vLLM engine's greedy output is checked against (tests, debugging)."""
        hf = self.rollout if isinstance(self.rollout, HFRollout) else getattr(self, "_hf_rollout", None)
        if hf is None:
            hf = self._hf_rollout = HFRollout(self.actor.module, self.tokenizer, self.config.worker.rollout,
                                              self.device, self.world_size)
        return hf.generate(prompts)

    def before_method(self, name: str) -> None:
        """Any call but a generation (or close) first puts the vLLM engine to sleep, so consecutive generations
        (validation chunks) share one wake and the actor's updates get the engine's GPU memory."""
        if name not in ("generate_sequences", "close") and getattr(self, "engine", None) == "vllm":
            self.rollout.release()

    def _tied_embeddings(self) -> bool:
        inner = getattr(self.actor.module, "module", self.actor.module)
        return bool(getattr(getattr(inner, "config", None), "tie_word_embeddings", False))

    @property
    def rollout_stale(self) -> bool:
        """Whether the engine must reload the actor's weights before generating (never for the HF engine)."""
        return bool(getattr(getattr(self, "rollout", None), "needs_sync", False))

    @rollout_stale.setter
    def rollout_stale(self, value: bool) -> None:
        if value and hasattr(getattr(self, "rollout", None), "mark_stale"):
            self.rollout.mark_stale()

    @property
    def rollout_syncs(self) -> int:
        return int(getattr(getattr(self, "rollout", None), "syncs", 0))

    @register(Dispatch.ONE_TO_ALL)
    def rollout_processes(self) -> list[int]:
        """Pids of the processes this worker started (the vLLM engine's), for checks that none outlives it."""
        return [c.pid for c in psutil.Process().children(recursive=True)]

    @register(Dispatch.DP_COMPUTE_PROTO)
    def compute_log_probs(self, data: DataProto) -> DataProto:
        return DataProto.from_dict(tensors={"old_log_probs": self.actor.compute_log_probs(data)})

    @register(Dispatch.DP_COMPUTE_PROTO)
    def compute_ref_log_probs(self, data: DataProto) -> DataProto:
        if self.ref is None:
            raise RuntimeError("no reference model: set algorithm.use_kl_loss=true or algorithm.kl_coef>0")
        return DataProto.from_dict(tensors={"ref_log_probs": self.ref.compute_log_probs(data)})

    @register(Dispatch.DP_COMPUTE_PROTO)
    def compute_values(self, data: DataProto) -> DataProto:
        return DataProto.from_dict(tensors={"values": self.critic.compute_values(data)})

    # ------------------------------------------------------------------ updates
    @register(Dispatch.DP_COMPUTE)
    def update_actor(self, data: DataProto, n_mini_batches: int) -> dict[str, float]:
        self.rollout_stale = True
        return self.actor.update(data, self.config.algorithm, n_mini_batches)

    @register(Dispatch.DP_COMPUTE)
    def update_critic(self, data: DataProto, n_mini_batches: int) -> dict[str, float]:
        return self.critic.update(data, n_mini_batches)

    # ------------------------------------------------------------------ checkpoints
    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, path: str, resume_state: bool = True) -> None:
        """Into ``path`` (a temp dir the driver renames), from rank 0: ``actor/`` (HF folder in worker.actor.dtype; a
        LoRA actor's merged weights) + ``actor_adapter/`` (LoRA, fp32); and with ``resume_state`` what only a resume
        needs, which older checkpoints drop (``CheckpointManager``): ``actor_master/`` (fp32 master weights when the
        export is in a lower precision), ``critic/`` (fp32) and per rank ``worker_rank<r>.pt``, the
        optimizer/scheduler/RNG state (resume needs the same number of workers). Without ``resume_state`` (the last
        step of a run, unless trainer.keep_resume_state) none of these is written."""
        path = Path(path)
        actor, dtype = self.actor, fsdp_utils.to_dtype(self.config.worker.actor.dtype)
        full = fsdp_utils.full_state_dict(actor.module)  # collective; fp32 master (peft names for LoRA) on rank 0
        if self.rank == 0:
            if actor.lora:
                merged = lora.merged_state_dict(actor.inner, full, live=actor.module)
                fsdp_utils.export_hf(actor.module, path / "actor", self.tokenizer, "actor", dtype, state_dict=merged)
                lora.save_adapter(actor.inner, full, path / "actor_adapter")
            else:
                fsdp_utils.export_hf(actor.module, path / "actor", self.tokenizer, "actor", dtype, state_dict=full)
                if dtype != torch.float32 and resume_state:
                    fsdp_utils.export_hf(actor.module, path / "actor_master", None, "actor", state_dict=full)
        del full
        if resume_state:
            self._save_resume_state(path)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _save_resume_state(self, path: Path) -> None:
        """The critic's fp32 HF folder (a collective under FSDP) and this rank's ``worker_rank<r>.pt``."""
        actor = self.actor
        state = {"actor_optim": actor.optimizer.state_dict(), "actor_sched": actor.scheduler.state_dict(),
                 "rng": fsdp_utils.rng_state()}
        if self.critic is not None:
            fsdp_utils.export_hf(self.critic.module, path / "critic", self.tokenizer, "critic")
            state["critic_optim"] = self.critic.optimizer.state_dict()
            state["critic_sched"] = self.critic.scheduler.state_dict()
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".worker_rank{self.rank}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path / f"worker_rank{self.rank}.pt")

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, path: str) -> None:
        file = resume_file(path, self.rank)
        try:  # tensors and plain containers only: a checkpoint from elsewhere must not run code on load
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UserError(f"{file} holds objects other than tensors and plain values (a checkpoint written by "
                            f"another program or an older version?); refusing to unpickle it. Start the run afresh "
                            f"(trainer.resume=none). Detail: {str(exc).splitlines()[0]}") from None
        roles = [("actor", self.actor, self.config.worker.actor)]
        if self.critic is not None:
            roles.append(("critic", self.critic, self.config.worker.critic))
        for name, role, cfg in roles:
            role.optimizer.load_state_dict(state[f"{name}_optim"])  # state moves to the parameters' device
            role.scheduler.load_state_dict(state[f"{name}_sched"])
            fsdp_utils.apply_optim_config(role.optimizer, role.scheduler, cfg.optim)
            if cfg.offload_optimizer:
                fsdp_utils.move_optimizer_state(role.optimizer, torch.device("cpu"))
        fsdp_utils.set_rng_state(state["rng"])

    @register(Dispatch.RANK_ZERO)
    def param_norms(self) -> dict[str, float]:
        """Sum of parameter norms per role (tests: did the weights change?). Collective under FSDP."""
        out = {}
        for name, role in (("actor", self.actor), ("critic", self.critic)):
            if role is not None:
                sd = fsdp_utils.full_state_dict(role.module)
                out[name] = float(sum(v.float().norm() for v in sd.values())) if sd else 0.0
        return out

    @register(Dispatch.ONE_TO_ALL)
    def close(self) -> None:
        """Stop the vLLM engine (its processes and transfer buffer go), then leave the process group."""
        try:
            if getattr(self, "engine", None) == "vllm":
                self.rollout.close()
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
