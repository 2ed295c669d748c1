"""LoRA actors through peft: adapters on the policy, merged weights for the rollout engine and checkpoints.

Only the adapters train (the base weights are frozen), so the base model with the adapters switched off
(``PeftModel.disable_adapter()``) is the reference whenever the reference is the actor's start model: no second copy
is loaded. The rollout engine and the checkpoint's HF folder need plain HF-named weights with the adapters folded in.
The checkpoint's come from peft's own ``merge_and_unload`` run on a meta-device copy of the model whose tensors are the
gathered state dict; the rollout engine's are merged one gathered FSDP unit (decoder layer) at a time
(``merged_unit``: the base weight plus peft's ``get_delta_weight``, the sum ``merge_and_unload`` forms), so no rank
ever holds the whole model for a weight sync. Either way the live (FSDP) parameters are never modified.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from verl.workers.fsdp_utils import unwrapped_name

ADAPTER_FILE = "adapter_model.safetensors"


def peft_config(lora_cfg):
    """peft ``LoraConfig`` for ``worker.actor.lora`` (``target_modules``: all-linear or a comma list)."""
    from peft import LoraConfig  # optional heavy dependency: peft (~5 s), only for LoRA

    names = lora_cfg.target_modules.strip()
    targets = names if names == "all-linear" else [m.strip() for m in names.split(",") if m.strip()]
    return LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def add_adapters(model: nn.Module, lora_cfg, adapter_dir: str | Path | None = None) -> nn.Module:
    """``model`` wrapped in a peft model with fresh adapters (B = 0: the output equals the base's), or with the
    adapter weights saved in ``adapter_dir`` (resume). The base parameters are frozen."""
    from peft import get_peft_model, set_peft_model_state_dict  # optional heavy dependency: peft (~5 s), only for LoRA

    peft_model = get_peft_model(model, peft_config(lora_cfg))
    if adapter_dir is not None:
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
    from peft import get_peft_model  # optional heavy dependency: peft (~5 s), only for LoRA

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
    shell = _shell(peft_model, state_dict, live)
    with warnings.catch_warnings():  # a tied head is loaded as a separate equal tensor: "no longer tied" is moot
        warnings.filterwarnings("ignore", message=".*no longer tied.*")
        return shell.merge_and_unload(progressbar=False, safe_merge=False).state_dict()


def save_adapter(peft_model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """peft's adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), written by peft's
    ``save_pretrained``: loadable with ``PeftModel.from_pretrained`` on the base model, and by a resumed run."""
    _shell(peft_model, state_dict, None).save_pretrained(str(out_dir), safe_serialization=True)


def hf_name(peft_name: str) -> str:
    """The HF name of a peft model's base parameter (FSDP segments, peft's ``base_model.model.`` prefix and the
    ``base_layer`` level removed): the name ``merge_and_unload`` gives it."""
    return unwrapped_name(peft_name).removeprefix("base_model.model.").replace(".base_layer.", ".")


def _is_adapter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def _adapted_layers(unit: nn.Module, prefix: str) -> dict[str, tuple[nn.Module, list[str]]]:
    """``base weight name -> (peft LoRA layer, its active adapters)`` for the LoRA layers inside ``unit`` (names in
    the wrapped model, FSDP segments removed, below ``prefix``). Only plain LoRA is merged here: a variant (DoRA) or an
    adapter bias changes more than the weight."""
    from peft.tuners.lora import LoraLayer  # optional heavy dependency: peft (~5 s), only for LoRA

    out = {}
    for name, m in unit.named_modules(prefix=prefix):
        name = unwrapped_name(name)
        if not isinstance(m, LoraLayer):
            continue
        active = [a for a in m.active_adapters if a in m.lora_A]
        if any(getattr(m, "lora_variant", {}).get(a) or getattr(m, "lora_bias", {}).get(a) for a in active):
            raise NotImplementedError(f"{name}: only plain LoRA adapters (no DoRA, no adapter bias) are merged")
        if active:
            out[f"{name}.base_layer.weight"] = (m, active)
    return out


def merged_unit(unit: nn.Module, prefix: str, named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """HF-named weights of one gathered FSDP unit of a peft model with its adapters folded in: each adapted weight
    becomes a new tensor ``W + get_delta_weight(adapter)`` per active adapter (peft's delta, added as
    ``merge_and_unload`` adds it), every other parameter is passed on as given, and the adapter tensors are dropped.
    ``named``: the unit's gathered ``(name, parameter)`` pairs (``fsdp_utils.gathered_units``)."""
    adapted = _adapted_layers(unit, prefix)
    out = []
    with torch.no_grad():
        for name, p in named:
            if _is_adapter(name):
                continue
            if name in adapted:
                layer, active = adapted[name]
                for adapter in active:
                    p = p + layer.get_delta_weight(adapter).to(p.dtype)
            out.append((hf_name(name), p))
    return out
