"""MUSE-Books files under ``<data root>/MUSE/books``, validated on load."""

from __future__ import annotations

import os
from pathlib import Path

from data.paths import resolve_data_root
from data.schemas import load_validated
from verl.utils.records import DataValidationError

# the RULE files of MUSE-Books (data.synthesize writes the ReBO pair: the release lacks REBO_TRAIN_STEM)
REBO_TRAIN_STEM = "rl_rejection_with_neighbor"
REBO_EVAL_STEM = "rl_rejection_eval_target"
# the one few-shot prefix of every qa row, in ReBO and RS (docs/design.md §11: never chosen by the row's label)
TRAIN_ICL_STEM = "knowmem/train_qa_icl"


def muse_dir(root: str | os.PathLike | None = None) -> Path:
    path = resolve_data_root(root) / "MUSE" / "books"
    if not path.is_dir():
        raise DataValidationError(f"MUSE-Books not found at {path}: set RULE_DATA_DIR or --data_dir")
    return path


def load_muse(stem: str, root: str | os.PathLike | None = None) -> list:
    """Load a MUSE file by its path stem relative to ``MUSE/books`` (e.g. ``knowmem/forget_qa``)."""
    return load_validated(muse_dir(root) / f"{stem}.json", stem)


def load_muse_text(name: str, root: str | os.PathLike | None = None) -> str:
    """Raw corpus text, e.g. ``forget`` -> ``raw/forget.txt``."""
    path = muse_dir(root) / "raw" / f"{name}.txt"
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    return path.read_text(encoding="utf-8")
