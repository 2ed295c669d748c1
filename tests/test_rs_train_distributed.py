"""RS.train with two processes on CPU (gloo): the frozen reference under FSDP's CPU-RAM-efficient loading, the
injection scores after a sharded run, the global token mean whatever the split into processes.

accelerate runs FSDP only with GPUs. FSDP_CPU_DRIVER runs RS.train under FSDP1 on CPU: it makes accelerate's state
report FSDP with a plugin whose sync_module_states is set after accelerate's CPU check, lifts torch FSDP's GPU-only
checks (the compute device of a CPU module; sync_module_states on CPU tensors, which gloo broadcasts) and the rank-0
CPU offload of full state dicts (a SIGSEGV on CPU), and lets transformers zero the weights of every rank but 0
while FSDP_CPU_RAM_EFFICIENT_LOADING is on, as it does under ``accelerate launch`` with RS/configs/accelerate_fsdp.yaml.
It also writes every rank's loss parts to $RS_PARTS_DIR/rank<r>.jsonl.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

FSDP_CPU_DRIVER = r'''
import json
import os
import sys

import accelerate.state as st
import torch
import torch.distributed.fsdp as fsdp
import torch.distributed.fsdp._init_utils as fsdp_init
import transformers.modeling_utils as mu
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = st.AcceleratorState.__init__


def _fsdp_state(self, *a, **kw):
    _init(self, *a, **kw)
    if self.distributed_type != DistributedType.FSDP:
        loading = os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)  # the plugin refuses it on CPU
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=1, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["LlamaDecoderLayer"], use_orig_params=True, sync_module_states=False,
            state_dict_type="FULL_STATE_DICT")
        if loading is not None:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = loading
        plugin.sync_module_states = True
        self.fsdp_plugin, self.distributed_type = plugin, DistributedType.FSDP


st.AcceleratorState.__init__ = _fsdp_state
fsdp_init._get_compute_device = lambda *a, **k: torch.device("cpu")
fsdp_init._check_module_states_for_sync_module_states = lambda states: None
_FullConfig = fsdp.FullStateDictConfig
fsdp.FullStateDictConfig = lambda **kw: _FullConfig()
mu.is_fsdp_enabled = lambda: (os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING") == "true"
                              and torch.distributed.is_initialized())

import RS.train as rs_train  # noqa: E402

_compute_loss = rs_train.compute_loss


def _recorded(*a, **kw):
    parts = _compute_loss(*a, **kw)
    if os.environ.get("RS_PARTS_DIR"):
        with open(os.path.join(os.environ["RS_PARTS_DIR"], f"rank{os.environ['RANK']}.jsonl"), "a") as f:
            f.write(json.dumps({k: v.item() for k, v in parts.items()}) + "\n")
    return parts


rs_train.compute_loss = _recorded
rs_train.main(sys.argv[1:])
'''


def _rs_flags(model: str, target: str, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", model, "--target", target, "--output_dir", str(out), "--overwrite_output_dir",
            "--cutoff_len", "48", "--per_device_train_batch_size", "2", "--max_steps", "1", "--warmup_steps", "0",
            "--plot_loss", "false", "--num_threads", "1", "--save_strategy", "no", "--logging_steps", "1",
            "--eval_probes", "false", "--bf16", "false", *extra]  # fp32: the checks compare exact values


def _run(cmd: list[str], tmp_path: Path, timeout: int = 150, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    res = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


def _torchrun(tmp_path: Path, script: list[str], timeout: int = 150, **env: str) -> subprocess.CompletedProcess:
    from verl.utils.net import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *script]
    return _run(cmd, tmp_path, timeout, **env)


def _fsdp_cpu(tmp_path: Path, flags: list[str], timeout: int = 150, **env: str) -> subprocess.CompletedProcess:
    driver = tmp_path / "fsdp_cpu_driver.py"
    driver.write_text(FSDP_CPU_DRIVER)
    return _torchrun(tmp_path, [str(driver), *flags], timeout, **env)


def _first_row(out: Path) -> dict:
    return next(r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r)


def test_reference_is_the_original_on_every_rank_under_fsdp_ram_efficient_loading(tiny_model_path, target_name,
                                                                                   tmp_path):
    """npo_klr under FSDP with CPU-RAM-efficient loading: transformers loads zeros on rank 1 and only FSDP's
    broadcast fills them. At step 1 the policy is the reference, so on every rank NPO's loss is 2/beta log 2 and
    the retain KL is 0 (a zero reference on rank 1 gave 14.08 and 0.013 there)."""
    parts = tmp_path / "parts"
    parts.mkdir()
    flags = _rs_flags(tiny_model_path, target_name, tmp_path / "npo", "--stage", "npo_klr", "--max_samples", "4",
                      "--retain_num_targets", "1", "--npo_beta", "0.1")
    _fsdp_cpu(tmp_path, flags, RS_PARTS_DIR=str(parts), FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    for rank in (0, 1):
        first = json.loads((parts / f"rank{rank}.jsonl").read_text().splitlines()[0])
        assert first["forget"] == pytest.approx(2 / 0.1 * math.log(2), abs=1e-4), rank
        assert first["retain"] == pytest.approx(0.0, abs=1e-6), rank


def test_reference_loaded_whole_when_not_wrapped(tiny_model_path, tmp_path):
    """With the launcher's loading flags (ACCELERATE_USE_FSDP, FSDP_CPU_RAM_EFFICIENT_LOADING) but no FSDP wrap of
    the reference, every rank still reads the original weights (RAM-efficient loading alone leaves rank 1's weights
    empty, for an FSDP wrap to fill)."""
    script = tmp_path / "load_ref.py"
    script.write_text("import os\nimport torch.distributed as dist\n\nfrom RS.train import _load_ref\n\n"
                      "dist.init_process_group('gloo')\n"
                      f"ref = _load_ref({tiny_model_path!r})\n"
                      "total = sum(p.detach().abs().sum() for p in ref.parameters())\n"
                      "print('SUM', os.environ['RANK'], float(total))\n")
    res = _torchrun(tmp_path, [str(script)], ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    sums = dict(line.split()[1:] for line in res.stdout.splitlines() if line.startswith("SUM"))
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    want = float(sum(p.detach().abs().sum() for p in whole.parameters()))
    assert sorted(sums) == ["0", "1"]
    assert all(float(v) == pytest.approx(want, rel=1e-6) for v in sums.values()), sums


def test_inject_on_two_sharded_processes_scores_the_saved_model(tiny_model_path, target_name, tmp_path):
    """Stage inject under FSDP with two processes: the scores after injection come from the main process's plain
    copy of the saved model while the other waits (generating through FSDP units on the main process alone fails:
    "'weight' must be 2-D" on a CPU, a hang on GPUs), and they are the saved model's own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data.rwku import resolve_target
    from RS.quick_eval import score_probes

    out = tmp_path / "inject"
    flags = _rs_flags(tiny_model_path, target_name, out, "--stage", "inject", "--max_samples", "4",
                      "--inject_passages", "false", "--inject_probe_limit", "1") + ["--eval_probes", "true"]
    _fsdp_cpu(tmp_path, flags, timeout=120)
    res = json.loads((out / "inject_eval.json").read_text())[target_name]
    assert set(res["before"]) == set(res["after"]) == {"forget_FB", "forget_QA", "neighbor_FB", "neighbor_QA"}
    assert (out / "inject_eval_before.json").is_file() and (out / "DONE").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    mine = score_probes(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), tok,
                        resolve_target(target_name), limit=1)
    assert mine["generations"] == res["generations_after"]


@pytest.fixture(scope="module")
def one_process_step(tiny_model_path, target_name, tmp_path_factory):
    """Step 1 of a one-process run: 8 examples, total batch 8 = per-device 2 x accumulation 4."""
    from RS.args import parse_args
    from RS.train import train

    out = tmp_path_factory.mktemp("one") / "rs"
    train(parse_args(_rs_flags(tiny_model_path, target_name, out, "--max_samples", "8", "--total_batch_size", "8",
                               "--loss_reduction", "global_token_mean")))
    return _first_row(out)


@pytest.mark.parametrize("backend", ["fsdp", "ddp"])
def test_global_token_mean_gives_one_process_step_on_two(backend, one_process_step, tiny_model_path, target_name,
                                                         tmp_path):
    """--loss_reduction global_token_mean on 2 processes (per-device 2 x accumulation 2): the same step-1 loss and
    gradient norm as one process with accumulation 4, under FSDP with a gradient reduce per micro-step
    (--sync_each_batch) and under DDP launched by accelerate with RS/configs/accelerate_cpu_2proc.yaml."""
    from verl.utils.net import free_port

    out = tmp_path / "two"
    flags = _rs_flags(tiny_model_path, target_name, out, "--max_samples", "8", "--total_batch_size", "8",
                      "--loss_reduction", "global_token_mean", "--sync_each_batch", "true")
    if backend == "fsdp":
        _fsdp_cpu(tmp_path, flags)
    else:
        _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "RS/configs/accelerate_cpu_2proc.yaml"), "--main_process_port", str(free_port()),
              "-m", "RS.train", *flags], tmp_path)
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["gradient_accumulation_steps"] == 2 and info["sync_each_batch"]
    row = _first_row(out)
    assert row["loss"] == pytest.approx(one_process_step["loss"], rel=1e-5)
    assert row["grad_norm"] == pytest.approx(one_process_step["grad_norm"], rel=1e-4)
