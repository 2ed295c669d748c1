"""The state the units of an RS.train run share: RS/train.py builds it, then each unit reads and fills it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from RS.args import TrainArgs
from RS.stages import Stage


@dataclass
class Run:
    """One RS.train run: its settings, processes and output folder; the model, optimizer and schedule once
    prepared; the optimizer steps taken."""

    args: TrainArgs
    stage: Stage
    accelerator: Any  # accelerate.Accelerator
    out: Path
    compute_loss: Callable[..., dict]  # (stage, args, model, ref, batch, retain_batch) -> loss parts
    steps_per_epoch: int = 0
    total_steps: int = 0
    step: int = 0  # optimizer steps taken
    model: Any = None
    ref: Any = None
    tokenizer: Any = None
    optimizer: Any = None
    scheduler: Any = None
    bar: Any = None
    t_start: float = field(default_factory=time.time)
    last_good: str | None = None  # the newest epoch checkpoint, named when a NaN stops the run

    @property
    def root(self) -> str | None:
        """The data root (--data_dir; None: $RULE_DATA_DIR, then ./data)."""
        return self.args.data_dir or None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def finished(self, stopped_at: dict | None) -> bool:
        """Whether training ends now: the step budget is spent, or --refusal_stop's stop step is reached."""
        return self.step >= self.total_steps or bool(stopped_at and self.step >= stopped_at["stop_step"])
