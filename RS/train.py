"""``python -m RS.train``: Rejection Steering SFT, knowledge injection and the SFT-style unlearning baselines.

One loop (accelerate.Accelerator, so ``accelerate launch --config_file RS/configs/accelerate_fsdp.yaml -m RS.train``
works) serves every stage of ``RS.stages``. Outputs in ``--output_dir``: ``checkpoint-epoch-<k>/`` per epoch
(``--save_strategy epoch``) and the final model at the top (HF folders, safetensors + tokenizer, LoRA merged),
``train_log.jsonl``, ``loss.png``, ``run_args.json``, ``run_info.json`` (git commit, data sha256), ``heldout.json``
(``--train_fraction``), ``inject_eval.json`` (stage inject) and the ``DONE`` marker.

Under FSDP (RS/configs/accelerate_fsdp.yaml, _fsdp_offload.yaml) the frozen reference of NPO/DPO/KLR is sharded
like the policy, gradient accumulation reduces each micro-step (no unsharded gradient is kept), and the injection
scores are computed on the main process from a plain copy of the saved model while the other processes wait.

``_train`` runs the units in order, each in a file named for what it holds: processes and accelerator
(RS/launch.py), output folder and markers (RS/run_dir.py), models (RS/models.py), data (RS/datasets.py,
RS/loaders.py), the step (RS/step.py: losses from RS/losses.py's registries), the log (RS/train_log.py), the
refusal stop (RS/refusal_stop.py), checkpoints (RS/checkpoint.py) and the injection scores (RS/inject_eval.py);
RS/run.py holds the state they share.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch

from RS.args import TrainArgs, parse_args
from RS.args import steps_per_epoch as epoch_steps
from RS.checkpoint import save_epoch, save_final
from RS.datasets import build_data
from RS.inject_data import add_replay_and_describe
from RS.inject_eval import evaluates_injection, inject_after, inject_before
from RS.launch import build_accelerator, partial_state, plan_batch, sync_each_batch
from RS.loaders import Loaders, make_loaders
from RS.models import load_model, load_ref
from RS.refusal_stop import RefusalStop
from RS.run import Run
from RS.run_dir import OutputDirNotEmptyError, prepare_output_dir, write_done, write_failed, write_run_files
from RS.stages import get_stage
from RS.step import NonFiniteLossError, StepLoss, compute_loss, forward_logits, micro_step, val_loss
from RS.train_log import TrainLog, plot_loss
from verl.utils.cli import UserError
from verl.utils.progress import progress
from verl.utils.runlock import RunDirLock

logger = logging.getLogger("RS.train")

# the names under which tests and launch drivers reach these units through RS.train
_StepLoss, _forward_logits, _load_model, _load_ref = StepLoss, forward_logits, load_model, load_ref
_partial_state, _prepare_output_dir, _build_accelerator = partial_state, prepare_output_dir, build_accelerator
__all__ = ["train", "main", "compute_loss", "NonFiniteLossError", "OutputDirNotEmptyError", "sync_each_batch"]


def train(args: TrainArgs) -> Path:
    """Run one training job; returns the output folder. Raises NonFiniteLossError on NaN/inf loss. The main
    process holds a lock on the output folder for the whole run (a second run into it stops at once)."""
    lock = RunDirLock(args.output_dir, "RS.train run").acquire() if partial_state().is_main_process else None
    try:
        return _train(args)
    finally:
        if lock is not None:
            lock.release()


def _train(args: TrainArgs) -> Path:
    run = _start(args)
    path, model, data = _model_and_data(run)
    before = inject_before(run, path) if evaluates_injection(run) else None
    loaders = _prepare(run, path, model, data)
    log = TrainLog(run)
    stop = RefusalStop(run, data.stop_check)
    _fit(run, loaders, bool(data.val), log, stop)
    save_final(run)
    _finish(run, stop, before, log.path)
    return run.out


def _start(args: TrainArgs) -> Run:
    """Threads, the stage, the batch plan over the processes, the accelerator, the seed and the output folder."""
    from accelerate.utils import set_seed

    torch.set_num_threads(max(1, args.num_threads))
    stage = get_stage(args.stage)
    args = plan_batch(args, partial_state().num_processes)
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    out = prepare_output_dir(args) if accelerator.is_main_process else Path(args.output_dir)
    accelerator.wait_for_everyone()
    # compute_loss is read from this module when the run starts, so a launch driver may wrap it (record the parts)
    return Run(args, stage, accelerator, out, compute_loss=compute_loss)


def _model_and_data(run: Run):
    """(model path, policy, data): the tokenizer is kept in ``run``, the steps per epoch set, the run files written."""
    args, acc = run.args, run.accelerator
    path, model, run.tokenizer = load_model(args)
    data = build_data(args, run.tokenizer, run.stage, run.root)
    if run.stage.name == "inject":  # varied mode: + the base model's own answers to general instructions (replay)
        with acc.main_process_first():  # the others read the main process's cached answers, not their own
            add_replay_and_describe(args, data, model, run.tokenizer, path, run.root, run.out, acc.is_main_process)
    if not data.train:
        raise ValueError("no training examples left (check --max_samples / --train_fraction / --val_size)")
    run.steps_per_epoch = epoch_steps(len(data.train), args.per_device_train_batch_size, acc.num_processes,
                                      args.gradient_accumulation_steps)
    if acc.is_main_process:
        write_run_files(run, data, path)
    return path, model, data


def _prepare(run: Run, path: str, model, data) -> Loaders:
    """Loaders, optimizer and schedule, all prepared by accelerate with the model; the reference when needed."""
    from transformers import get_scheduler

    args, acc = run.args, run.accelerator
    loaders = make_loaders(args, data, run.stage, run.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    run.total_steps = (args.max_steps if args.max_steps > 0
                       else max(1, math.ceil(run.steps_per_epoch * args.num_train_epochs)))
    # accelerate's prepared scheduler advances num_processes times per optimizer step (its documented convention)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=min(args.warmup_steps, run.total_steps) * acc.num_processes,
                              num_training_steps=run.total_steps * acc.num_processes)
    run.model, run.optimizer, train, val, run.scheduler = acc.prepare(model, optimizer, loaders.train, loaders.val,
                                                                      scheduler)
    retain = acc.prepare(loaders.retain) if loaders.retain is not None else None
    run.ref = load_ref(path, args.bf16, acc) if run.stage.needs_ref else None
    return Loaders(train, val, retain)


def _fit(run: Run, loaders: Loaders, validate: bool, log: TrainLog, stop: RefusalStop) -> None:
    """The epochs: steps, then per epoch the validation loss (``validate``) and the epoch checkpoint. A NaN loss
    writes FAILED.json and stops the run; the log and progress bar are closed either way."""
    args = run.args
    run.bar = progress(run.total_steps, f"RS[{run.stage.name}]", disable=not run.accelerator.is_local_main_process)
    tally = StepLoss(args.loss_reduction == "global_token_mean")
    run.model.train()
    try:
        for epoch in range(1, math.ceil(args.num_train_epochs) + 1):
            _epoch(run, loaders, tally, epoch, log, stop)
            if validate:
                log.write({"step": run.step, "epoch": epoch, "val_loss": val_loss(run.model, loaders.val,
                                                                                  args.loss_window)})
            if args.save_strategy == "epoch":
                save_epoch(run, epoch)
            if run.finished(stop.stopped_at):
                break
    except NonFiniteLossError as e:
        write_failed(run, e)
        raise
    finally:
        run.bar.close()
        log.close()


def _epoch(run: Run, loaders: Loaders, tally: StepLoss, epoch: int, log: TrainLog, stop: RefusalStop) -> None:
    """The micro-steps of one epoch; after each optimizer step the log, the refusal check and the stop test."""
    for batch in loaders.train:
        logged = micro_step(run, batch, loaders.next_retain(), tally, epoch)
        if not logged:
            continue
        run.step += 1
        log.add(logged)
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{log.last_loss:.4f}")
        log.step_row()
        stop.check()
        if run.finished(stop.stopped_at):
            break


def _finish(run: Run, stop: RefusalStop, before: dict | None, log_path: Path) -> None:
    """The summary (with the refusal stop and the injection scores after training), loss.png and DONE."""
    summary = {"stage": run.stage.name, "global_step": run.step, "train_seconds": round(time.time() - run.t_start, 1)}
    if run.args.refusal_stop:
        summary["refusal_stop"] = stop.summary()
    if evaluates_injection(run):
        inject_after(run, before, summary)
    if run.is_main and run.args.plot_loss:
        plot_loss(log_path, run.out / "loss.png")
    write_done(run, summary)
    run.accelerator.wait_for_everyone()


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
