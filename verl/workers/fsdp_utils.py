"""Model loading and FSDP wrapping shared by every role (actor, reference, critic).

FSDP (v1 API) runs on NCCL (GPU) or gloo (CPU). World size 1 uses ``NO_SHARD`` (the same code path, no
sharding); larger worlds use ``FULL_SHARD`` with one FSDP unit per decoder layer.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.fsdp import CPUOffload, FullStateDictConfig, MixedPrecision, ShardingStrategy, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import (
    ModuleWrapPolicy,
    _or_policy,
    lambda_auto_wrap_policy,
    transformer_auto_wrap_policy,
)
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from verl.models.embedded import resolve_model_path
from verl.utils.net import free_port

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def to_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    return torch.device(name)


DEFAULT_DIST_TIMEOUT_MINUTES = 60.0


def dist_timeout(minutes: float | None = None):
    """How long a collective waits for the other ranks: ``minutes`` (trainer.dist_timeout_minutes), else
    $RULE_DIST_TIMEOUT_MINUTES, else 60.

    Decision: 60 minutes, not NCCL's default 10: rank 0 writes a checkpoint (~48 GB for the paper's 8B model: HF
    export, fp32 master weights, optimizer state) while the others wait in the checkpoint's barrier, and a slow
    disk must not turn that wait into a collective timeout; a real hang still ends the run within the hour."""
    raw = minutes if minutes is not None else os.environ.get("RULE_DIST_TIMEOUT_MINUTES", DEFAULT_DIST_TIMEOUT_MINUTES)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise ValueError(f"trainer.dist_timeout_minutes / RULE_DIST_TIMEOUT_MINUTES = {raw!r}: must be a positive "
                         "number of minutes")
    return timedelta(minutes=value)


def init_distributed(device: torch.device, backend: str = "auto",
                     timeout_minutes: float | None = None) -> tuple[int, int]:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; returns (rank, world).
    Collectives time out after ``dist_timeout(timeout_minutes)``."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not dist.is_initialized():
        timeout = dist_timeout(timeout_minutes)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if world == 1:  # a fresh port each time, so in-process runs can re-initialise after destroy
            dist.init_process_group(backend=backend, rank=0, world_size=1,
                                    init_method=f"tcp://127.0.0.1:{free_port()}", timeout=timeout)
        else:
            dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def current_device(device: torch.device) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device


class ValueModel(nn.Module):
    """A causal-LM backbone with a scalar head: ``forward(...) -> values [B, L]`` (the critic)."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        return self.value_head(out.last_hidden_state.to(self.value_head.weight.dtype)).squeeze(-1)


def load_module(path: str, role: str, dtype: torch.dtype, gradient_checkpointing: bool = False,
                trust_remote_code: bool = False) -> nn.Module:
    """The HF causal LM (actor/ref) or ``ValueModel`` (critic) at ``path``; a critic checkpoint saved by this
    project (``value_head.safetensors`` beside the backbone) restores its head."""
    path = resolve_model_path(path)
    if role == "critic":
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        backbone = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                             use_safetensors=True)
        model = ValueModel(backbone, config.hidden_size).to(dtype)
        head = Path(path) / "value_head.safetensors"
        if head.is_file():
            model.value_head.load_state_dict(load_file(str(head)))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
    inner = model.backbone if role == "critic" else model
    inner.config.use_cache = False
    if gradient_checkpointing:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _layer_classes(model: nn.Module) -> set[type]:
    backbone = getattr(model, "backbone", None)
    names = set(getattr(model, "_no_split_modules", None) or getattr(backbone, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def _mixes_frozen(model: nn.Module) -> bool:
    """Frozen and trainable parameters together (a LoRA model)."""
    return len({p.requires_grad for p in model.parameters()}) == 2


def _trainable_leaf(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return not any(True for _ in module.children()) and bool(params) and all(p.requires_grad for p in params)


def wrap_policy(model: nn.Module, layers: set[type]):
    """One FSDP unit per decoder layer; when the model mixes frozen and trainable parameters (LoRA), each trainable
    leaf module (an adapter's A or B) is a unit of its own too, so the layer units hold frozen weights only: FSDP
    allocates a unit's gradient for its whole flat parameter, which in a mixed unit is the size of the frozen base."""
    if not _mixes_frozen(model):
        return ModuleWrapPolicy(layers) if layers else None
    policies = [functools.partial(lambda_auto_wrap_policy, lambda_fn=_trainable_leaf)]
    if layers:
        policies.append(functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers))
    return functools.partial(_or_policy, policies=policies)


def wrap_fsdp(model: nn.Module, device: torch.device, compute_dtype: torch.dtype, world_size: int,
              offload_params: bool = False) -> nn.Module:
    """FSDP-wrap ``model`` (parameters kept in their load dtype; ``compute_dtype`` via mixed precision when it
    differs). CPU offload of parameters is honoured on CUDA only."""
    param_dtype = next(model.parameters()).dtype
    mp = None
    if compute_dtype != param_dtype:
        # adapter units (LoRA) get inputs that peft cast to the master dtype of their weights: cast them back
        mp = MixedPrecision(param_dtype=compute_dtype, reduce_dtype=torch.float32, buffer_dtype=torch.float32,
                            cast_forward_inputs=_mixes_frozen(model))
    layers = _layer_classes(model)
    return FSDP(
        model,
        auto_wrap_policy=wrap_policy(model, layers),
        sharding_strategy=ShardingStrategy.FULL_SHARD if world_size > 1 else ShardingStrategy.NO_SHARD,
        mixed_precision=mp,
        cpu_offload=CPUOffload(offload_params=True) if (offload_params and device.type == "cuda") else None,
        device_id=current_device(device),
        use_orig_params=True,
        sync_module_states=False,
    )


def restore_frozen_param_views(module: nn.Module) -> None:
    """After a backward pass, register the original parameters of frozen FSDP units again.

    With ``use_orig_params`` FSDP swaps each unit's parameters for plain tensor views during forward and backward and
    puts the parameters back in its post-backward hook; a unit without trainable parameters (a LoRA actor's
    embeddings, final norm and LM head) gets no such hook, and unsharded (world size 1, ``NO_SHARD``) nothing else
    restores them: they then drop out of ``state_dict()`` and a tied weight fails FSDP's next reshard. Sharded units
    are restored by FSDP itself.
    """
    if not isinstance(module, FSDP):
        return
    for unit in FSDP.fsdp_modules(module):
        handle = unit._handle
        if handle is not None and handle._use_orig_params and not handle.uses_sharded_strategy \
                and not handle.flat_param.requires_grad:
            handle._use_sharded_views()


def full_state_dict(module: nn.Module, rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU, on rank 0 (other ranks get {} unless ``rank0_only=False``);
    a collective under FSDP."""
    if not isinstance(module, FSDP):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_cpu = next(module.parameters()).device.type == "cpu"
        # gloo/CPU: every rank gathers (rank0_only on CPU segfaults in FSDP's clone hook with tied embeddings)
        cfg = FullStateDictConfig(offload_to_cpu=not on_cpu, rank0_only=rank0_only and not on_cpu)
        with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, cfg):
            sd = module.state_dict()
    return sd if (dist.get_rank() == 0 or not rank0_only) else {}


FSDP_PREFIX = "_fsdp_wrapped_module."
T = TypeVar("T")


def unwrapped_name(name: str) -> str:
    """A parameter or module name without FSDP's wrapper segments (the name in the wrapped model)."""
    return name.replace(FSDP_PREFIX, "")


def _units_below(root: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The FSDP units directly below ``root``, as ``(name, unit)`` in module order, split into decoder layers and the
    rest (a LoRA adapter on a module of the root unit, e.g. a targeted LM head)."""
    top: list[tuple[str, nn.Module]] = []
    for name, m in root.named_modules():  # pre-order: a unit's parent unit comes first
        if isinstance(m, FSDP) and m is not root and not any(name.startswith(p + ".") for p, _ in top):
            top.append((name, m))
    layers = _layer_classes(root.module)
    return ([(n, u) for n, u in top if type(u.module) in layers],
            [(n, u) for n, u in top if type(u.module) not in layers])


def _owned(named, units: list[tuple[str, nn.Module]]) -> list[tuple[str, torch.Tensor]]:
    """``named`` parameters outside every unit of ``units`` (those stay sharded while the root is gathered)."""
    prefixes = tuple(unwrapped_name(n) + "." for n, _ in units)
    return [(n, p) for n, p in named if not n.startswith(prefixes)]


def gathered_units(module: nn.Module, convert: Callable[[str, nn.Module, list[tuple[str, torch.Tensor]]], T]
                   ) -> Iterator[T]:
    """``convert(prefix, unit, [(name, full parameter)])`` one FSDP unit at a time: first the root unit's own
    parameters (embeddings, final norm, LM head; tied ones under each name), then each decoder layer with everything
    nested in it (a LoRA layer's adapters). ``convert`` runs while its unit is gathered (``summon_full_params``, no
    write-back) and must copy what it keeps; its result is yielded once the unit is released, so at most one unit's
    full parameters exist at a time instead of the whole model's. Names and prefixes are those of the wrapped model
    (FSDP strips its segments from parameter names while a unit is gathered, not from module names). A collective
    under FSDP: every rank iterates to the end. A module that is not FSDP-wrapped is one unit."""
    if not isinstance(module, FSDP):
        yield convert("", module, _clean(module.named_parameters(remove_duplicate=False)))
        return
    layers, others = _units_below(module)
    with contextlib.ExitStack() as stack:
        stack.enter_context(FSDP.summon_full_params(module, recurse=False, writeback=False))
        for _, unit in others:  # gathered with the root: an adapter of a root module merges into its weight
            stack.enter_context(FSDP.summon_full_params(unit, recurse=True, writeback=False))
        out = convert("", module, _owned(_clean(module.named_parameters(remove_duplicate=False)), layers))
    yield out
    for name, unit in layers:
        prefix = unwrapped_name(name)
        with FSDP.summon_full_params(unit, recurse=True, writeback=False):
            out = convert(prefix, unit, _clean(unit.named_parameters(prefix=prefix, remove_duplicate=False)))
        yield out


def _clean(named) -> list[tuple[str, torch.Tensor]]:
    return [(unwrapped_name(n), p) for n, p in named]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def export_hf(module: nn.Module, out_dir: str | Path, tokenizer=None, role: str = "actor",
              dtype: torch.dtype | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save an HF-loadable folder (safetensors + config + tokenizer) from rank 0. Collective under FSDP unless
    ``state_dict`` (HF names, e.g. a LoRA actor's merged weights) is given.

    ``dtype``: the weights are written in it and ``config.json`` names it (None: as gathered, the fp32 master
    weights); a peft model is saved as its base model (its ``state_dict`` must then be the merged one).
    """
    sd = full_state_dict(module) if state_dict is None else state_dict
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    inner = module.module if isinstance(module, FSDP) else module
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if role == "critic":
        backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        head = {k[len("value_head."):]: v.contiguous() for k, v in sd.items() if k.startswith("value_head.")}
        inner.backbone.save_pretrained(out_dir, state_dict=backbone, safe_serialization=True)
        save_file(head, str(out_dir / "value_head.safetensors"))
    else:
        inner.save_pretrained(out_dir, state_dict=_without_tied_head(inner, sd), safe_serialization=True)
    if dtype is not None:
        _set_config_dtype(out_dir / "config.json", dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def _without_tied_head(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without the LM head's weight when the config ties it to the input embeddings and the two are equal: a
    gathered state dict holds them as separate tensors, which ``save_pretrained`` would write twice."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return sd
    names = {id(m): n.replace("_fsdp_wrapped_module.", "") for n, m in model.named_modules()}
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None:
        return sd
    head_key, emb_key = f"{names[id(head)]}.weight", f"{names[id(emb)]}.weight"
    if head_key in sd and emb_key in sd and torch.equal(sd[head_key], sd[emb_key]):
        return {k: v for k, v in sd.items() if k != head_key}
    return sd


def _set_config_dtype(config_file: Path, dtype: torch.dtype) -> None:
    """Name the weights' dtype in ``config.json`` (loaders with ``dtype='auto'`` and vLLM read it; the live model's
    config names the fp32 master dtype)."""
    cfg = json.loads(config_file.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in cfg or key == "dtype":
            cfg[key] = dtype_name(dtype)
    config_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move optimizer state tensors (offload to CPU / reload to the device). Scalar step counters stay where AdamW
    keeps them (the CPU, unless fused/capturable), as ``Optimizer.load_state_dict`` does. Copies to the CPU are
    blocking, so the state can be read (saved) right after."""
    non_blocking = device.type != "cpu"
    for group in optimizer.param_groups:
        steps_follow = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = optimizer.state.get(p)
            for k, v in (state or {}).items():
                if isinstance(v, torch.Tensor) and (k != "step" or steps_follow):
                    state[k] = v.to(device, non_blocking=non_blocking)


def optimizer_step_device(optimizer: torch.optim.Optimizer, default: torch.device) -> torch.device:
    """Where the optimizer must step: the device of its parameters (the CPU under FSDP parameter offload, whose
    sharded parameters and gradients live there), ``default`` without parameters."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            return p.device
    return default


def rng_state() -> dict:
    """RNG states as tensors and plain values only, so ``torch.load(weights_only=True)`` reads them back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]  # torch.load turns the tuples into lists
    random.setstate((py[0], tuple(py[1]), py[2]) if isinstance(py, list) else py)
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                npst["cached_gaussian"])
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def apply_optim_config(optimizer: torch.optim.Optimizer, scheduler, optim_cfg) -> None:
    """After loading a checkpoint's optimizer state, put back the config's lr, betas and weight decay (the loaded
    state carries the saved run's values, which would silently override a changed lr). A no-op when they are equal."""
    for group in optimizer.param_groups:
        group["initial_lr"] = optim_cfg.lr
        group["weight_decay"] = optim_cfg.weight_decay
        group["betas"] = tuple(optim_cfg.betas)
    scheduler.base_lrs = [optim_cfg.lr for _ in optimizer.param_groups]
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors):
        group["lr"] = base * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def generate(module: nn.Module, **kwargs):
    """``module.generate(**kwargs)`` run inside the root FSDP unit's forward, so generation computes as a training
    forward does: the root's own parameters (embeddings, final norm, head) unsharded in the compute dtype of mixed
    precision and float inputs cast. Calling the wrapped model's ``generate`` directly skips that forward: the root
    parameters stay in the fp32 master dtype next to bf16 layers (``expected m1 and m2 to have the same dtype``).
    Nested units gather their own parameters as in any forward; with ``synced_gpus`` every rank runs as many."""
    if not isinstance(module, FSDP):
        return module.generate(**kwargs)
    inner = module.module
    had_own = "forward" in inner.__dict__
    own = inner.__dict__.get("forward")

    def restore():
        if had_own:
            inner.forward = own
        else:
            inner.__dict__.pop("forward", None)

    def run_generate(*_, **kw):  # FSDP's root forward calls this in place of the model's forward
        restore()  # generate's own forward passes take the real one
        return inner.generate(**kw)

    inner.forward = run_generate
    try:
        return module(**kwargs)
    finally:
        restore()

