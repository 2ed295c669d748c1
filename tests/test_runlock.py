"""``verl.utils.runlock.RunDirLock``: a second trainer or RS.train run on a live run directory is refused, naming
the holder; the lock goes with its process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_a_second_trainer_on_a_live_run_dir_is_refused(tmp_path, tiny_model_path):
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer
    from verl.utils.runlock import RunDirInUseError, RunDirLock

    run = tmp_path / "run"
    held = RunDirLock(run, "trainer").acquire()  # the "old trainer, still running"
    try:
        with pytest.raises(RunDirInUseError, match=rf"{run} is in use by another trainer \(pid {os.getpid()}"):
            RayPPOTrainer(load_config(None, [f"trainer.save_dir={run}", f"worker.actor.model_path={tiny_model_path}"]))
    finally:
        held.release()
    with RunDirLock(run):  # released: the next run may start (a killed holder's lock goes with its process)
        pass


def test_lock_dies_with_its_process(tmp_path):
    from verl.utils.runlock import RunDirLock

    code = f"from verl.utils.runlock import RunDirLock; RunDirLock({str(tmp_path)!r}).acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    with RunDirLock(tmp_path):
        pass


def test_rs_output_dir_is_locked(tmp_path):
    from RS.args import parse_args
    from RS.train import train
    from verl.utils.runlock import RunDirInUseError, RunDirLock

    out = tmp_path / "rs"
    args = parse_args(["--stage", "rt", "--target", "101", "--output_dir", str(out)])
    with RunDirLock(out):
        with pytest.raises(RunDirInUseError, match="in use by another RS.train run"):
            train(args)
