"""Checkpoint directories: ``<run>/checkpoints/global_step_<N>/`` written as a temp dir then renamed.

A checkpoint is complete when it has the ``COMPLETE`` marker (written last, before the rename). Leftover temp
dirs (a run killed mid-save) and dirs without the marker are ignored by resume and cleaned up on the next save.
Layout: ``actor/`` (HF folder: safetensors + config + tokenizer), ``critic/`` (PPO), ``worker_rank<r>.pt``
(optimizer, scheduler, RNG per rank), ``trainer_state.json`` (step, data sampler, KL controller).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)
MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^global_step_(\d+)$")
TMP_DIR = re.compile(r"^\.tmp-global_step_\d+(?:-(\d+))?$")  # -<pid> of the writer (absent in older runs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class CheckpointManager:
    def __init__(self, run_dir: str | Path, save_limit: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.save_limit = save_limit

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            m = STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / MARKER).is_file():
                out.append((int(m.group(1)), d))
        return sorted(out)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    def begin(self, step: int) -> Path:
        """A fresh temp dir ``.tmp-global_step_<step>-<pid>``. Stale temp dirs (their writer is dead) and incomplete
        step dirs are removed first; a temp dir of another live process is left alone (the run-dir lock normally
        keeps a second trainer out altogether)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            tmp_match = TMP_DIR.match(d.name)
            if tmp_match:
                pid = tmp_match.group(1)
                if pid and int(pid) != os.getpid() and _pid_alive(int(pid)):
                    logger.warning("leaving %s alone: process %s that writes it is alive", d, pid)
                    continue
            elif not (STEP_DIR.match(d.name) and not (d / MARKER).is_file()):
                continue
            logger.warning("removing incomplete checkpoint %s", d)
            shutil.rmtree(d, ignore_errors=True)
        tmp = self.root / f".tmp-global_step_{step}-{os.getpid()}"
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, step: int, trainer_state: dict) -> Path:
        """Write the trainer state and the marker into ``tmp``, rename it to ``global_step_<step>``, apply the
        save limit."""
        with open(tmp / "trainer_state.json", "w", encoding="utf-8") as f:
            json.dump(trainer_state, f, indent=1)
        (tmp / MARKER).write_text(str(step))
        final = self.root / f"global_step_{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if self.save_limit > 0:
            for _, old in self.complete()[: -self.save_limit]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load_state(ckpt: Path) -> dict:
        if not (Path(ckpt) / MARKER).is_file():
            raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {MARKER} marker)")
        with open(Path(ckpt) / "trainer_state.json", encoding="utf-8") as f:
            return json.load(f)
