"""Where the benchmark data lives: an explicit root, then $RULE_DATA_DIR, then ./data; plus the sample target."""

from __future__ import annotations

import os
from pathlib import Path

from verl.utils.cli import MissingFileError

SAMPLE_ROOT = Path(__file__).resolve().parent / "sample"


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root holding ``RWKU/Target/<id>_<Name>/`` and ``MUSE/books/``.

    Order: ``explicit`` (config key / flag), ``$RULE_DATA_DIR``, ``./data``. An explicit root that does not
    exist is an error; the fallbacks may be missing (the sample target is always searched as well).
    """
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise MissingFileError(f"data root {root} does not exist (set --data_dir or RULE_DATA_DIR)")
        return root
    env = os.environ.get("RULE_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise MissingFileError(f"RULE_DATA_DIR={env} does not exist")
        return root
    return Path("data")


def rwku_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for RWKU targets: the data root's, then the project's sample."""
    roots = [resolve_data_root(root) / "RWKU" / "Target", SAMPLE_ROOT / "RWKU" / "Target"]
    seen, out = set(), []
    for r in roots:
        key = r.resolve() if r.exists() else r
        if key not in seen and r.is_dir():
            seen.add(key)
            out.append(r)
    return out
