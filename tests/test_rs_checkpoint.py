"""RS.checkpoint: checkpoints in the training dtype, the epoch-checkpoint save limit, disk sizes for planning."""

import json
from pathlib import Path

import pytest
import torch

from RS.args import TrainArgs, parse_args, save_dtype
from RS.checkpoint import METADATA_BYTES, checkpoint_bytes, kept_epochs, prune_epoch_checkpoints, run_disk_bytes


def _run_args(model, target, out, **kw) -> TrainArgs:
    base = dict(model_name_or_path=model, target=target, output_dir=str(out), max_samples=4, cutoff_len=48,
                per_device_train_batch_size=2, learning_rate=1e-3, warmup_steps=0, num_train_epochs=1,
                logging_steps=1, plot_loss=False, eval_probes=False, overwrite_output_dir=True)
    base.update(kw)
    return TrainArgs(**base)


def _saved_dtypes(folder: Path) -> set:
    from safetensors.torch import load_file

    return {v.dtype for v in load_file(str(folder / "model.safetensors")).values()}


def test_bf16_runs_save_bf16_checkpoints_that_load_as_bf16(tiny_model_path, target_name, tmp_path):
    """--bf16 trains fp32 master weights under autocast; the epoch checkpoints and the final model are written in
    bf16 (half the bytes), with config.json saying so; --save_dtype float32 keeps the fp32 files."""
    from accelerate.state import AcceleratorState
    from transformers import AutoConfig, AutoModelForCausalLM

    from RS.train import train

    AcceleratorState._reset_state(reset_partial_state=True)  # mixed precision is fixed once per process state
    try:
        out = train(_run_args(tiny_model_path, target_name, tmp_path / "bf16", bf16=True, max_steps=1))
        fp32 = train(_run_args(tiny_model_path, target_name, tmp_path / "fp32", bf16=True, max_steps=1,
                               save_dtype="float32", save_strategy="no"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    for folder in (out, out / "checkpoint-epoch-1"):
        assert _saved_dtypes(folder) == {torch.bfloat16}, folder
        assert AutoConfig.from_pretrained(folder).dtype == torch.bfloat16
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert _saved_dtypes(fp32) == {torch.float32}
    ratio = (out / "model.safetensors").stat().st_size / (fp32 / "model.safetensors").stat().st_size
    assert 0.49 < ratio < 0.52
    assert save_dtype(TrainArgs(target="1", output_dir="o")) == torch.float32  # CPU default: fp32 as trained


def test_save_total_limit_keeps_the_newest_and_the_epoch_rebo_starts_from(tiny_model_path, target_name, tmp_path):
    """3 epochs, --save_total_limit 1: epoch 1 is removed once epoch 2 is written; epoch 2 (--save_keep_epochs)
    stays beside epoch 3."""
    from RS.train import train

    out = train(_run_args(tiny_model_path, target_name, tmp_path / "lim", num_train_epochs=3, save_total_limit=1,
                          max_samples=2))
    assert sorted(p.name for p in out.glob("checkpoint-epoch-*")) == ["checkpoint-epoch-2", "checkpoint-epoch-3"]
    assert json.loads((out / "checkpoint-epoch-2" / "trainer_state.json").read_text())["epoch"] == 2
    assert kept_epochs(3, 1, {2}) == [2, 3]


def test_prune_and_plan_agree(tmp_path):
    for e in range(1, 6):
        (tmp_path / f"checkpoint-epoch-{e}").mkdir()
    (tmp_path / "checkpoint-epoch-x").mkdir()  # not an epoch checkpoint: never touched
    removed = prune_epoch_checkpoints(tmp_path, 2, {1})
    assert [p.name for p in removed] == ["checkpoint-epoch-2", "checkpoint-epoch-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-epoch-1", "checkpoint-epoch-4",
                                                          "checkpoint-epoch-5", "checkpoint-epoch-x"]
    assert kept_epochs(5, 2, {1}) == [1, 4, 5] and kept_epochs(5, 0, {1}) == [1, 2, 3, 4, 5]
    assert prune_epoch_checkpoints(tmp_path, 0, set()) == []


def test_checkpoint_bytes_for_the_disk_planner(tiny_model_path, tmp_path):
    """Bytes per checkpoint = parameters x the save dtype's size + a metadata allowance that covers the tokenizer and
    config files; checked against a real save of the tiny model in both dtypes."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from RS.checkpoint import save_hf_checkpoint

    assert checkpoint_bytes(8_030_261_248, "bfloat16") == 8_030_261_248 * 2 + METADATA_BYTES  # Llama-3-8B
    assert checkpoint_bytes(10, torch.float32, n_adapter_params=5) == 60 + METADATA_BYTES
    # peak of a 3-epoch run: epoch checkpoints as they accumulate + the final model
    assert run_disk_bytes(100, "float32", 3) == 4 * checkpoint_bytes(100, "float32")
    assert run_disk_bytes(100, "float32", 3, save_total_limit=1, keep={2}) == 3 * checkpoint_bytes(100, "float32")
    with pytest.raises(ValueError, match="dtype"):
        checkpoint_bytes(1, "bfloat17")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    n = sum(p.numel() for p in model.parameters())  # parameters() lists tied weights once
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    for dtype in (torch.float32, torch.bfloat16):
        out = save_hf_checkpoint(Accelerator(), model, tok, tmp_path / str(dtype), dtype=dtype)
        on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        weights = (out / "model.safetensors").stat().st_size
        assert n * dtype.itemsize <= weights < n * dtype.itemsize + 2**16
        assert on_disk <= checkpoint_bytes(n, dtype)


def test_save_flags_are_checked_before_work_starts():
    base = ["--target", "1", "--output_dir", "o"]
    with pytest.raises(ValueError, match="--save_total_limit"):
        parse_args(base + ["--save_total_limit", "-1"])
    with pytest.raises(ValueError, match="--save_keep_epochs"):
        parse_args(base + ["--save_keep_epochs", "two"])
    with pytest.raises(ValueError, match="--save_dtype"):
        parse_args(base + ["--save_dtype", "fp16"])
    args = parse_args(base + ["--save_total_limit", "2", "--save_keep_epochs", "2,3", "--save_dtype", "bfloat16"])
    assert args.save_total_limit == 2 and save_dtype(args) == torch.bfloat16
