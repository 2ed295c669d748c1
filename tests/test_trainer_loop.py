"""ReBO trainer end to end on a tiny random model (CPU, in-process backend): GRPO, PPO with a critic, KL at step 0,
exact resume, resume past a half-written checkpoint, a resume refused on a changed config or data, NaN handling."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from verl.config import load_config
from verl.trainer.ray_trainer import RayPPOTrainer, TrainingDivergedError, config_changes
from verl.utils.checkpoint import MARKER, CheckpointManager
from verl.utils.cli import ConfigError

# a reward that varies between rollouts of one prompt, so GRPO advantages (and gradients) are non-zero
REWARD_SRC = textwrap.dedent('''
    CALLS = [0]
    def letter_e(response, prompt, solution, **extra):
        return {"score": sum(c in "aeiou" for c in response) / max(1, len(response)), "length": float(len(response))}
    def nan_after_first_step(response, prompt, solution, **extra):
        CALLS[0] += 1
        return {"score": float("nan") if CALLS[0] > 4 else float(len(response) % 3)}
''')


def tiny_overrides(model_path: str, run_dir, reward: str, **extra) -> list[str]:
    base = {
        "worker.actor.model_path": model_path, "data.rollout_batch_size": 2, "worker.actor.global_batch_size": 2,
        "worker.rollout.n": 2, "data.max_response_length": 6, "data.max_prompt_length": 128, "data.val_files": "null",
        "trainer.total_steps": 2, "trainer.save_dir": str(run_dir), "trainer.save_freq": 0, "trainer.val_freq": 0,
        "worker.actor.dtype": "float32", "worker.ref.dtype": "float32", "worker.critic.dtype": "float32",
        "worker.actor.gradient_checkpointing": "false", "worker.critic.gradient_checkpointing": "false",
        "worker.actor.micro_batch_size_per_device_for_update": 2,
        "worker.critic.micro_batch_size_per_device_for_update": 2,
        "worker.actor.optim.lr": 1e-3, "worker.rollout.name": "hf", "trainer.backend": "local", "trainer.device": "cpu",
        "trainer.progress_bar": "false", "worker.reward.reward_fn": reward, "trainer.logger": "[jsonl]",
        "trainer.log_generations": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward") / "toy_reward.py"
    path.write_text(REWARD_SRC)
    return str(path)


def fit(overrides: list[str]):
    trainer = RayPPOTrainer(load_config(None, overrides))
    try:
        return trainer.fit(), trainer
    finally:
        trainer.close()


def test_grpo_local_kl_zero_at_start_and_validation(tiny_model_path, tmp_path, reward_file, shared_data):
    run = tmp_path / "run"
    ov = tiny_overrides(tiny_model_path, run, f"{reward_file}:letter_e",
                        **{"data.val_files": "rwku:1_Stephen_King:rl_rejection_eval_target", "data.val_max_samples": 2,
                           "data.val_batch_size": 2, "trainer.val_at_end": "true"})
    history, _ = fit(ov)
    assert len(history) == 2
    assert history[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-7)  # actor == reference before any update
    assert history[1]["actor/kl_loss"] > 0
    for key in ("timing/gen", "timing/reward", "timing/ref", "timing/adv", "timing/update_actor", "timing/save",
                "timing/validation", "perf/rollout_tokens_per_s", "reward/mean", "actor/pg_loss", "actor/grad_norm"):
        assert key in history[1], key
    assert "timing/old_log_prob" not in history[0]  # one update per step: old = current, no extra forward
    assert "val/forget_rougeL" in history[1] and "val/neighbor_reward" in history[1]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["data/train_rows"] == 1200 and lines[-1]["step"] == 2
    assert (run / "generations.jsonl").is_file() and (run / "config.yaml").is_file()
    assert (run / "curves.png").stat().st_size > 0  # drawn when the run closes
    assert (run / "curves.md").read_text().count("\n| ") == 2  # one table row per training step
    info = json.loads((run / "run_info.json").read_text())
    assert len(info["data_sha256"]["train"]) == 64 and info["seed"] == 1
    ckpt = CheckpointManager(run).latest()
    assert ckpt.name == "global_step_2" and (ckpt / "actor" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt / "actor")  # HF-loadable export


def test_resume_matches_straight_run_and_skips_half_written_checkpoint(tiny_model_path, tmp_path, reward_file,
                                                                      shared_data):
    reward = f"{reward_file}:letter_e"
    straight, _ = fit(tiny_overrides(tiny_model_path, tmp_path / "a", reward, **{"trainer.total_steps": 4}))
    run_b = tmp_path / "b"
    first, _ = fit(tiny_overrides(tiny_model_path, run_b, reward, **{"trainer.save_freq": 1, "trainer.save_limit": 5,
                                                                     "trainer.keep_resume_state": "true"}))
    # simulate a run killed while saving step 3: a leftover temp dir and a step dir without the completion marker
    ckpts = run_b / "checkpoints"
    (ckpts / ".tmp-global_step_3" / "actor").mkdir(parents=True)
    (ckpts / "global_step_3").mkdir()
    (ckpts / "global_step_3" / "trainer_state.json").write_text("{}")
    assert CheckpointManager(run_b).latest().name == "global_step_2"
    second, trainer = fit(tiny_overrides(tiny_model_path, run_b, reward,
                                         **{"trainer.total_steps": 4, "trainer.save_limit": 5}))
    assert trainer.global_step == 4 and [m["step"] for m in second] == [3, 4]
    resumed = first + second
    for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "reward/mean"):
        for s, r in zip(straight, resumed):
            assert r[key] == pytest.approx(s[key], rel=1e-5, abs=1e-6), (key, s["step"])
    assert straight[3]["actor/grad_norm"] > 0
    assert not (ckpts / ".tmp-global_step_3").exists()
    assert [s for s, _ in CheckpointManager(run_b).complete()] == [1, 2, 4]


def test_ppo_trains_the_critic(tiny_model_path, tmp_path, reward_file, shared_data):
    ov = tiny_overrides(tiny_model_path, tmp_path / "ppo", f"{reward_file}:letter_e",
                        **{"algorithm.adv_estimator": "gae", "algorithm.lam": 0.95, "worker.critic.optim.lr": 1e-2,
                           "trainer.total_steps": 1, "trainer.keep_resume_state": "true"})
    trainer = RayPPOTrainer(load_config(None, ov))
    try:
        before = trainer.wg.param_norms()
        history = trainer.fit()
        after = trainer.wg.param_norms()
    finally:
        trainer.close()
    m = history[0]
    assert math.isfinite(m["critic/vf_loss"]) and "timing/values" in m and "timing/update_critic" in m
    assert abs(after["critic"] - before["critic"]) > 1e-6
    assert (tmp_path / "ppo" / "checkpoints" / "global_step_1" / "critic" / "value_head.safetensors").is_file()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_path, tmp_path, reward_file, shared_data):
    ov = tiny_overrides(tiny_model_path, tmp_path / "nan", f"{reward_file}:nan_after_first_step",
                        **{"trainer.save_freq": 1, "trainer.total_steps": 3})
    trainer = RayPPOTrainer(load_config(None, ov))
    try:
        with pytest.raises(TrainingDivergedError, match="non-finite"):
            trainer.fit()
    finally:
        trainer.close()
    done = CheckpointManager(tmp_path / "nan").complete()
    assert [s for s, _ in done] == [1] and (done[0][1] / MARKER).is_file()


def test_config_changes_ignores_only_the_step_budget_and_bookkeeping():
    old = {"trainer": {"total_steps": 10, "save_freq": 5, "seed": 1}, "worker": {"actor": {"optim": {"lr": 1e-6}}},
           "data": {"train_files": "a.json", "betas": [0.9, 0.99]}}
    new = {"trainer": {"total_steps": 20, "save_freq": 1, "seed": 1}, "worker": {"actor": {"optim": {"lr": 2e-6}}},
           "data": {"train_files": "b.json", "betas": (0.9, 0.99)}}
    assert config_changes(old, new) == ["data.train_files: 'a.json' -> 'b.json'",
                                        "worker.actor.optim.lr: 1e-06 -> 2e-06"]


def test_resume_refuses_changed_config_and_data_and_records_an_allowed_change(tiny_model_path, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    train = tmp_path / "train.json"
    rows = [{"prompt": f"Question {i}?", "solution": ["<normal>", f"answer {i}"]} for i in range(4)]
    train.write_text(json.dumps(rows))
    run = tmp_path / "run"

    def overrides(**kw):
        return tiny_overrides(tiny_model_path, run, f"{reward}:letter_e",
                              **{"data.train_files": str(train), "trainer.save_freq": 1, "trainer.save_limit": 5,
                                 "data.max_response_length": 3, "trainer.keep_resume_state": "true", **kw})

    def fit(ov):
        trainer = RayPPOTrainer(load_config(None, ov))
        try:
            return trainer.fit()
        finally:
            trainer.close()

    fit(overrides(**{"trainer.total_steps": 1}))
    info0 = json.loads((run / "run_info.json").read_text())
    # a run killed after logging step 2 but before its checkpoint completed: the resume redoes step 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "actor/lr": 1e-3}) + "\n" + '{"step": 3, "act')  # and a torn line
    assert CheckpointManager(run).latest().name == "global_step_1"
    with pytest.raises(ConfigError, match=r"worker.actor.optim.lr: 0.001 -> 0.002.*allow_config_change=true"):
        RayPPOTrainer(load_config(None, overrides(**{"worker.actor.optim.lr": 2e-3})))
    train.write_text(json.dumps(rows[::-1]))  # same path, other content
    with pytest.raises(ConfigError, match=r"data train file content: sha256"):
        RayPPOTrainer(load_config(None, overrides()))
    assert json.loads((run / "run_info.json").read_text()) == info0  # refused resumes touch nothing
    history = fit(overrides(**{"worker.actor.optim.lr": 2e-3, "trainer.allow_config_change": "true"}))
    assert [h["step"] for h in history] == [2]
    assert history[0]["actor/lr"] == pytest.approx(2e-3)  # the new lr is the one used, not the checkpoint's
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # step 2 of the killed run was dropped, not repeated
    info = json.loads((run / "run_info.json").read_text())
    assert info["created"] == info0["created"] and info["data_sha256"] == info0["data_sha256"]  # original kept
    (rec,) = info["resumes"]
    assert rec["step"] == 1 and rec["allow_config_change"] is True
    assert any(c.startswith("worker.actor.optim.lr") for c in rec["config_changes"])
    assert any(c.startswith("data train file content") for c in rec["config_changes"])
