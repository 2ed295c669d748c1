"""``python -m RS.train``: Rejection Steering SFT, knowledge injection and the SFT-style unlearning baselines.

One loop (accelerate.Accelerator, so ``accelerate launch --config_file RS/configs/accelerate_fsdp.yaml -m RS.train``
works) serves every stage of ``RS.stages``. Outputs in ``--output_dir``: ``checkpoint-epoch-<k>/`` per epoch
(``--save_strategy epoch``) and the final model at the top (HF folders, safetensors + tokenizer, LoRA merged),
``train_log.jsonl``, ``loss.png``, ``run_args.json``, ``run_info.json`` (git commit, data sha256), ``heldout.json``
(``--train_fraction``), ``inject_eval.json`` (stage inject) and the ``DONE`` marker.

Under FSDP (RS/configs/accelerate_fsdp.yaml, _fsdp_offload.yaml) the frozen reference of NPO/DPO/KLR is sharded
like the policy, gradient accumulation reduces each micro-step (no unsharded gradient is kept), and the injection
scores are computed on the main process from a plain copy of the saved model while the other processes wait.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from RS import losses, refusal_stop
from RS.args import TrainArgs, args_to_dict, batch_plan, keep_epochs, parse_args, save_dtype
from RS.args import steps_per_epoch as epoch_steps
from RS.checkpoint import prune_epoch_checkpoints, save_hf_checkpoint
from RS.datasets import build_data, collate
from RS.stages import Stage, get_stage
from verl.utils.cli import UserError
from verl.utils.io import atomic_savefig, atomic_write_json
from verl.utils.net import free_port
from verl.utils.progress import progress
from verl.utils.runinfo import run_info
from verl.utils.runlock import LOCK_NAME, RunDirLock

logger = logging.getLogger("RS.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stopped, earlier checkpoints were kept."""


# what an RS.train run writes into --output_dir: --overwrite_output_dir removes these so runs never mix (the log
# once read steps 1, 2, 3, 1, 2 and old checkpoint-epoch-* folders stayed); other files of the folder are kept
RUN_OUTPUTS = ("DONE", "FAILED.json", "train_log.jsonl", "loss.png", "run_args.json", "run_info.json", "heldout.json",
               "refusal_checks.jsonl", "inject_eval.json", "inject_eval_before.json", "model.safetensors",
               "model.safetensors.index.json")
RUN_OUTPUT_GLOBS = ("checkpoint-epoch-*", "model-*-of-*.safetensors", "adapter")


class OutputDirNotEmptyError(UserError, FileExistsError):
    """--output_dir holds another run's files."""


def _prepare_output_dir(args: TrainArgs) -> Path:
    out = Path(args.output_dir)
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not args.overwrite_output_dir:
        raise OutputDirNotEmptyError(f"output dir {out} is not empty; pass --overwrite_output_dir to replace the "
                                     "earlier run's outputs, or choose another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    stale = [out / name for name in RUN_OUTPUTS] + [p for g in RUN_OUTPUT_GLOBS for p in sorted(out.glob(g))]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return out


def _load_model(args: TrainArgs):
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
    ref = None
    if args.finetuning_type == "lora":
        from peft import LoraConfig, get_peft_model

        target = "all-linear" if args.lora_target == "all" else [m.strip() for m in args.lora_target.split(",")]
        cfg = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         target_modules=target, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return path, model, tokenizer, ref


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


def _load_ref(path: str, bf16: bool = False, accelerator=None):
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


def _forward_logits(model, batch: dict, prefix: str = "", window: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels), aligned as ``RS.losses`` expects. ``window``: only over the positions that carry a loss:
    every loss reads only the logits that predict a labelled token, so the positions before the batch's first such
    logit (the prompt prefix) are skipped with the model's ``logits_to_keep`` (the output-layer product and its
    log-softmax are a large share of a small model's step); the losses agree with the full forward to ~1e-6."""
    labels = batch[f"{prefix}labels"]
    width, extra = labels.shape[1], {}
    if window:
        labelled = labels.ne(losses.IGNORE_INDEX).any(0).nonzero()
        first = int(labelled[0]) if len(labelled) else width
        extra["logits_to_keep"] = width - max(first - 1, 0)  # logit t predicts label t + 1
    logits = model(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"],
                   **extra).logits
    return logits, (labels[:, width - logits.shape[1]:] if window else labels)


def compute_loss(stage: Stage, args: TrainArgs, model, ref, batch: dict, retain_batch: dict | None) -> dict:
    """The stage's total loss and its parts (tensors) for one micro-batch. With --loss_reduction global_token_mean
    the NLL/GA loss is the micro-batch's token sum; RS.train divides the step's gradient by the labelled tokens of
    the whole effective batch (_StepLoss)."""
    w = args.loss_window
    red = "sum" if args.loss_reduction == "global_token_mean" else "mean"
    parts: dict[str, torch.Tensor] = {}
    if stage.forget_loss == "dpo":
        c_logp, _ = losses.sequence_logprob(*_forward_logits(model, batch, "chosen_", window=w))
        r_logp, _ = losses.sequence_logprob(*_forward_logits(model, batch, "rejected_", window=w))
        with torch.no_grad():
            rc, _ = losses.sequence_logprob(*_forward_logits(ref, batch, "chosen_", window=w))
            rr, _ = losses.sequence_logprob(*_forward_logits(ref, batch, "rejected_", window=w))
        parts["forget"] = losses.dpo_loss(c_logp, r_logp, rc, rr, args.dpo_beta)
    else:
        logits, labels = _forward_logits(model, batch, window=w)
        if stage.forget_loss == "nll":
            parts["forget"] = losses.nll_loss(logits, labels, red)
        elif stage.forget_loss == "ga":
            parts["forget"] = losses.ga_loss(logits, labels, red)
        elif stage.forget_loss == "npo":
            logp, _ = losses.sequence_logprob(logits, labels)
            with torch.no_grad():
                ref_logp, _ = losses.sequence_logprob(*_forward_logits(ref, batch, window=w))
            parts["forget"] = losses.npo_loss(logp, ref_logp, args.npo_beta)
        elif stage.forget_loss == "simnpo":
            logp, n = losses.sequence_logprob(logits, labels)
            parts["forget"] = losses.simnpo_loss(logp, n, args.simnpo_beta, args.simnpo_gamma)
        else:
            raise ValueError(f"stage {stage.name}: unknown forget loss {stage.forget_loss!r}")
    total = args.forget_weight * parts["forget"]
    if stage.retain and retain_batch is not None:
        rw = w and not (stage.retain == "kl" and args.klr_reduction == "release")  # release: every position
        r_logits, r_labels = _forward_logits(model, retain_batch, window=rw)
        if stage.retain == "nll":
            parts["retain"] = losses.nll_loss(r_logits, r_labels)
        else:
            with torch.no_grad():
                ref_logits, _ = _forward_logits(ref, retain_batch, window=rw)
            parts["retain"] = losses.kl_loss(r_logits, ref_logits, r_labels, args.klr_reduction)
        total = total + args.retain_weight * parts["retain"]
    parts["loss"] = total
    return parts


def _plot_loss(log_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(log_path, encoding="utf-8") if line.strip()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "forget", "retain"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts and (key == "loss" or any(k in rows[0] for k in ("retain",))):
            ax.plot(*zip(*pts), label=key)
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="val_loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out_png, dpi=100)
    plt.close(fig)


@torch.no_grad()
def _val_loss(model, loader, accelerator, window: bool = False) -> float:
    model.eval()
    tot, n = 0.0, 0
    for batch in loader:
        tot += losses.nll_loss(*_forward_logits(model, batch, window=window)).item()
        n += 1
    model.train()
    return tot / max(1, n)


def _inject_eval(model, tokenizer, args: TrainArgs, root) -> dict:
    from data.rwku import resolve_target
    from RS.quick_eval import score_probes

    out = {}
    for t in [s.strip() for s in args.target.split(",") if s.strip()]:
        target = resolve_target(t, root)
        out[target.folder] = score_probes(model, tokenizer, target, limit=args.inject_probe_limit)
    return out


def _inject_scores(accelerator, folder: str | Path, tokenizer, args: TrainArgs, root) -> dict | None:
    """Probe scores of the HF model in ``folder`` (the base model, or the run's saved final model) on the main
    process, from a plain copy read in full, while the other processes wait at a barrier: the training model may be
    sharded (an FSDP unit gathers its weights only when every process joins) or partitioned (ZeRO-3)."""
    scores = None
    if accelerator.is_main_process:
        from transformers import AutoModelForCausalLM

        with full_weights_loading(accelerator):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        scores = _inject_eval(model.to(accelerator.device).eval(), tokenizer, args, root)
        del model
    accelerator.wait_for_everyone()
    return scores


def _partial_state():
    """accelerate's process state; on a machine without CUDA it must be created with cpu=True, or processes started
    by torchrun / accelerate launch each run alone (accelerate reads LOCAL_RANK only for accelerators). On a CPU it
    opens a gloo group even for one process, on MASTER_PORT (29500 unless set): a run of one gets a free port of its
    own, so two runs on one machine, or a port inherited from the parent and taken since, cannot collide."""
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    if cpu and int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not torch.distributed.is_initialized():
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    return PartialState(cpu=cpu)


def train(args: TrainArgs) -> Path:
    """Run one training job; returns the output folder. Raises NonFiniteLossError on NaN/inf loss. The main
    process holds a lock on the output folder for the whole run (a second run into it stops at once)."""
    lock = RunDirLock(args.output_dir, "RS.train run").acquire() if _partial_state().is_main_process else None
    try:
        return _train(args)
    finally:
        if lock is not None:
            lock.release()


def sync_each_batch(args: TrainArgs) -> bool:
    """Whether gradients are reduced on every accumulation micro-step. ``auto``: under FSDP (accelerate launch with
    an FSDP config exports ACCELERATE_USE_FSDP; accelerate uses FSDP only with GPUs), where accelerate's ``no_sync``
    would keep a full unsharded fp32 gradient on every GPU between micro-steps (32 GB for 8B); with it each
    micro-step reduce-scatters into the sharded gradient. Under DDP, no_sync only saves communication."""
    if args.sync_each_batch == "auto":
        return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and torch.cuda.is_available()
    return args.sync_each_batch == "true"


def _build_accelerator(args: TrainArgs):
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


def _plan_batch(args: TrainArgs, n_proc: int) -> TrainArgs:
    """--total_batch_size: the same effective batch (so the same steps per epoch) on any number of processes."""
    import dataclasses

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


def _write_run_files(run, data, path: str) -> None:
    args, acc = run.args, run.accelerator
    atomic_write_json(run.out / "run_args.json", args_to_dict(args))
    atomic_write_json(run.out / "run_info.json", run_info(
        args.seed, [str(p) for p in data.files], stage=run.stage.name, model_path=path, n_train=len(data.train),
        n_val=len(data.val), n_heldout=len(data.heldout), n_retain=len(data.retain),
        platform=platform.platform(), world_size=acc.num_processes,
        effective_batch=args.per_device_train_batch_size * acc.num_processes * args.gradient_accumulation_steps,
        per_device_batch=args.per_device_train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        steps_per_epoch=run.steps_per_epoch, sync_each_batch=sync_each_batch(args)))
    if data.heldout:
        atomic_write_json(run.out / "heldout.json", data.heldout)


def _loaders(args: TrainArgs, data, stage: Stage, pad: int):
    """(train, validation, retain or None) data loaders; shuffles seeded by --seed."""
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data.train, batch_size=args.per_device_train_batch_size, shuffle=True, generator=gen,
                        collate_fn=lambda f: collate(f, pad))
    val_loader = DataLoader(data.val, batch_size=args.per_device_train_batch_size, collate_fn=lambda f: collate(f, pad))
    if not stage.retain:
        return loader, val_loader, None
    if not data.retain:
        raise ValueError(f"stage {stage.name} needs a retain corpus but none was built")
    retain = DataLoader(data.retain, batch_size=args.per_device_train_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed + 1), collate_fn=lambda f: collate(f, pad))
    return loader, val_loader, retain


class _StepLoss:
    """The logged loss parts of one optimizer step and, with --loss_reduction global_token_mean, its gradient
    normalisation. There each micro-step's loss is its token sum; once the step's gradient is synced (averaged over
    processes by DDP/FSDP, divided by the accumulation steps by accelerate) it is multiplied by processes x
    accumulation / N, N = the labelled tokens of every micro-batch of the step on every process: the gradient of
    sum(token losses) / N, the token mean over the whole effective batch that the release's one-process batch of 8
    computes, whatever the split into processes and micro-steps."""

    def __init__(self, global_mean: bool):
        self.global_mean = global_mean
        self.values: dict[str, list[float]] = {}
        self.tokens = 0

    def add(self, parts: dict, labels: torch.Tensor | None) -> None:
        for k, v in parts.items():
            self.values.setdefault(k, []).append(v.item())
        if self.global_mean:
            self.tokens += losses.labelled_tokens(labels)

    def finish(self, accelerator, optimizer) -> dict[str, list[float]]:
        """At the step's last micro-step: normalise the gradient (global mean); the values to log."""
        values, tokens, self.values, self.tokens = self.values, self.tokens, {}, 0
        if not self.global_mean:
            return values
        keys = sorted(values)
        totals = torch.tensor([tokens] + [sum(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
        totals = accelerator.reduce(totals, reduction="sum")
        n = max(1.0, float(totals[0]))
        scale_gradients(optimizer, accelerator.num_processes * accelerator.gradient_accumulation_steps / n)
        return {k: [float(totals[i + 1]) / n] for i, k in enumerate(keys)}


@torch.no_grad()
def scale_gradients(optimizer, factor: float) -> None:
    """Multiply the gradient of every parameter the optimizer updates (its local shard under FSDP) by ``factor``."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(factor)


@dataclass
class _Run:
    """What the training loop's helpers share."""

    args: TrainArgs
    stage: Stage
    accelerator: Any
    out: Path
    steps_per_epoch: int = 0
    total_steps: int = 0
    model: Any = None
    ref: Any = None
    tokenizer: Any = None
    optimizer: Any = None
    scheduler: Any = None
    log_f: Any = None
    bar: Any = None
    t_start: float = field(default_factory=time.time)
    last_good: str | None = None


def _micro_step(run: _Run, batch: dict, rbatch: dict | None, tally: _StepLoss, step: int, epoch: int) -> dict:
    """One micro-step (forward, backward) and, at the step's last one, the gradient normalisation, clipping and the
    optimizer/scheduler update (accelerate skips them on the other micro-steps); the logged values, or {}."""
    acc, args = run.accelerator, run.args
    logged: dict[str, list[float]] = {}
    with acc.accumulate(run.model):
        parts = compute_loss(run.stage, args, run.model, run.ref, batch, rbatch)
        if not torch.isfinite(parts["loss"]).all():
            raise NonFiniteLossError(
                f"non-finite loss {parts['loss'].item()} at step {step + 1} (epoch {epoch}); training stopped. Last "
                f"good checkpoint: {run.last_good or 'none'}. Lower --learning_rate or check data.")
        acc.backward(parts["loss"])
        tally.add(parts, batch.get("labels"))
        if acc.sync_gradients:
            logged = tally.finish(acc, run.optimizer)
            if args.max_grad_norm > 0:
                logged["grad_norm"] = [float(acc.clip_grad_norm_(run.model.parameters(), args.max_grad_norm))]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return logged


def _refusal_check(run: _Run, check_prompts: list[str], step: int, stopped_at: dict | None) -> dict | None:
    """--refusal_stop: every --refusal_check_steps steps, the share of held-out questions refused; the stop point
    once it reaches the threshold."""
    args = run.args
    if not check_prompts or stopped_at or step % args.refusal_check_steps or step >= run.total_steps:
        return stopped_at
    share, answers = refusal_stop.refusal_share(run.accelerator.unwrap_model(run.model), run.tokenizer, check_prompts)
    check = {"step": step, "refusal_share": round(share, 4), "n": len(answers)}
    with open(run.out / "refusal_checks.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**check, "answers": answers}) + "\n")
    run.bar.set_postfix(refused=f"{share:.2f}")
    if share < args.refusal_stop:
        return None
    stopped_at = {**check, "stop_step": min(run.total_steps, step + args.refusal_stop_after)}
    logger.info("refusal stop: %d of %d held-out questions refused at step %d (>= %.2f); stopping at step %d",
                round(share * len(answers)), len(answers), step, args.refusal_stop, stopped_at["stop_step"])
    return stopped_at


def _log(run: _Run, row: dict) -> None:
    if run.log_f:
        run.log_f.write(json.dumps(row) + "\n")
        run.log_f.flush()


def _save_epoch(run: _Run, epoch: int, step: int) -> None:
    """checkpoint-epoch-<epoch>, then --save_total_limit's pruning (never the --save_keep_epochs ones)."""
    ck = run.out / f"checkpoint-epoch-{epoch}"
    save_hf_checkpoint(run.accelerator, run.model, run.tokenizer, ck, dtype=save_dtype(run.args),
                       extra={"epoch": epoch, "global_step": step, "stage": run.stage.name})
    run.last_good = str(ck)
    if run.accelerator.is_main_process:
        for path in prune_epoch_checkpoints(run.out, run.args.save_total_limit, keep_epochs(run.args.save_keep_epochs)):
            logger.info("save_total_limit %d: removed %s", run.args.save_total_limit, path.name)
    run.accelerator.wait_for_everyone()


def _inject_before(run: _Run, path: str, root) -> dict | None:
    t0 = time.time()
    before = _inject_scores(run.accelerator, path, run.tokenizer, run.args, root)
    if before is not None:
        atomic_write_json(run.out / "inject_eval_before.json", {
            t: {"scores": v["scores"], "seconds": round(time.time() - t0, 1), "generations": v["generations"]}
            for t, v in before.items()})
        print(f"before injection: { {k: v['scores'] for k, v in before.items()} } ({time.time() - t0:.0f}s)",
              flush=True)
    return before


def _inject_after(run: _Run, before: dict | None, root, summary: dict) -> None:
    t0 = time.time()
    after = _inject_scores(run.accelerator, run.out, run.tokenizer, run.args, root)
    if after is None:
        return
    res = {t: {"before": before[t]["scores"], "after": after[t]["scores"],
               "generations_after": after[t]["generations"]} for t in after}
    atomic_write_json(run.out / "inject_eval.json", res)
    summary["inject_scores"] = {t: {"before": r["before"], "after": r["after"]} for t, r in res.items()}
    summary["eval_seconds_after"] = round(time.time() - t0, 1)
    print(f"after injection: {summary['inject_scores']}", flush=True)


def _train(args: TrainArgs) -> Path:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    torch.set_num_threads(max(1, args.num_threads))
    stage = get_stage(args.stage)
    args = _plan_batch(args, _partial_state().num_processes)
    accelerator = _build_accelerator(args)
    set_seed(args.seed)
    out = _prepare_output_dir(args) if accelerator.is_main_process else Path(args.output_dir)
    accelerator.wait_for_everyone()
    run = _Run(args, stage, accelerator, out)
    root = args.data_dir or None
    path, model, run.tokenizer, _ = _load_model(args)
    data = build_data(args, run.tokenizer, stage, root)
    if stage.name == "inject":  # varied mode: + the base model's own answers to general instructions (replay)
        from RS.inject_data import add_replay_and_describe

        with accelerator.main_process_first():  # the others read the main process's cached answers, not their own
            add_replay_and_describe(args, data, model, run.tokenizer, path, root, out, accelerator.is_main_process)
    if not data.train:
        raise ValueError("no training examples left (check --max_samples / --train_fraction / --val_size)")
    run.steps_per_epoch = epoch_steps(len(data.train), args.per_device_train_batch_size, accelerator.num_processes,
                                      args.gradient_accumulation_steps)
    if accelerator.is_main_process:
        _write_run_files(run, data, path)
    before = _inject_before(run, path, root) if stage.name == "inject" and args.eval_probes else None

    loader, val_loader, retain_loader = _loaders(args, data, stage, run.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    n_epochs = math.ceil(args.num_train_epochs)
    run.total_steps = (args.max_steps if args.max_steps > 0
                       else max(1, math.ceil(run.steps_per_epoch * args.num_train_epochs)))
    # accelerate's prepared scheduler advances num_processes times per optimizer step (its documented convention)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=min(args.warmup_steps, run.total_steps) * accelerator.num_processes,
                              num_training_steps=run.total_steps * accelerator.num_processes)
    run.model, run.optimizer, loader, val_loader, run.scheduler = accelerator.prepare(model, optimizer, loader,
                                                                                      val_loader, scheduler)
    if retain_loader is not None:
        retain_loader = accelerator.prepare(retain_loader)
    run.ref = _load_ref(path, args.bf16, accelerator) if stage.needs_ref else None
    retain_iter = itertools.cycle(retain_loader) if retain_loader is not None else None

    log_path = out / "train_log.jsonl"
    run.log_f = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    check_prompts = refusal_stop.check_prompts(data.stop_check, run.tokenizer) if args.refusal_stop else []
    stopped_at: dict | None = None  # the --refusal_stop check that ended training
    run.bar = progress(run.total_steps, f"RS[{stage.name}]", disable=not accelerator.is_local_main_process)
    step, tally, acc = 0, _StepLoss(args.loss_reduction == "global_token_mean"), {}
    run.model.train()
    try:
        for epoch in range(1, n_epochs + 1):
            for batch in loader:
                logged = _micro_step(run, batch, next(retain_iter) if retain_iter else None, tally, step, epoch)
                if not logged:
                    continue
                step += 1
                for k, v in logged.items():
                    acc.setdefault(k, []).extend(v)
                run.bar.update(1)
                run.bar.set_postfix(loss=f"{acc['loss'][-1]:.4f}")
                if step % max(1, args.logging_steps) == 0 or step == run.total_steps:
                    _log(run, {"step": step, "epoch": round(step / run.steps_per_epoch, 4),
                               "lr": run.scheduler.get_last_lr()[0], "time": round(time.time() - run.t_start, 1),
                               **{k: sum(v) / len(v) for k, v in acc.items()}})
                    acc = {}
                stopped_at = _refusal_check(run, check_prompts, step, stopped_at)
                if step >= run.total_steps or (stopped_at and step >= stopped_at["stop_step"]):
                    break
            if data.val:
                _log(run, {"step": step, "epoch": epoch,
                           "val_loss": _val_loss(run.model, val_loader, accelerator, args.loss_window)})
            if args.save_strategy == "epoch":
                _save_epoch(run, epoch, step)
            if step >= run.total_steps or (stopped_at and step >= stopped_at["stop_step"]):
                break
    except NonFiniteLossError as e:
        if accelerator.is_main_process:
            atomic_write_json(out / "FAILED.json",
                              {"error": str(e), "step": step, "last_good_checkpoint": run.last_good})
        raise
    finally:
        run.bar.close()
        if run.log_f:
            run.log_f.close()

    save_hf_checkpoint(accelerator, run.model, run.tokenizer, out, into_existing=True, dtype=save_dtype(args),
                       extra={"epoch": args.num_train_epochs, "global_step": step, "stage": stage.name})
    summary = {"stage": stage.name, "global_step": step, "train_seconds": round(time.time() - run.t_start, 1)}
    if args.refusal_stop:
        summary["refusal_stop"] = stopped_at or {"step": None, "reason": f"not reached by max_steps {run.total_steps}"}
    if stage.name == "inject" and args.eval_probes:
        _inject_after(run, before, root, summary)
    if accelerator.is_main_process:
        if args.plot_loss:
            _plot_loss(log_path, out / "loss.png")
        atomic_write_json(out / "DONE", summary)
    accelerator.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        args = parse_args(argv)
    except ValueError as exc:  # validate_args: a bad flag value
        raise UserError(str(exc)) from None
    logger.info("precision: %s (%s)", "bf16 autocast, fp32 master weights" if args.bf16 else "fp32",
                getattr(args, "precision_note", "set explicitly"))
    try:
        train(args)
    except NonFiniteLossError as e:
        logger.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    from verl.utils.cli import run_main

    run_main(main)
