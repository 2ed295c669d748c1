"""RWKU targets: listing, lookup by id or folder name, and validated file loading."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from data.paths import rwku_roots
from data.schemas import load_validated
from verl.utils.records import DataValidationError

# the benchmark's probe files; forget_level<k> asks about the target, neighbor_level<k> about related knowledge
FORGET_FILES = ("forget_level1", "forget_level2", "forget_level3")
NEIGHBOR_FILES = ("neighbor_level1", "neighbor_level2")
PROBE_FILES = FORGET_FILES + NEIGHBOR_FILES
# the form of a file's probes: FB fill in the blank (level 1), QA question (level 2), AA adversarial (level 3)
PROBE_LEVEL = dict(zip(PROBE_FILES, ("FB", "QA", "AA", "FB", "QA")))
# every file the benchmark ships per target: its text, the probes, membership inference and utility sets
BENCHMARK_FILES = ("intro", "passage", *PROBE_FILES, "forget_mia", "retain_mia", "retain_mmlu", "retain_bbh",
                   "truthful", "triviaqa", "fluency")
# the RULE release's files of a target: ReBO trains on REBO_TRAIN_STEM and validates on REBO_EVAL_STEM
REBO_TRAIN_STEM = "rl_rejection_with_fb_neighbor_target"
REBO_EVAL_STEM = "rl_rejection_eval_target"
RULE_FILES = ("idk_target", "reject_target", "reject_with_fb_neighbor_target", REBO_TRAIN_STEM, REBO_EVAL_STEM)


@dataclass(frozen=True)
class Target:
    id: int
    name: str  # e.g. "Stephen King"
    folder: str  # e.g. "1_Stephen_King"
    path: Path

    def file(self, stem: str) -> Path:
        return self.path / f"{stem}.json"

    def has(self, stem: str) -> bool:
        return self.file(stem).is_file()

    def load(self, stem: str) -> list:
        """Load and validate ``<stem>.json`` of this target."""
        return load_validated(self.file(stem), stem)


def _parse(folder: Path) -> Target | None:
    head, _, rest = folder.name.partition("_")
    if not head.isdigit() or not rest:
        return None
    return Target(id=int(head), name=rest.replace("_", " "), folder=folder.name, path=folder)


def list_targets(root: str | os.PathLike | None = None) -> list[Target]:
    """All targets under the data root and the project sample, sorted by id (data root wins on clashes)."""
    found: dict[int, Target] = {}
    for base in rwku_roots(root):
        for folder in sorted(base.iterdir()):
            t = _parse(folder) if folder.is_dir() else None
            if t and t.id not in found:
                found[t.id] = t
    return [found[k] for k in sorted(found)]


def resolve_target(target: str | int, root: str | os.PathLike | None = None) -> Target:
    """Find a target by id (``1``), folder name (``1_Stephen_King``), name (``Stephen King``) or path."""
    key = str(target).strip()
    path = Path(key).expanduser()
    if path.is_dir() and (path / "intro.json").exists():
        t = _parse(path)
        if t:
            return t
    targets = list_targets(root)
    for t in targets:
        if key in (str(t.id), t.folder, t.name) or key.replace(" ", "_") == t.folder.partition("_")[2]:
            return t
    sample = ", ".join(t.folder for t in targets[:5])
    raise DataValidationError(
        f"unknown RWKU target {key!r} under {[str(r) for r in rwku_roots(root)]}; "
        f"{len(targets)} targets known (e.g. {sample}). Set RULE_DATA_DIR or --data_dir to the data root."
    )
