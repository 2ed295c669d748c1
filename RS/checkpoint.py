"""Writing Hugging Face checkpoints atomically (temp folder + os.replace), full fine-tune or merged LoRA."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def merge_lora_state_dict(state_dict: dict[str, torch.Tensor], scaling: float, adapter: str = "default") -> dict:
    """Fold LoRA weights into the base weights of a peft state dict: W <- W + scaling * B @ A.

    Input keys look like ``base_model.model.<path>.base_layer.weight`` / ``.lora_A.<adapter>.weight`` (r, in) /
    ``.lora_B.<adapter>.weight`` (out, r); the output has the plain base-model keys (``<path>.weight``).
    Works on a gathered state dict, so it also serves FSDP/ZeRO-3 runs.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key or "lora_embedding" in key:
            continue
        new = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            a = state_dict.get(f"{stem}.lora_A.{adapter}.weight")
            b = state_dict.get(f"{stem}.lora_B.{adapter}.weight")
            if a is not None and b is not None:
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        out[new] = value
    return out


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


def save_hf_checkpoint(accelerator, model, tokenizer, out_dir: str | Path, lora_scaling: float | None = None,
                       extra: dict | None = None, into_existing: bool = False) -> Path | None:
    """Save ``model`` (possibly accelerate-wrapped, possibly peft) as a plain HF folder at ``out_dir``.

    The state dict is gathered on every rank (needed under FSDP/ZeRO-3); only the main process writes. LoRA models
    are exported merged (loadable by from_pretrained without peft) with the adapter alongside in ``adapter/``.
    ``into_existing``: write the files into an existing folder (the run's output dir, which also holds logs and
    epoch checkpoints) one ``os.replace`` per file, instead of swapping the whole folder.
    """
    out_dir = Path(out_dir)
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    tmp = _atomic_dir(out_dir)
    is_peft = hasattr(unwrapped, "peft_config")
    if is_peft:
        unwrapped.save_pretrained(tmp / "adapter")
        merged = merge_lora_state_dict(state_dict, lora_scaling or 1.0)
        base = unwrapped.get_base_model()
        _save_plain(base, merged, tmp)
    else:
        _save_plain(unwrapped, state_dict, tmp)
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


def _save_plain(model, state_dict: dict, out: Path) -> None:
    """save_pretrained with an explicit state dict, into a fresh model of the same config when the given one
    carries peft layers (so the saved keys are the base model's)."""
    from transformers import AutoModelForCausalLM

    sd = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if any(".base_layer." in n for n, _ in model.named_parameters()):
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(model.config)
        fresh.load_state_dict(sd, strict=False, assign=True)
        if getattr(model.config, "tie_word_embeddings", False):
            fresh.tie_weights()
        fresh.generation_config = model.generation_config
        model = fresh
        sd = None
    model.save_pretrained(out, state_dict=sd, safe_serialization=True)
