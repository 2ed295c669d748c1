"""LoRA actors through peft: adapters on the policy, merged weights for the rollout engine and checkpoints.

Only the adapters train (the base weights are frozen), so the base model with the adapters switched off
(``PeftModel.disable_adapter()``) is the reference whenever the reference is the actor's start model: no second copy
is loaded. The rollout engine and the checkpoint's HF folder need plain HF-named weights with the adapters folded in;
they come from peft's own ``merge_and_unload`` run on a meta-device copy of the model whose tensors are the gathered
state dict, so the live (FSDP) parameters are never modified.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ADAPTER_FILE = "adapter_model.safetensors"


def peft_config(lora_cfg):
    """peft ``LoraConfig`` for ``worker.actor.lora`` (``target_modules``: all-linear or a comma list)."""
    from peft import LoraConfig

    names = lora_cfg.target_modules.strip()
    targets = names if names == "all-linear" else [m.strip() for m in names.split(",") if m.strip()]
    return LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def add_adapters(model: nn.Module, lora_cfg, adapter_dir: str | Path | None = None) -> nn.Module:
    """``model`` wrapped in a peft model with fresh adapters (B = 0: the output equals the base's), or with the
    adapter weights saved in ``adapter_dir`` (resume). The base parameters are frozen."""
    from peft import get_peft_model, set_peft_model_state_dict

    peft_model = get_peft_model(model, peft_config(lora_cfg))
    if adapter_dir is not None:
        from safetensors.torch import load_file

        saved = load_file(str(Path(adapter_dir) / ADAPTER_FILE))
        result = set_peft_model_state_dict(peft_model, saved)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(f"{adapter_dir}: adapter does not fit worker.actor.lora (missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]})")
    return peft_model


def _live_storages(module: nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def _shell(peft_model: nn.Module, state_dict: dict[str, torch.Tensor], live: nn.Module | None) -> nn.Module:
    """A peft model like ``peft_model`` built on the meta device whose tensors are those of ``state_dict`` (peft
    names; no copy), unwrapped by FSDP, with copies of the config objects (peft and the merge edit them). Tensors that
    share storage with the parameters of ``live`` (the module they were gathered from) are cloned first, so an
    in-place merge never touches training weights."""
    import copy

    from peft import get_peft_model

    base = peft_model.get_base_model()
    with torch.device("meta"):
        shell = get_peft_model(type(base)(copy.deepcopy(base.config)), copy.deepcopy(peft_model.peft_config["default"]))
    shared = _live_storages(live) if live is not None else set()
    owned = {k: (v.clone() if v.untyped_storage().data_ptr() in shared else v) for k, v in state_dict.items()}
    shell.load_state_dict(owned, strict=True, assign=True)
    return shell


def merged_state_dict(peft_model: nn.Module, state_dict: dict[str, torch.Tensor],
                      live: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """HF-named weights of ``peft_model`` with its adapters merged, from its full ``state_dict`` (peft names):
    peft's ``merge_and_unload`` folds ``scaling * B @ A`` into each adapted weight of a meta-device copy holding those
    tensors (``_shell``), in their dtype."""
    import warnings

    shell = _shell(peft_model, state_dict, live)
    with warnings.catch_warnings():  # a tied head is loaded as a separate equal tensor: "no longer tied" is moot
        warnings.filterwarnings("ignore", message=".*no longer tied.*")
        return shell.merge_and_unload(progressbar=False, safe_merge=False).state_dict()


def save_adapter(peft_model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """peft's adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), written by peft's
    ``save_pretrained``: loadable with ``PeftModel.from_pretrained`` on the base model, and by a resumed run."""
    _shell(peft_model, state_dict, None).save_pretrained(str(out_dir), safe_serialization=True)
