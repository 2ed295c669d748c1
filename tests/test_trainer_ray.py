"""The same trainer on Ray: 2 CPU workers, FSDP full-shard over gloo (skips cleanly when Ray cannot start)."""

from __future__ import annotations

import pytest

from verl.config import load_config


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
        "trainer.logger": "[jsonl]",
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
