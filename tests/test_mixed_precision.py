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


# ----------------------------------------------------------------------------------------- autocast: auto
@pytest.fixture
def bf16_units(monkeypatch):
    """Set what the CPU flags say (True: AMX / AVX512-BF16, False: neither, None: unknown) and hide any GPU."""
    import torch

    from verl.workers import forward

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def set_units(value):
        monkeypatch.setattr(forward, "cpu_bf16_units", lambda: value)

    return set_units


@pytest.mark.parametrize("units, expected", [(True, "bf16"), (False, "none"), (None, "none")])
def test_auto_autocast_follows_the_cpu_flags(bf16_units, units, expected):
    import torch

    from verl.workers.forward import autocast_context, resolve_autocast

    bf16_units(units)
    assert resolve_autocast("auto", "cpu")[0] == expected
    assert resolve_autocast("auto", "cuda")[0] == "bf16"
    with autocast_context(torch.device("cpu"), "auto"):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


@pytest.mark.parametrize("units", [True, False])
def test_explicit_autocast_wins_over_the_cpu_flags(bf16_units, units):
    from verl.workers.forward import resolve_autocast

    bf16_units(units)
    assert resolve_autocast("none", "cpu") == ("none", "set explicitly")
    assert resolve_autocast("bf16", "cpu") == ("bf16", "set explicitly")
    with pytest.raises(ValueError, match="choose auto, bf16 or none"):
        resolve_autocast("fp16", "cpu")


def test_the_run_log_names_the_precision_and_why(bf16_units, caplog):
    import logging

    import torch

    from verl.workers import forward

    bf16_units(True)
    forward._announced.clear()
    with caplog.at_level(logging.INFO, logger="verl.workers.forward"):
        for _ in range(2):
            with forward.autocast_context(torch.device("cpu"), "auto"):
                pass
    lines = [r.getMessage() for r in caplog.records if "precision" in r.getMessage()]
    assert lines == ["precision of model forward passes: bf16 autocast over the weights' dtype (auto: this CPU has "
                     "bf16 matrix units (AMX / AVX512-BF16))"]


def test_rebo_roles_take_auto_and_explicit_values():
    from verl.config import load_config

    cfg = load_config(None, [])
    assert [getattr(cfg.worker, r).autocast for r in ("actor", "ref", "critic")] == ["none"] * 3
    assert load_config(None, ["worker.actor.autocast=auto"]).worker.actor.autocast == "auto"
    assert load_config(None, ["worker.critic.autocast=bf16"]).worker.critic.autocast == "bf16"
    with pytest.raises(ValueError, match="worker.ref.autocast='fp16'"):
        load_config(None, ["worker.ref.autocast=fp16"])


@pytest.mark.parametrize("units, flags, bf16, save", [
    (True, [], True, "float32"),           # auto on a CPU with bf16 units: bf16 compute, checkpoints stay fp32
    (False, [], False, "auto"),            # auto elsewhere: fp32
    (True, ["--bf16", "auto"], True, "float32"),
    (True, ["--bf16", "false"], False, "auto"),   # an explicit value wins
    (False, ["--bf16"], True, "auto"),     # explicit bf16 keeps its bf16 checkpoints
    (True, ["--save_dtype", "bfloat16"], True, "bfloat16"),
])
def test_rs_bf16_auto_resolves_from_the_cpu_flags(bf16_units, units, flags, bf16, save):
    from RS.args import parse_args, save_dtype

    bf16_units(units)
    args = parse_args(["--target", "1", "--output_dir", "o", *flags])
    assert args.bf16 is bf16 and args.save_dtype == save
    assert str(save_dtype(args)) == "torch." + {"auto": "bfloat16" if bf16 else "float32"}.get(save, save)


def test_rs_yaml_bf16_wins_over_auto(bf16_units, tmp_path):
    from RS.args import parse_args

    bf16_units(True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bf16: false\n")
    assert parse_args(["--config", str(cfg), "--target", "1", "--output_dir", "o"]).bf16 is False
    cfg.write_text("bf16: auto\n")
    assert parse_args(["--config", str(cfg), "--target", "1", "--output_dir", "o"]).bf16 is True
