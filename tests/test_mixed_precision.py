"""bf16 autocast with fp32 master weights end to end: a ReBO step (actor + reference) and an RS.train run (accelerate
``--bf16``) agree with fp32 within bf16 tolerance."""

import json

import pytest

REWARD_SRC = '''
def vowels(response, prompt, solution, **extra):
    return {"score": sum(c in "aeiou" for c in response) / max(1, len(response))}
'''


@pytest.mark.slow
def test_trainer_step_with_bf16_autocast_matches_fp32(tiny_model_path, tmp_path, shared_data):
    """One ReBO step with bf16 autocast on the actor and the reference: same rollouts (HF generate stays fp32),
    losses and gradient norm within bf16 tolerance of the fp32 step."""
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer

    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    runs = {}
    for mode in ("none", "bf16"):
        ov = {"worker.actor.model_path": tiny_model_path, "data.rollout_batch_size": 2,
              "worker.actor.global_batch_size": 2, "worker.rollout.n": 4, "data.max_response_length": 6,
              "data.val_files": "null", "trainer.total_steps": 1, "trainer.save_dir": str(tmp_path / mode),
              "trainer.save_freq": 0, "worker.actor.dtype": "float32", "worker.ref.dtype": "float32",
              "worker.actor.gradient_checkpointing": "false", "worker.actor.micro_batch_size_per_device_for_update": 4,
              "worker.rollout.name": "hf", "trainer.backend": "local", "trainer.device": "cpu",
              "trainer.progress_bar": "false", "worker.reward.reward_fn": f"{reward}:vowels", "trainer.logger": "[]",
              "worker.actor.autocast": mode, "worker.ref.autocast": mode}
        trainer = RayPPOTrainer(load_config(None, [f"{k}={v}" for k, v in ov.items()]))
        try:
            runs[mode] = trainer.fit()[0]
        finally:
            trainer.close()
    fp32, bf16 = runs["none"], runs["bf16"]
    assert bf16["reward/mean"] == fp32["reward/mean"]  # the rollouts are the same
    assert bf16["actor/pg_loss"] == pytest.approx(fp32["actor/pg_loss"], abs=1e-6)  # ratio 1: advantages only
    assert abs(bf16["actor/kl_loss"]) < 1e-3 and fp32["actor/kl_loss"] == pytest.approx(0.0, abs=1e-7)
    assert bf16["actor/entropy"] == pytest.approx(fp32["actor/entropy"], rel=2e-2)
    assert bf16["actor/grad_norm"] == pytest.approx(fp32["actor/grad_norm"], rel=0.1)


@pytest.mark.slow
def test_rs_train_bf16_is_autocast_with_fp32_weights(tiny_model_path, target_name, tmp_path):
    """RS.train --bf16 on CPU: accelerate autocasts the policy (weights stay fp32, saved bf16), the NPO reference
    runs in bf16; the losses track the fp32 run's."""
    import torch
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    from RS.args import TrainArgs
    from RS.train import train

    losses = {}
    for bf16 in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)  # mixed precision is fixed once per process state
        args = TrainArgs(model_name_or_path=tiny_model_path, target=target_name, output_dir=str(tmp_path / str(bf16)),
                         stage="npo", max_samples=4, cutoff_len=64, per_device_train_batch_size=2, learning_rate=1e-4,
                         warmup_steps=0, num_train_epochs=1, logging_steps=1, plot_loss=False, eval_probes=False,
                         overwrite_output_dir=True, bf16=bf16, seed=0)
        try:
            out = train(args)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        losses[bf16] = [r["loss"] for r in rows if "loss" in r and "step" in r]
        weights = load_file(str(out / "model.safetensors"))
        assert all(v.dtype == (torch.bfloat16 if bf16 else torch.float32) for v in weights.values())  # saved as trained
    assert len(losses[True]) == len(losses[False]) >= 2
    assert losses[True] == pytest.approx(losses[False], rel=5e-2, abs=1e-3)
