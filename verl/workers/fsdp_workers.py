"""``FSDPWorker``: everything one rank hosts (colocated roles): actor + rollout, reference, critic.

The same class runs in-process (``LocalWorkerGroup``) or as a Ray actor (``RayWorkerGroup``); the trainer calls
its ``@register``-ed methods through the group, which splits DataProto batches over the ranks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from verl.config import PPOConfig
from verl.protocol import DataProto
from verl.single_controller.base import Dispatch, Worker, register
from verl.utils.vllm_engine import resolve_engine
from verl.workers import fsdp_utils
from verl.workers.actor import Actor
from verl.workers.critic import Critic
from verl.workers.ref import Reference
from verl.workers.rollout import HFRollout

logger = logging.getLogger("verl.workers")


def choose_rollout_engine(name: str, device: torch.device | None = None, model_path: str | None = None) -> str:
    """``auto`` -> vllm whenever it is importable (CPU or GPU) and can serve the model, else hf; ``vllm`` without
    vLLM fails clearly."""
    return resolve_engine(name, "worker.rollout.name", model_path, device.type if device is not None else "cpu")


class FSDPWorker(Worker):
    """One rank: builds the roles the config needs. ``resume_dir`` (a complete checkpoint) restores the actor and
    critic weights from it; ``load_checkpoint`` then restores optimizer and RNG state."""

    def __init__(self, config: PPOConfig, resume_dir: str | None = None, num_threads: int | None = None):
        super().__init__()
        from verl.models.embedded import load_tokenizer, resolve_model_path

        self.config = config
        self.device = fsdp_utils.resolve_device(config.trainer.device)
        if num_threads:
            torch.set_num_threads(num_threads)
        self.rank, self.world_size = fsdp_utils.init_distributed(self.device, config.trainer.dist_backend)
        self.device = fsdp_utils.current_device(self.device)
        torch.manual_seed(config.trainer.seed)
        w = config.worker
        actor_path = str(Path(resume_dir) / "actor") if resume_dir else w.actor.model_path
        self.tokenizer = load_tokenizer(w.actor.model_path)
        temperature = w.rollout.temperature
        self.actor = Actor(w.actor, actor_path, self.device, self.world_size, temperature)
        self.ref = None
        if config.use_reference:
            self.ref = Reference(w.ref, self.device, self.world_size, temperature,
                                 w.actor.micro_batch_size_per_device_for_experience)
        self.critic = None
        if config.use_critic:
            if resume_dir:
                w.critic.model_path = str(Path(resume_dir) / "critic")
            self.critic = Critic(w.critic, self.device, self.world_size, w.actor.micro_batch_size_per_device_for_experience)
        self.engine = choose_rollout_engine(w.rollout.name, self.device, resolve_model_path(actor_path))
        self.rollout_stale = True  # the engine's weights lag the actor's (vLLM: sync before the next generation)
        self.rollout_syncs = 0
        if self.engine == "vllm":
            from verl.workers.rollout import VLLMRollout

            inner = getattr(self.actor.module, "module", self.actor.module)
            self.rollout = VLLMRollout(actor_path, self.tokenizer, w.rollout,
                                       config.data.max_prompt_length + config.data.max_response_length,
                                       w.actor.dtype, self.device, seed=config.trainer.seed + self.rank,
                                       world_size=self.world_size,
                                       generation_config=getattr(inner, "generation_config", None))
            self.rollout_stale = False  # started from actor_path: the actor's weights
            logger.info("vLLM rollout engine started in %.1f s", self.rollout.start_seconds)
            self.rollout.sleep()
        else:
            self.rollout = HFRollout(self.actor.module, self.tokenizer, w.rollout, self.device, self.world_size)

    # ------------------------------------------------------------------ experience
    @register(Dispatch.DP_COMPUTE_PROTO)
    def generate_sequences(self, prompts: DataProto) -> DataProto:
        if "seed" in prompts.meta_info:
            prompts.meta_info = {**prompts.meta_info, "seed": int(prompts.meta_info["seed"]) + 7919 * self.rank}
        if self.engine == "vllm":
            if self.rollout_stale:  # once per training step, not per validation chunk
                inner = getattr(self.actor.module, "module", self.actor.module)
                tied = bool(getattr(getattr(inner, "config", None), "tie_word_embeddings", False))
                self.rollout.sync_weights(fsdp_utils.full_state_dict(self.actor.module, rank0_only=False), tied)
                self.rollout_stale = False
                self.rollout_syncs += 1
                logger.info("vLLM weights synced in %.2f s", self.rollout.sync_seconds)
            out = self.rollout.generate(prompts)
            self.rollout.sleep()  # GPU: KV cache freed, weights offloaded while the actor trains
        else:
            out = self.rollout.generate(prompts)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return out

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
    def save_checkpoint(self, path: str) -> None:
        """Into ``path`` (a temp dir the driver renames): HF actor (+ critic) folders from rank 0, and per rank
        the optimizer/scheduler/RNG state (resume needs the same number of workers)."""
        path = Path(path)
        fsdp_utils.export_hf(self.actor.module, path / "actor", self.tokenizer, "actor")
        state = {"actor_optim": self.actor.optimizer.state_dict(), "actor_sched": self.actor.scheduler.state_dict(),
                 "rng": fsdp_utils.rng_state()}
        if self.critic is not None:
            fsdp_utils.export_hf(self.critic.module, path / "critic", self.tokenizer, "critic")
            state["critic_optim"] = self.critic.optimizer.state_dict()
            state["critic_sched"] = self.critic.scheduler.state_dict()
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".worker_rank{self.rank}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path / f"worker_rank{self.rank}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, path: str) -> None:
        file = Path(path) / f"worker_rank{self.rank}.pt"
        if not file.is_file():
            raise FileNotFoundError(f"{file} missing: resume needs the same trainer.n_workers as the saved run")
        import pickle

        try:  # tensors and plain containers only: a checkpoint from elsewhere must not run code on load
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            from verl.utils.cli import UserError

            raise UserError(f"{file} holds objects other than tensors and plain values (a checkpoint written by "
                            f"another program or an older version?); refusing to unpickle it. Start the run afresh "
                            f"(trainer.resume=none). Detail: {str(exc).splitlines()[0]}") from None
        self.actor.optimizer.load_state_dict(state["actor_optim"])
        self.actor.scheduler.load_state_dict(state["actor_sched"])
        fsdp_utils.apply_optim_config(self.actor.optimizer, self.actor.scheduler, self.config.worker.actor.optim)
        if self.critic is not None:
            self.critic.optimizer.load_state_dict(state["critic_optim"])
            self.critic.scheduler.load_state_dict(state["critic_sched"])
            fsdp_utils.apply_optim_config(self.critic.optimizer, self.critic.scheduler, self.config.worker.critic.optim)
        if self.actor.cfg.offload_optimizer:
            fsdp_utils.move_optimizer_state(self.actor.optimizer, torch.device("cpu"))
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
        if getattr(self, "engine", None) == "vllm":
            self.rollout.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
