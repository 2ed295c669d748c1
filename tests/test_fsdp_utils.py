"""``fsdp_utils.gathered_units`` and ``Actor.rollout_weights`` on two FULL_SHARD ranks (gloo): the weights a vLLM sync
streams are the full state dict's (LoRA merged as peft merges), gathered one FSDP unit at a time. Worker state
loaded with ``weights_only`` (a foreign pickle refused), and the config's optimizer settings put back after loading
an optimizer state."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verl.utils.cli import UserError

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[1])
    from verl.config import ActorConfig
    from verl.workers import fsdp_utils
    from verl.workers.actor import Actor

    fsdp_utils.init_distributed(torch.device("cpu"), "gloo")
    for rank_lora in (0, 4):
        cfg = ActorConfig(dtype="float32", gradient_checkpointing=False)
        cfg.lora.rank, cfg.lora.alpha = rank_lora, 8
        actor = Actor(cfg, sys.argv[2], torch.device("cpu"), 2, 1.0)
        torch.manual_seed(0)
        with torch.no_grad():  # adapters that change the weights (B starts at 0)
            for n, p in actor.module.named_parameters():
                if "lora_B" in n:
                    p.add_(torch.randn_like(p) * 0.1)
        layers = actor.inner.get_base_model().model.layers if rank_lora else actor.inner.model.layers
        seen = []

        def convert(prefix, unit, named):
            # layers whose weights are full right now (a sharded view holds half of them)
            n = sum(1 for layer in layers for name, p in layer.named_parameters() if "up_proj" in name
                    and "lora_" not in name and p.dim() == 2)
            seen.append((prefix, n))
            return [(k, v.detach().clone()) for k, v in named]

        list(fsdp_utils.gathered_units(actor.module, convert))
        ref = actor.hf_state_dict()
        got = actor.rollout_state_dict("float32")
        bf16 = actor.rollout_state_dict("bfloat16")
        ok = set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
        ok_bf16 = all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], ref[k].bfloat16()) for k in ref)
        print(f"lora={rank_lora} equal={ok} bf16={ok_bf16} seen={seen}", flush=True)
""")


def test_rollout_weights_two_full_shard_ranks_one_unit_at_a_time(tiny_model_path, tmp_path):
    from verl.utils.net import free_port

    script = tmp_path / "stream.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(REPO), tiny_model_path], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    for out, _ in outs:
        lines = [x for x in out.splitlines() if x.startswith("lora=")]
        assert len(lines) == 2
        for line in lines:
            assert "equal=True bf16=True" in line, line
            # the root unit alone, then each decoder layer alone (2 layers in the tiny model)
            assert line.endswith("seen=[('', 0), ('model.layers.0', 1), ('model.layers.1', 1)]") or \
                line.endswith("seen=[('', 0), ('base_model.model.model.layers.0', 1), "
                              "('base_model.model.model.layers.1', 1)]"), line


class _Evil:  # any non-tensor object: unpickling it could run code
    def __reduce__(self):
        return (print, ("code ran at load time",))


def test_worker_state_loads_with_weights_only_and_foreign_pickles_are_refused(tmp_path):
    import random

    import numpy as np
    import torch

    from verl.workers import fsdp_utils
    from verl.workers.fsdp_workers import FSDPWorker

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = fsdp_utils.rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)  # the saved state needs no unpickling of objects
    fsdp_utils.set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected

    torch.save({"actor_optim": _Evil()}, tmp_path / "worker_rank0.pt")
    fake = type("W", (), {"rank": 0})()
    with pytest.raises(UserError, match="refusing to unpickle"):
        FSDPWorker.load_checkpoint(fake, str(tmp_path))


def test_changed_lr_applies_after_loading_optimizer_state():
    import torch

    from verl.config import OptimConfig
    from verl.workers import optim
    from verl.workers.fsdp_utils import apply_optim_config

    module = torch.nn.Linear(2, 2)
    opt, sched = optim.build_optimizer(module, OptimConfig(lr=1e-3, lr_warmup_steps=4))
    sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2, sched2 = optim.build_optimizer(module, OptimConfig(lr=5e-3, lr_warmup_steps=4))
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)  # the checkpoint's lr came back
    apply_optim_config(opt2, sched2, OptimConfig(lr=5e-3, lr_warmup_steps=4))
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-3 * 2 / 4)
    assert sched2.get_last_lr()[0] == pytest.approx(2.5e-3)
