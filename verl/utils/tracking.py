"""Metric logging to console, a JSONL file, tensorboard and wandb (each optional, selected by name)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from verl.utils.io import atomic_write_text

logger = logging.getLogger("verl.trainer")
BACKENDS = ("console", "jsonl", "tensorboard", "wandb")


class Tracker:
    """``log(metrics, step)`` to every chosen backend; ``log_generations(rows, step, tag)`` to ``generations.jsonl``
    (and the console). Files live in ``log_dir``."""

    def __init__(self, backends: list[str], log_dir: str | Path, project: str, experiment: str,
                 config: dict | None = None):
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"trainer.logger: unknown backends {unknown}; choose from {BACKENDS}")
        self.backends, self.log_dir = list(backends), Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tb = self._wandb = None
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter  # optional heavy dependency, only for this backend

            self._tb = SummaryWriter(str(self.log_dir / "tensorboard"))
        if "wandb" in backends:
            import wandb  # optional heavy dependency; WANDB_MODE=offline keeps it local, a key comes from the env

            self._wandb = wandb.init(project=project, name=experiment, config=config, dir=str(self.log_dir),
                                     mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if "console" in self.backends:
            keys = sorted(metrics)
            logger.info("step %d: %s", step, " ".join(f"{k}={_fmt(metrics[k])}" for k in keys))
        if "jsonl" in self.backends:
            with open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def log_generations(self, rows: list[dict], step: int, tag: str) -> None:
        if not rows:
            return
        with open(self.log_dir / "generations.jsonl", "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"step": step, "tag": tag, **r}, default=str) + "\n")
        if "console" in self.backends:
            r = rows[0]
            logger.info("[%s step %d] prompt=%r\n  response=%r score=%s", tag, step, r.get("prompt", "")[:200],
                        r.get("response", "")[:300], r.get("score"))

    def drop_after(self, step: int) -> int:
        """Remove the JSONL rows of steps after ``step`` (a resumed run redoes them; without this the file repeated
        them). Returns the number of rows dropped; torn lines of a killed run are dropped too."""
        dropped = 0
        for name in ("metrics.jsonl", "generations.jsonl"):
            path = self.log_dir / name
            if not path.is_file():
                continue
            keep = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    ok = int(json.loads(line).get("step", 0)) <= step
                except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                    ok = False
                if ok:
                    keep.append(line)
                else:
                    dropped += 1
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        return dropped

    def finish(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
