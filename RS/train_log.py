"""RS.train's log: ``train_log.jsonl`` (written by the main process) with a row every --logging_steps optimizer steps
holding the means of the values logged since the previous row, a ``val_loss`` row per epoch, and ``loss.png``
drawn from it at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path

from RS.run import Run
from verl.utils.io import atomic_savefig


class TrainLog:
    """``train_log.jsonl`` of ``run`` (appended; only the main process writes) and the values pending its next row."""

    def __init__(self, run: Run):
        self.run = run
        self.path = run.out / "train_log.jsonl"
        self.file = open(self.path, "a", encoding="utf-8") if run.is_main else None
        self.pending: dict[str, list[float]] = {}

    def add(self, logged: dict[str, list[float]]) -> None:
        """The values of one optimizer step (loss parts, grad_norm)."""
        for k, v in logged.items():
            self.pending.setdefault(k, []).extend(v)

    @property
    def last_loss(self) -> float:
        return self.pending["loss"][-1]

    def step_row(self) -> None:
        """Every --logging_steps steps and at the last one: a row of the pending values' means, the epoch, lr, time."""
        run = self.run
        if run.step % max(1, run.args.logging_steps) and run.step != run.total_steps:
            return
        self.write({"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 4),
                    "lr": run.scheduler.get_last_lr()[0], "time": round(time.time() - run.t_start, 1),
                    **{k: sum(v) / len(v) for k, v in self.pending.items()}})
        self.pending = {}

    def write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def plot_loss(log_path: Path, out_png: Path) -> None:
    """loss.png: the logged loss (and its forget/retain parts for stages with a retain loss), val_loss per epoch."""
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
