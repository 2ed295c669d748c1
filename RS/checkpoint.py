"""Writing Hugging Face checkpoints atomically (temp folder + os.replace), full fine-tune or merged LoRA, in the
training dtype; an RS.train run's epoch checkpoints under the save limit and its final model; the disk size of a
checkpoint for planning."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from RS.args import keep_epochs, save_dtype

if TYPE_CHECKING:
    from RS.run import Run

logger = logging.getLogger("RS.train")

# tokenizer (Llama-3's tokenizer.json is ~9 MB), config, generation config, trainer state and safetensors headers
METADATA_BYTES = 32 * 2**20
EPOCH_DIR = re.compile(r"checkpoint-epoch-(\d+)$")


def checkpoint_bytes(n_params: int, dtype: str | torch.dtype = "bfloat16", n_adapter_params: int = 0) -> int:
    """Bytes on disk of one checkpoint RS.train writes (an epoch folder, or the final model in the run folder).

    ``n_params``: elements of the saved tensors (tied embeddings counted once), ``dtype``: the save dtype
    (``--save_dtype``; bfloat16 with ``--bf16``), ``n_adapter_params``: LoRA parameters (the adapter is kept beside
    the merged weights, in float32). A METADATA_BYTES allowance covers tokenizer and config files."""
    dt = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return n_params * dt.itemsize + n_adapter_params * 4 + METADATA_BYTES


def kept_epochs(n_epochs: int, save_total_limit: int = 0, keep: set[int] | frozenset = frozenset({2})) -> list[int]:
    """The epoch checkpoints left after ``n_epochs`` epochs under ``--save_total_limit`` / ``--save_keep_epochs``."""
    left: list[int] = []
    for epoch in range(1, n_epochs + 1):
        left = _survivors(left + [epoch], save_total_limit, keep)
    return left


def run_disk_bytes(n_params: int, dtype: str | torch.dtype = "bfloat16", n_epochs: int = 3, save_total_limit: int = 0,
                   keep: set[int] | frozenset = frozenset({2}), n_adapter_params: int = 0) -> int:
    """Peak bytes of one RS.train output folder with ``--save_strategy epoch``: an epoch checkpoint is written
    beside the ones kept so far before the limit removes any, and the final model beside the kept ones."""
    left, peak = [], 0
    for epoch in range(1, n_epochs + 1):
        peak = max(peak, len(left) + 1)
        left = _survivors(left + [epoch], save_total_limit, keep)
    peak = max(peak, len(left) + 1)
    return peak * checkpoint_bytes(n_params, dtype, n_adapter_params)


def run_disk_after_bytes(n_params: int, dtype: str | torch.dtype = "bfloat16", n_epochs: int = 3,
                         save_total_limit: int = 0, keep: set[int] | frozenset = frozenset({2}),
                         n_adapter_params: int = 0) -> int:
    """Bytes of one RS.train output folder once the run has ended: the epoch checkpoints ``kept_epochs`` leaves and
    the final model (``run_disk_bytes`` is the peak while it runs)."""
    kept = len(kept_epochs(n_epochs, save_total_limit, keep))
    return (kept + 1) * checkpoint_bytes(n_params, dtype, n_adapter_params)


def _survivors(epochs: list[int], limit: int, keep) -> list[int]:
    if limit <= 0:
        return sorted(epochs)
    newest = sorted(epochs)[-limit:]
    return sorted(e for e in epochs if e in newest or e in keep)


def prune_epoch_checkpoints(out_dir: str | Path, save_total_limit: int, keep: set[int]) -> list[Path]:
    """Remove the epoch checkpoints of ``out_dir`` beyond the newest ``save_total_limit`` (0: none), never those in
    ``keep``; returns what was removed."""
    if save_total_limit <= 0:
        return []
    found = {int(m.group(1)): p for p in Path(out_dir).iterdir() if p.is_dir() and (m := EPOCH_DIR.match(p.name))}
    left = set(_survivors(list(found), save_total_limit, keep))
    removed = [p for e, p in sorted(found.items()) if e not in left]
    for path in removed:
        shutil.rmtree(path)
    return removed


def _atomic_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
    return tmp


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def save_hf_checkpoint(accelerator, model, tokenizer, out_dir: str | Path, extra: dict | None = None,
                       into_existing: bool = False, dtype: torch.dtype | None = None) -> Path | None:
    """Save ``model`` (possibly accelerate-wrapped, possibly peft) as a plain HF folder at ``out_dir``.

    The state dict is gathered on every rank (needed under FSDP/ZeRO-3); only the main process writes, from that
    gathered copy (never from its own shard). LoRA models are exported merged by peft (loadable by from_pretrained
    without peft) with the adapter alongside in ``adapter/``. ``dtype``: the saved weights' dtype (default: as
    trained). ``into_existing``: write the files into an existing folder (the run's output dir, which also holds logs
    and epoch checkpoints) one ``os.replace`` per file, instead of swapping the whole folder.
    """
    out_dir = Path(out_dir)
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    tmp = _atomic_dir(out_dir)
    if hasattr(unwrapped, "peft_config"):
        base = merged_lora_model(unwrapped, state_dict, adapter_dir=tmp / "adapter")
        _save_plain(base.config, base.generation_config, base.state_dict(), tmp, dtype)
    else:
        _save_plain(unwrapped.config, unwrapped.generation_config, state_dict, tmp, dtype)
    tokenizer.save_pretrained(tmp)
    if extra:
        with open(tmp / "trainer_state.json", "w", encoding="utf-8") as f:
            json.dump(extra, f, indent=2)
    if into_existing:
        out_dir.mkdir(parents=True, exist_ok=True)
        for entry in tmp.iterdir():
            dest = out_dir / entry.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        tmp.rmdir()
    else:
        _publish(tmp, out_dir)
    accelerator.wait_for_everyone()
    return out_dir


def save_epoch(run: Run, epoch: int) -> None:
    """checkpoint-epoch-<epoch> of ``run``, then --save_total_limit's pruning (never the --save_keep_epochs ones)."""
    ck = run.out / f"checkpoint-epoch-{epoch}"
    save_hf_checkpoint(run.accelerator, run.model, run.tokenizer, ck, dtype=save_dtype(run.args),
                       extra={"epoch": epoch, "global_step": run.step, "stage": run.stage.name})
    run.last_good = str(ck)
    if run.accelerator.is_main_process:
        for path in prune_epoch_checkpoints(run.out, run.args.save_total_limit, keep_epochs(run.args.save_keep_epochs)):
            logger.info("save_total_limit %d: removed %s", run.args.save_total_limit, path.name)
    run.accelerator.wait_for_everyone()


def save_final(run: Run) -> None:
    """The final model at the top of the output folder (beside the logs and epoch checkpoints)."""
    save_hf_checkpoint(run.accelerator, run.model, run.tokenizer, run.out, into_existing=True,
                       dtype=save_dtype(run.args),
                       extra={"epoch": run.args.num_train_epochs, "global_step": run.step, "stage": run.stage.name})


def merged_lora_model(peft_model, state_dict: dict[str, torch.Tensor], adapter_dir: Path | None = None):
    """The base model with the LoRA weights of ``state_dict`` (a gathered peft state dict) merged in by peft's own
    ``merge_and_unload``. A copy of ``peft_model``'s structure is built on the meta device and takes the gathered
    tensors, so a sharded (FSDP) model is merged from the full weights; ``safe_merge`` writes the merged weights
    into new tensors, leaving the training model's parameters untouched. ``adapter_dir``: also save the adapter."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    name = peft_model.active_adapter
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(copy.deepcopy(peft_model.get_base_model().config))
        fresh = get_peft_model(base, copy.deepcopy(peft_model.peft_config[name]), adapter_name=name)
    sd = {k: v.detach().to("cpu") for k, v in state_dict.items()}
    missing = _missing_keys(fresh, fresh.load_state_dict(sd, strict=False, assign=True))
    if missing:
        raise RuntimeError(f"gathered LoRA state dict lacks {missing[:5]} ({len(missing)} keys)")
    if adapter_dir is not None:
        fresh.save_pretrained(adapter_dir)
    merged = fresh.merge_and_unload(safe_merge=True)
    if getattr(merged.config, "tie_word_embeddings", False):
        merged.tie_weights()
    merged.generation_config = peft_model.get_base_model().generation_config
    return merged


def _missing_keys(model, result) -> list[str]:
    """Missing keys of a load_state_dict ``result``, less an output layer tied to the loaded input embeddings."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]


def _save_plain(config, generation_config, state_dict: dict, out: Path, dtype: torch.dtype | None = None) -> None:
    """save_pretrained of a fresh model of ``config`` that takes ``state_dict``'s tensors (cast to ``dtype``), so
    the saved config names the saved dtype and the training model (its config included) is never touched."""
    from transformers import AutoModelForCausalLM

    def cast(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().to("cpu")
        return (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()

    sd = {k: cast(v) for k, v in state_dict.items()}
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    missing = _missing_keys(fresh, fresh.load_state_dict(sd, strict=False, assign=True))
    if missing:
        raise RuntimeError(f"state dict lacks {missing[:5]} ({len(missing)} keys) of {type(fresh).__name__}")
    if getattr(fresh.config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(generation_config)
    fresh.save_pretrained(out, safe_serialization=True)
