"""The files an RS.train run writes into --output_dir besides its checkpoints and log: the folder's preparation,
``run_args.json``, ``run_info.json``, ``heldout.json`` and the end markers ``DONE`` / ``FAILED.json``."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from RS.args import TrainArgs, args_to_dict
from RS.launch import sync_each_batch
from RS.run import Run
from verl.utils.cli import UserError
from verl.utils.io import atomic_write_json
from verl.utils.runinfo import run_info
from verl.utils.runlock import LOCK_NAME

# what an RS.train run writes into --output_dir: --overwrite_output_dir removes these so runs never mix (a log
# reading steps 1, 2, 3, 1, 2, or another run's checkpoint-epoch-* folders); other files of the folder are kept
RUN_OUTPUTS = ("DONE", "FAILED.json", "train_log.jsonl", "loss.png", "run_args.json", "run_info.json", "heldout.json",
               "refusal_checks.jsonl", "inject_eval.json", "inject_eval_before.json", "model.safetensors",
               "model.safetensors.index.json")
RUN_OUTPUT_GLOBS = ("checkpoint-epoch-*", "model-*-of-*.safetensors", "adapter")


class OutputDirNotEmptyError(UserError, FileExistsError):
    """--output_dir holds another run's files."""


def prepare_output_dir(args: TrainArgs) -> Path:
    """--output_dir, created; an earlier run's outputs removed with --overwrite_output_dir, else refused."""
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


def write_run_files(run: Run, data, path: str) -> None:
    """run_args.json, run_info.json (provenance, data sizes, the batch plan) and heldout.json (main process)."""
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


def write_failed(run: Run, error: Exception) -> None:
    """FAILED.json (main process): the error, the steps taken and the last good checkpoint."""
    if run.is_main:
        atomic_write_json(run.out / "FAILED.json",
                          {"error": str(error), "step": run.step, "last_good_checkpoint": run.last_good})


def write_done(run: Run, summary: dict) -> None:
    """DONE (main process): the marker the pipeline waits for, holding the run's summary."""
    if run.is_main:
        atomic_write_json(run.out / "DONE", summary)
