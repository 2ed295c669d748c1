"""Checkpoint directories: ``<run>/checkpoints/global_step_<N>/`` written as a temp dir then renamed.

A checkpoint is complete when it has the ``COMPLETE`` marker (written last, before the rename). Leftover temp
dirs (a run killed mid-save) and dirs without the marker are ignored by resume and cleaned up on the next save.
Layout: ``actor/`` (HF folder in worker.actor.dtype: safetensors + config + tokenizer; a LoRA run's merged weights),
``actor_adapter/`` (LoRA, peft format), ``trainer_state.json`` (step, data sampler, KL controller), and the resume
state: ``worker_rank<r>.pt`` (optimizer, scheduler, RNG per rank), ``actor_master/`` (fp32 master weights when the
export is in a lower precision: a resume from bf16 weights would round away updates smaller than a bf16 step, i.e.
most of what lr 2e-6 does) and ``critic/`` (PPO). With ``trainer.resume_state=latest`` only the latest checkpoint
keeps the resume state; older kept checkpoints are trimmed to their weights once a newer one is complete. The
checkpoint of a run's last step is written without the resume state unless ``trainer.keep_resume_state``: a finished
run is resumed only to extend it, and its ``trainer_state.json`` says ``"resume_state": false`` so a resume can tell
why it cannot.
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
RESUME_ONLY = ("actor_master", "critic")  # folders a resume needs and an evaluation does not (+ worker_rank*.pt)
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
TMP_DIR = re.compile(r"^\.tmp-global_step_\d+(?:-(\d+))?$")  # -<pid> of the writer (absent in older runs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def run_checkpoint_bytes(saves: int, kept: int, resume_state: str = "latest", keep_final: bool = False,
                         **kw) -> tuple[int, int]:
    """``(peak, after)``: the bytes a run's checkpoints take at their largest (while one is written beside the
    ones kept so far) and once the run has ended, for ``saves`` saves of which ``trainer.save_limit`` = ``kept``
    stay (<= 0: all). Every save but the last holds the resume state, the last one only with ``keep_final``
    (trainer.keep_resume_state); with ``resume_state=latest`` a checkpoint loses it once a newer one is complete.
    ``kw`` as ``checkpoint_bytes``."""
    full, trimmed = checkpoint_bytes(with_optimizer=True, **kw), checkpoint_bytes(with_optimizer=False, **kw)
    held: list[int] = []
    peak = 0
    for i in range(1, saves + 1):
        new = full if i < saves or keep_final else trimmed
        peak = max(peak, sum(held) + new)
        held.append(new)
        if kept > 0:
            held = held[-kept:]
        if resume_state == "latest":
            held = [min(b, trimmed) for b in held[:-1]] + held[-1:]
    return peak, sum(held)


def checkpoint_bytes(n_params: int, dtype: str = "bfloat16", with_optimizer: bool = True, *, lora_params: int = 0,
                     critic_params: int = 0, optimizer_states: int = 2) -> int:
    """Bytes of the tensors one checkpoint holds on disk (tokenizer and config files, a few MB, are not counted).

    ``n_params``: the actor's parameters (tied weights once); ``dtype``: worker.actor.dtype, the HF export's;
    ``lora_params``: a LoRA run's adapter parameters (saved in fp32 beside the merged export; the optimizer then holds
    them only); ``critic_params``: PPO's critic (backbone + value head). ``with_optimizer``: the checkpoint keeps the
    resume state (the latest one; every one with trainer.resume_state=all): AdamW's ``optimizer_states`` fp32 moments
    per trained parameter, the fp32 master weights when ``dtype`` is not fp32 (full fine-tuning), the critic in fp32
    with its optimizer moments.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPE_BYTES)}")
    total = n_params * DTYPE_BYTES[dtype] + 4 * lora_params
    if with_optimizer:
        total += 4 * optimizer_states * (lora_params or n_params)
        if not lora_params and DTYPE_BYTES[dtype] != 4:
            total += 4 * n_params
        total += 4 * (1 + optimizer_states) * critic_params
    return total


def checkpoints_peak_bytes(kept: int, resume_state: str = "latest", **kw) -> int:
    """Peak checkpoint bytes of a run keeping ``kept`` checkpoints (trainer.save_limit, or the number of saves when
    unlimited): while a new one is written, the previous latest still has its resume state and the ``kept - 1``
    older ones (with ``latest``) are trimmed; ``kw`` as ``checkpoint_bytes``."""
    full, trimmed = checkpoint_bytes(with_optimizer=True, **kw), checkpoint_bytes(with_optimizer=False, **kw)
    if resume_state == "all":
        return (kept + 1) * full
    return 2 * full + max(0, kept - 1) * trimmed


class CheckpointManager:
    def __init__(self, run_dir: str | Path, save_limit: int = 2, resume_state: str = "latest"):
        self.root = Path(run_dir) / "checkpoints"
        self.save_limit = save_limit
        self.resume_state = resume_state

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

    def discard_partial(self) -> list[Path]:
        """Remove the temp dirs this process began and never committed (a run stopped mid-save); returns them."""
        mine = []
        if self.root.is_dir():
            for d in self.root.iterdir():
                m = TMP_DIR.match(d.name)
                if m and m.group(1) == str(os.getpid()):
                    shutil.rmtree(d, ignore_errors=True)
                    mine.append(d)
        return mine

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
        if self.resume_state == "latest":
            for _, old in self.complete()[:-1]:
                self.trim(old)
        return final

    @staticmethod
    def trim(ckpt: Path) -> None:
        """Drop what only a resume needs (``RESUME_ONLY`` folders, ``worker_rank*.pt``): the weights stay."""
        for name in RESUME_ONLY:
            shutil.rmtree(Path(ckpt) / name, ignore_errors=True)
        for f in Path(ckpt).glob("worker_rank*.pt"):
            f.unlink(missing_ok=True)

    @staticmethod
    def not_resumable_reason(ckpt: Path) -> str | None:
        """Why ``ckpt`` cannot be resumed from (None: it can): it is the last step of a finished run written
        without the resume state, or an older checkpoint trimmed to its weights."""
        if CheckpointManager.resumable(ckpt):
            return None
        try:
            state = CheckpointManager.load_state(ckpt)
        except (OSError, ValueError):
            state = {}
        if state.get("resume_state") is False:
            return (f"it is the last step ({state.get('step')}) of a finished run, saved without the resume state "
                    "(optimizer, fp32 master weights) since a finished run is resumed only to extend it: train a run "
                    "you mean to extend with trainer.keep_resume_state=true, or start a new run from these weights "
                    f"(worker.actor.model_path={Path(ckpt) / 'actor'})")
        return ("it keeps the weights only (trainer.resume_state=latest keeps the resume state in the latest "
                "checkpoint only): resume from the latest checkpoint, or start a run from these weights")

    @staticmethod
    def resumable(ckpt: Path) -> bool:
        """Whether ``ckpt`` still holds its resume state (the latest one always does)."""
        return (Path(ckpt) / "worker_rank0.pt").is_file()

    @staticmethod
    def load_state(ckpt: Path) -> dict:
        if not (Path(ckpt) / MARKER).is_file():
            raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {MARKER} marker)")
        with open(Path(ckpt) / "trainer_state.json", encoding="utf-8") as f:
            return json.load(f)
