"""Checkpoints in the training dtype: the actor's HF export in worker.actor.dtype, the resume state (optimizer, fp32
master weights) only in the latest checkpoint by default, an exact resume, the size the disk planner is told, and
the temp folders of live processes spared."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_trainer_loop import REWARD_SRC, fit, tiny_overrides
from verl.utils.checkpoint import CheckpointManager, checkpoint_bytes, checkpoints_peak_bytes, run_checkpoint_bytes
from verl.utils.cli import UserError

BF16 = {"worker.actor.dtype": "bfloat16", "worker.ref.dtype": "bfloat16"}


@pytest.fixture(scope="module")
def reward(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt_reward") / "reward.py"
    path.write_text(REWARD_SRC)
    return f"{path}:letter_e"


def _tensor_bytes(ckpt) -> int:
    """Bytes of the tensor files (safetensors, worker state) of a checkpoint directory."""
    return sum(f.stat().st_size for f in ckpt.rglob("*") if f.suffix in (".safetensors", ".pt"))


def test_bf16_export_latest_keeps_resume_state_and_resume_is_exact(tiny_model_path, tmp_path, reward, shared_data):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    straight, _ = fit(tiny_overrides(tiny_model_path, tmp_path / "a", reward, **{**BF16, "trainer.total_steps": 3}))
    run = tmp_path / "b"
    first, _ = fit(tiny_overrides(tiny_model_path, run, reward, **{**BF16, "trainer.save_freq": 1,
                                                                    "trainer.save_limit": 5,
                                                                    "trainer.keep_resume_state": "true"}))
    old, latest = [p for _, p in CheckpointManager(run).complete()]
    # the HF export is in the training dtype and says so; the evaluator loads it
    weights = load_file(str(latest / "actor" / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert json.loads((latest / "actor" / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(latest / "actor", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    # resume state (fp32 master weights, optimizer) only in the latest checkpoint; the older one keeps its weights
    master = load_file(str(latest / "actor_master" / "model.safetensors"))
    assert {v.dtype for v in master.values()} == {torch.float32}
    assert CheckpointManager.resumable(latest) and not CheckpointManager.resumable(old)
    assert not (old / "actor_master").exists() and (old / "actor" / "model.safetensors").is_file()
    # the master weights carry what bf16 rounds away
    assert any(not torch.equal(master[k].bfloat16().float(), master[k]) for k in master)

    second, trainer = fit(tiny_overrides(tiny_model_path, run, reward, **{**BF16, "trainer.total_steps": 3,
                                                                          "trainer.save_limit": 5}))
    assert trainer.global_step == 3
    for key in ("actor/loss", "actor/kl_loss", "actor/grad_norm", "reward/mean"):
        for s, r in zip(straight, first + second):
            assert r[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (key, s["step"])
    # an explicit resume from a trimmed checkpoint says why it cannot
    with pytest.raises(UserError, match="keeps the weights only"):
        fit(tiny_overrides(tiny_model_path, run, reward, **{**BF16, "trainer.total_steps": 4, "trainer.save_limit": 5,
                                                            "trainer.resume": str(old)}))


def test_checkpoint_bytes_match_the_files(tiny_model_path, tmp_path, reward, shared_data):
    from transformers import AutoModelForCausalLM

    n_params = AutoModelForCausalLM.from_pretrained(tiny_model_path).num_parameters()
    run = tmp_path / "run"
    fit(tiny_overrides(tiny_model_path, run, reward, **{**BF16, "trainer.save_freq": 1,
                                                        "trainer.keep_resume_state": "true"}))
    old, latest = [p for _, p in CheckpointManager(run).complete()]
    full, trimmed = checkpoint_bytes(n_params, "bfloat16", True), checkpoint_bytes(n_params, "bfloat16", False)
    assert full == n_params * (2 + 4 + 8) and trimmed == n_params * 2
    slack = 200_000  # safetensors headers, scheduler and RNG state
    assert full <= _tensor_bytes(latest) <= full + slack
    assert trimmed <= _tensor_bytes(old) <= trimmed + slack
    assert checkpoints_peak_bytes(2, n_params=n_params, dtype="bfloat16") == 2 * full + trimmed


def test_a_finished_run_keeps_no_resume_state_and_says_so(tiny_model_path, tmp_path, reward, shared_data):
    """The last step's checkpoint is what the evaluator reads; a finished run is resumed only to extend it."""
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer

    run = tmp_path / "run"
    ov = {**BF16, "trainer.save_freq": 1, "trainer.save_limit": 5}
    fit(tiny_overrides(tiny_model_path, run, reward, **ov))
    (_, old), (_, final) = CheckpointManager(run).complete()
    assert (final / "actor" / "model.safetensors").is_file()
    assert not (final / "actor_master").exists() and not list(final.glob("worker_rank*.pt"))
    assert json.loads((final / "trainer_state.json").read_text())["resume_state"] is False
    assert not CheckpointManager.resumable(old)  # trimmed once the final one was complete: nothing to resume
    assert _tensor_bytes(final) == _tensor_bytes(old)
    # the same command again: nothing to train, no worker started
    trainer = RayPPOTrainer(load_config(None, tiny_overrides(tiny_model_path, run, reward, **ov)))
    try:
        assert trainer.wg is None and trainer.global_step == 2 and trainer.fit() == []
    finally:
        trainer.close()
    with pytest.raises(UserError, match=r"last step \(2\) of a finished run.*trainer.keep_resume_state=true"):
        fit(tiny_overrides(tiny_model_path, run, reward, **{**ov, "trainer.total_steps": 3}))


def test_run_checkpoint_bytes_by_hand():
    n = 1000
    full, trimmed = 14 * n, 2 * n  # bf16 export + fp32 master + two Adam moments; the export alone
    kw = {"n_params": n, "dtype": "bfloat16"}
    # the paper budget: 4 saves, 1 kept: two with resume state side by side while the next is written; the last
    # written without it
    assert run_checkpoint_bytes(4, 1, **kw) == (2 * full, trimmed)
    assert run_checkpoint_bytes(4, 1, keep_final=True, **kw) == (2 * full, full)
    assert run_checkpoint_bytes(1, 1, **kw) == (trimmed, trimmed)
    # every save kept: older ones trimmed (latest) or not (all)
    assert run_checkpoint_bytes(3, 0, **kw) == (full + full, 3 * trimmed)
    assert run_checkpoint_bytes(3, 0, "all", **kw) == (2 * full + trimmed, 2 * full + trimmed)
    assert run_checkpoint_bytes(3, 2, **kw) == (full + full, 2 * trimmed)


def test_checkpoint_bytes_formula():
    n = 8_030_261_248  # Llama-3-8B
    assert checkpoint_bytes(n, "bfloat16", with_optimizer=False) == 2 * n
    assert checkpoint_bytes(n, "bfloat16", with_optimizer=True) == 14 * n  # export + fp32 master + 2 Adam moments
    assert checkpoint_bytes(n, "float32", with_optimizer=True) == 12 * n  # the export is the master
    lora = 41_943_040
    assert checkpoint_bytes(n, "bfloat16", True, lora_params=lora) == 2 * n + 4 * lora + 8 * lora
    assert checkpoint_bytes(n, "bfloat16", True, critic_params=n) == 14 * n + 12 * n
    assert checkpoints_peak_bytes(3, "all", n_params=n) == 4 * 14 * n
    with pytest.raises(ValueError, match="unknown dtype"):
        checkpoint_bytes(n, "int8")


def test_resume_state_all_keeps_every_checkpoint_resumable(tmp_path):
    mgr = CheckpointManager(tmp_path, save_limit=0, resume_state="all")
    keep = CheckpointManager(tmp_path / "latest", save_limit=0)
    for m in (mgr, keep):
        for step in (1, 2, 3):
            tmp = m.begin(step)
            (tmp / "worker_rank0.pt").write_bytes(b"x")
            (tmp / "actor_master").mkdir()
            (tmp / "actor").mkdir()
            m.commit(tmp, step, {"step": step})
    assert all(CheckpointManager.resumable(p) for _, p in mgr.complete())
    assert [CheckpointManager.resumable(p) for _, p in keep.complete()] == [False, False, True]
    assert all((p / "actor").is_dir() for _, p in keep.complete())


def test_checkpoint_begin_spares_a_live_processes_temp_dir(tmp_path):
    mgr = CheckpointManager(tmp_path)
    root = tmp_path / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = root / f".tmp-global_step_3-{os.getppid()}"  # our parent process is alive
    stale = root / f".tmp-global_step_3-{dead.pid}"
    legacy = root / ".tmp-global_step_2"
    for d in (live, stale, legacy):
        d.mkdir(parents=True)
    tmp = mgr.begin(4)
    assert live.is_dir() and not stale.exists() and not legacy.exists()
    assert tmp.name == f".tmp-global_step_4-{os.getpid()}"
