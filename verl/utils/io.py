"""Atomic file writes: every result, config and marker the project writes goes through these.

A write goes to a temporary file in the destination folder, is flushed to disk, then renamed over the target, so a
reader (or a killed run) sees either the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _replace_from_temp(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; parent folders are created."""
    return _replace_from_temp(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, dict keys -> str, unknown objects -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return json_safe(obj.item())
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON (non-finite floats -> null, unknown objects -> str), written atomically."""
    text = json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` atomically (the temp file keeps the extension so matplotlib picks the format)."""
    suffix = Path(path).suffix or ".png"
    return _replace_from_temp(path, lambda tmp: fig.savefig(tmp, **kwargs), suffix=suffix)
