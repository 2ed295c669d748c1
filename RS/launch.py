"""How an RS.train run is laid over processes: accelerate's process state, the Accelerator (gradient accumulation,
mixed precision), the per-device batch for --total_batch_size and when gradients are reduced."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from RS.args import TrainArgs, batch_plan
from verl.utils.cli import UserError
from verl.utils.net import free_port

logger = logging.getLogger("RS.train")


def partial_state():
    """accelerate's process state; on a machine without CUDA it must be created with cpu=True, or processes started
    by torchrun / accelerate launch each run alone (accelerate reads LOCAL_RANK only for accelerators). On a CPU it
    opens a gloo group even for one process, on MASTER_PORT (29500 unless set): a run of one gets a free port of its
    own, so two runs on one machine, or a port inherited from the parent and taken since, cannot collide. Under
    torchrun (TORCHELASTIC_USE_AGENT_STORE) MASTER_PORT is the launcher's store, which the process must join."""
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    launched = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    if cpu and int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not launched and not torch.distributed.is_initialized():
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    return PartialState(cpu=cpu)


def sync_each_batch(args: TrainArgs) -> bool:
    """Whether gradients are reduced on every accumulation micro-step. ``auto``: under FSDP (accelerate launch with
    an FSDP config exports ACCELERATE_USE_FSDP; accelerate uses FSDP only with GPUs), where accelerate's ``no_sync``
    would keep a full unsharded fp32 gradient on every GPU between micro-steps (32 GB for 8B); with it each
    micro-step reduce-scatters into the sharded gradient. Under DDP, no_sync only saves communication."""
    if args.sync_each_batch == "auto":
        return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and torch.cuda.is_available()
    return args.sync_each_batch == "true"


def build_accelerator(args: TrainArgs):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, GradientAccumulationPlugin

    plugin = GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps,
                                        sync_each_batch=sync_each_batch(args))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_plugin=plugin,
                              mixed_precision="bf16" if args.bf16 else "no")
    if args.loss_reduction == "global_token_mean" and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise UserError("--loss_reduction global_token_mean rescales the gradients before the optimizer step, which "
                        "DeepSpeed takes inside backward: use an FSDP config (RS/configs/accelerate_fsdp.yaml)")
    return accelerator


def plan_batch(args: TrainArgs, n_proc: int) -> TrainArgs:
    """--total_batch_size: the same effective batch (so the same steps per epoch) on any number of processes."""
    per_device, accum = batch_plan(args.total_batch_size, args.per_device_train_batch_size, n_proc,
                                   args.gradient_accumulation_steps)
    if (per_device, accum) != (args.per_device_train_batch_size, args.gradient_accumulation_steps):
        logger.info("total_batch_size %d on %d process(es): per-device batch %d x accumulation %d",
                    args.total_batch_size, n_proc, per_device, accum)
        args = dataclasses.replace(args, per_device_train_batch_size=per_device, gradient_accumulation_steps=accum)
    if args.refusal_stop and n_proc > 1:
        raise UserError("--refusal_stop generates with the whole model on one process; run RS on one process or "
                        "drop --refusal_stop (use --max_steps)")
    return args
