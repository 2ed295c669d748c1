"""The models of an RS.train run: the policy (full or LoRA) with its tokenizer, and the frozen original model that
NPO/DPO/KLR compare against, loaded so that every process holds the original weights (FSDP1-sharded like the
policy, or a full copy)."""

from __future__ import annotations

import contextlib
import os

import torch

from RS.args import TrainArgs


def load_model(args: TrainArgs):
    """(resolved path, policy model in float32, tokenizer with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.models.embedded import resolve_model_path

    path = resolve_model_path(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    if args.gradient_checkpointing:  # non-reentrant: no input-grad hook needed for LoRA, works under FSDP
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if args.finetuning_type == "lora":
        from peft import LoraConfig, get_peft_model

        target = "all-linear" if args.lora_target == "all" else [m.strip() for m in args.lora_target.split(",")]
        cfg = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         target_modules=target, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return path, model, tokenizer


@contextlib.contextmanager
def full_weights_loading(accelerator=None):
    """Load a model in full on this process. Under accelerate's FSDP CPU-RAM-efficient loading
    (FSDP_CPU_RAM_EFFICIENT_LOADING, set by RS/configs/accelerate_fsdp*.yaml) transformers gives every local rank
    but 0 zeros and counts on FSDP's ``sync_module_states`` to broadcast rank 0's weights, and under DeepSpeed
    ZeRO-3 it partitions the weights at load: a model that is not then wrapped (a reference used as is, an
    evaluation copy) must be read with both off."""
    saved = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    try:
        with plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext():
            yield
    finally:
        if saved is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = saved


def _fsdp1(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return (accelerator is not None and accelerator.distributed_type == DistributedType.FSDP
            and not accelerator.is_fsdp2)


def load_ref(path: str, bf16: bool = False, accelerator=None):
    """The frozen original model (NPO/DPO reference, KLR). Under FSDP1 it is wrapped like the policy (rank 0's
    weights broadcast, then sharded: an 8B bf16 copy costs 16 GB / processes per GPU, offloaded with the offload
    config); otherwise every process reads a full copy, whatever loading flags the launcher set."""
    from transformers import AutoModelForCausalLM

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                    use_safetensors=True)

    if _fsdp1(accelerator):
        ref = _shard_ref(load().requires_grad_(False), accelerator)
    else:
        with full_weights_loading(accelerator):
            ref = load()
        ref.requires_grad_(False)
        if accelerator is not None:
            ref = ref.to(accelerator.device)
    ref.eval()
    return ref


def _shard_ref(ref, accelerator):
    """Wrap the frozen reference in FSDP1 with the accelerate plugin's settings (as accelerate wraps the policy):
    ``sync_module_states`` gives every rank rank 0's weights when the others loaded zeros, the auto-wrap policy
    shards it per decoder layer, ``cpu_offload`` follows the config. Forward passes then gather one layer at a
    time on every rank, as the policy's do."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    plugin = accelerator.state.fsdp_plugin
    plugin.set_auto_wrap_policy(ref)
    return FSDP(ref, sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
                cpu_offload=plugin.cpu_offload, auto_wrap_policy=plugin.auto_wrap_policy,
                mixed_precision=plugin.mixed_precision_policy, sync_module_states=plugin.sync_module_states,
                forward_prefetch=plugin.forward_prefetch, use_orig_params=plugin.use_orig_params,
                param_init_fn=plugin.param_init_fn, limit_all_gathers=plugin.limit_all_gathers,
                device_id=accelerator.device)
