"""Provenance written into a run dir: git commit (read from .git, no git process), data hashes, versions."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The checked-out commit id, or None outside a git checkout."""
    git = repo / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_info(seed: int | None = None, data_files: dict[str, str] | Iterable[str] | None = None, **extra: Any) -> dict:
    """The provenance block every stage writes as ``run_info.json``: time, commit, argv, seed, data hashes, versions."""
    import torch  # start-up cost: CLIs import this module; only a run's record needs torch

    if data_files is not None and not isinstance(data_files, dict):
        data_files = {str(p): str(p) for p in data_files}
    files = {k: str(v) for k, v in (data_files or {}).items()}
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(), "argv": sys.argv, "seed": seed,
        "data_files": files, "data_sha256": {k: file_sha256(v) for k, v in files.items() if Path(v).is_file()},
        "python": platform.python_version(), "torch": torch.__version__, **extra,
    }
