"""``python -m RS.train``: Rejection Steering SFT, knowledge injection and the SFT-style unlearning baselines.

One loop (accelerate.Accelerator, so ``accelerate launch --config_file RS/configs/accelerate_fsdp.yaml -m RS.train``
works) serves every stage of ``RS.stages``. Outputs in ``--output_dir``: ``checkpoint-epoch-<k>/`` per epoch
(``--save_strategy epoch``) and the final model at the top (HF folders, safetensors + tokenizer, LoRA merged),
``train_log.jsonl``, ``loss.png``, ``run_args.json``, ``run_info.json`` (git commit, data sha256), ``heldout.json``
(``--train_fraction``), ``inject_eval.json`` (stage inject) and the ``DONE`` marker.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from RS import losses, refusal_stop
from RS.args import TrainArgs, args_to_dict, batch_plan, parse_args
from RS.args import steps_per_epoch as epoch_steps
from RS.checkpoint import save_hf_checkpoint
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
    ref = None
    if args.finetuning_type == "lora":
        from peft import LoraConfig, get_peft_model

        target = "all-linear" if args.lora_target == "all" else [m.strip() for m in args.lora_target.split(",")]
        cfg = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         target_modules=target, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    return path, model, tokenizer, ref


def _load_ref(path: str, bf16: bool = False):
    """The frozen original model (NPO/DPO reference, KLR). Not sharded: each process holds a full copy."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32,
                                               use_safetensors=True)
    ref.eval()
    ref.requires_grad_(False)
    return ref


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
    """The stage's total loss and its parts (tensors) for one micro-batch."""
    w = args.loss_window
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
            parts["forget"] = losses.nll_loss(logits, labels)
        elif stage.forget_loss == "ga":
            parts["forget"] = losses.ga_loss(logits, labels)
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
        r_logits, r_labels = _forward_logits(model, retain_batch, window=w)
        if stage.retain == "nll":
            parts["retain"] = losses.nll_loss(r_logits, r_labels)
        else:
            with torch.no_grad():
                ref_logits, _ = _forward_logits(ref, retain_batch, window=w)
            parts["retain"] = losses.kl_loss(r_logits, ref_logits, r_labels)
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


def _train(args: TrainArgs) -> Path:
    import dataclasses

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    torch.set_num_threads(max(1, args.num_threads))
    stage = get_stage(args.stage)
    # --total_batch_size: the same effective batch (so the same steps per epoch) on any number of processes
    n_proc = _partial_state().num_processes
    per_device, accum = batch_plan(args.total_batch_size, args.per_device_train_batch_size, n_proc,
                                   args.gradient_accumulation_steps)
    if (per_device, accum) != (args.per_device_train_batch_size, args.gradient_accumulation_steps):
        logger.info("total_batch_size %d on %d process(es): per-device batch %d x accumulation %d",
                    args.total_batch_size, n_proc, per_device, accum)
        args = dataclasses.replace(args, per_device_train_batch_size=per_device, gradient_accumulation_steps=accum)
    if args.refusal_stop and n_proc > 1:
        raise UserError("--refusal_stop generates with the whole model on one process; run RS on one process or "
                        "drop --refusal_stop (use --max_steps)")
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision="bf16" if args.bf16 else "no")
    set_seed(args.seed)
    out = _prepare_output_dir(args) if accelerator.is_main_process else Path(args.output_dir)
    accelerator.wait_for_everyone()
    root = args.data_dir or None
    t_start = time.time()
    path, model, tokenizer, _ = _load_model(args)
    ref = _load_ref(path, args.bf16) if stage.needs_ref else None
    data = build_data(args, tokenizer, stage, root)
    if stage.name == "inject":  # varied mode: + the base model's own answers to general instructions (replay)
        from RS.inject_data import add_replay_and_describe

        add_replay_and_describe(args, data, model, tokenizer, path, root, out, accelerator.is_main_process)
    if not data.train:
        raise ValueError("no training examples left (check --max_samples / --train_fraction / --val_size)")
    steps_per_epoch = epoch_steps(len(data.train), args.per_device_train_batch_size, accelerator.num_processes,
                                  args.gradient_accumulation_steps)

    if accelerator.is_main_process:
        atomic_write_json(out / "run_args.json", args_to_dict(args))
        atomic_write_json(out / "run_info.json", run_info(
            args.seed, [str(p) for p in data.files], stage=stage.name, model_path=path, n_train=len(data.train),
            n_val=len(data.val), n_heldout=len(data.heldout), n_retain=len(data.retain),
            platform=platform.platform(), world_size=accelerator.num_processes,
            effective_batch=args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
            per_device_batch=args.per_device_train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
            steps_per_epoch=steps_per_epoch))
        if data.heldout:
            atomic_write_json(out / "heldout.json", data.heldout)

    before = None
    if stage.name == "inject" and args.eval_probes and accelerator.is_main_process:
        t0 = time.time()
        before = _inject_eval(model, tokenizer, args, root)
        atomic_write_json(out / "inject_eval_before.json", {t: {"scores": v["scores"], "seconds": round(time.time() - t0, 1),
                                                          "generations": v["generations"]} for t, v in before.items()})
        print(f"before injection: { {k: v['scores'] for k, v in before.items()} } ({time.time() - t0:.0f}s)", flush=True)

    pad = tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data.train, batch_size=args.per_device_train_batch_size, shuffle=True, generator=gen,
                        collate_fn=lambda f: collate(f, pad))
    val_loader = DataLoader(data.val, batch_size=args.per_device_train_batch_size, collate_fn=lambda f: collate(f, pad))
    retain_loader = None
    if stage.retain:
        if not data.retain:
            raise ValueError(f"stage {stage.name} needs a retain corpus but none was built")
        retain_loader = DataLoader(data.retain, batch_size=args.per_device_train_batch_size, shuffle=True,
                                   generator=torch.Generator().manual_seed(args.seed + 1),
                                   collate_fn=lambda f: collate(f, pad))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    n_epochs = math.ceil(args.num_train_epochs)
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(steps_per_epoch * args.num_train_epochs))
    # accelerate's prepared scheduler advances num_processes times per optimizer step (its documented convention)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=min(args.warmup_steps, total_steps) * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, loader, val_loader, scheduler = accelerator.prepare(model, optimizer, loader, val_loader,
                                                                          scheduler)
    if retain_loader is not None:
        retain_loader = accelerator.prepare(retain_loader)
    if ref is not None:
        ref = ref.to(accelerator.device)
    retain_iter = itertools.cycle(retain_loader) if retain_loader is not None else None
    lora_scaling = args.lora_alpha / args.lora_rank if args.finetuning_type == "lora" else None

    log_path = out / "train_log.jsonl"
    log_f = open(log_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    check_prompts = refusal_stop.check_prompts(data.stop_check, tokenizer) if args.refusal_stop else []
    stopped_at: dict | None = None  # the --refusal_stop check that ended training
    bar = progress(total_steps, f"RS[{stage.name}]", disable=not accelerator.is_local_main_process)
    step, last_good = 0, None
    acc: dict[str, list[float]] = {}
    model.train()
    try:
        for epoch in range(1, n_epochs + 1):
            for batch in loader:
                with accelerator.accumulate(model):
                    rbatch = next(retain_iter) if retain_iter is not None else None
                    parts = compute_loss(stage, args, model, ref, batch, rbatch)
                    if not torch.isfinite(parts["loss"]).all():
                        raise NonFiniteLossError(
                            f"non-finite loss {parts['loss'].item()} at step {step + 1} (epoch {epoch}); training "
                            f"stopped. Last good checkpoint: {last_good or 'none'}. Lower --learning_rate or check data."
                        )
                    accelerator.backward(parts["loss"])
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                for k, v in parts.items():
                    acc.setdefault(k, []).append(v.item())
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{acc['loss'][-1]:.4f}")
                if step % max(1, args.logging_steps) == 0 or step == total_steps:
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                           "lr": scheduler.get_last_lr()[0], "time": round(time.time() - t_start, 1)}
                    row.update({k: sum(v) / len(v) for k, v in acc.items()})
                    acc = {}
                    if log_f:
                        log_f.write(json.dumps(row) + "\n")
                        log_f.flush()
                if check_prompts and not stopped_at and step % args.refusal_check_steps == 0 and step < total_steps:
                    share, answers = refusal_stop.refusal_share(accelerator.unwrap_model(model), tokenizer, check_prompts)
                    check = {"step": step, "refusal_share": round(share, 4), "n": len(answers)}
                    with open(out / "refusal_checks.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps({**check, "answers": answers}) + "\n")
                    bar.set_postfix(loss=f"{parts['loss'].item():.4f}", refused=f"{share:.2f}")
                    if share >= args.refusal_stop:
                        stopped_at = {**check, "stop_step": min(total_steps, step + args.refusal_stop_after)}
                        logger.info("refusal stop: %d of %d held-out questions refused at step %d (>= %.2f); "
                                    "stopping at step %d", round(share * len(answers)), len(answers), step,
                                    args.refusal_stop, stopped_at["stop_step"])
                if step >= total_steps or (stopped_at and step >= stopped_at["stop_step"]):
                    break
            if data.val:
                vl = _val_loss(model, val_loader, accelerator, args.loss_window)
                if log_f:
                    log_f.write(json.dumps({"step": step, "epoch": epoch, "val_loss": vl}) + "\n")
                    log_f.flush()
            if args.save_strategy == "epoch":
                ck = out / f"checkpoint-epoch-{epoch}"
                save_hf_checkpoint(accelerator, model, tokenizer, ck, lora_scaling,
                                   extra={"epoch": epoch, "global_step": step, "stage": stage.name})
                last_good = str(ck)
            if step >= total_steps or (stopped_at and step >= stopped_at["stop_step"]):
                break
    except NonFiniteLossError as e:
        if accelerator.is_main_process:
            atomic_write_json(out / "FAILED.json", {"error": str(e), "step": step, "last_good_checkpoint": last_good})
        raise
    finally:
        bar.close()
        if log_f:
            log_f.close()

    save_hf_checkpoint(accelerator, model, tokenizer, out, lora_scaling, into_existing=True,
                       extra={"epoch": args.num_train_epochs, "global_step": step, "stage": stage.name})
    summary = {"stage": stage.name, "global_step": step, "train_seconds": round(time.time() - t_start, 1)}
    if args.refusal_stop:
        summary["refusal_stop"] = stopped_at or {"step": None, "reason": f"not reached by max_steps {total_steps}"}
    if stage.name == "inject" and args.eval_probes and accelerator.is_main_process:
        t0 = time.time()
        after = _inject_eval(accelerator.unwrap_model(model), tokenizer, args, root)
        res = {t: {"before": before[t]["scores"], "after": after[t]["scores"],
                   "generations_after": after[t]["generations"]} for t in after}
        atomic_write_json(out / "inject_eval.json", res)
        summary["inject_scores"] = {t: {"before": r["before"], "after": r["after"]} for t, r in res.items()}
        summary["eval_seconds_after"] = round(time.time() - t0, 1)
        print(f"after injection: {summary['inject_scores']}", flush=True)
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
    try:
        train(args)
    except NonFiniteLossError as e:
        logger.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    from verl.utils.cli import run_main

    run_main(main)
