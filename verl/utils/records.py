"""Row files (JSON list, JSONL) read and checked with errors that name the file, the record and the key: the
trainer's prompt files and every benchmark file of the data layer go through here.

Labelled answers: a list answer whose first item is a ``<...>`` tag carries the row's label (``<reject>``: a prompt
the policy should refuse, ``<normal>``: one it should answer), then the reference text(s). The trainer batches and
reports rows by that label; the reward reads the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from verl.utils.cli import UserError

LABELS = ("<reject>", "<normal>")


class DataValidationError(UserError, ValueError):
    """A data file is missing, unreadable or has a record with a missing or mistyped key."""


def check_labelled_answer(sol: list, path: Path, idx: int) -> None:
    """A labelled answer (module doc) of record ``idx``: a known label, then at least one text, all strings."""
    if not sol or sol[0] not in LABELS:
        raise DataValidationError(
            f"{path}: record {idx}: key 'solution' must start with '<reject>' or '<normal>', got {str(sol)[:80]}"
        )
    if len(sol) < 2 or not all(isinstance(s, str) for s in sol):
        raise DataValidationError(f"{path}: record {idx}: key 'solution' must be a list of >= 2 strings")


def validate_rl_records(records: Any, path: str | Path, prompt_key: str = "prompt",
                        answer_key: str = "solution") -> list:
    """The RL trainer's rows: ``prompt_key`` a non-empty string; ``answer_key`` present and not null; a list answer
    that starts with a ``<...>`` tag must be a labelled answer (``["<reject>"|"<normal>", text, ...]``, strings).
    Raises DataValidationError naming the file, the record and the key."""
    path = Path(path)
    if not isinstance(records, list):
        raise DataValidationError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise DataValidationError(f"{path}: the file has no records")
    for idx, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataValidationError(f"{path}: record {idx}: expected an object, got {type(rec).__name__}")
        for key, what in ((prompt_key, "data.prompt_key"), (answer_key, "data.answer_key")):
            if key not in rec or rec[key] is None:
                raise DataValidationError(f"{path}: record {idx}: missing key '{key}' ({what})")
        prompt, sol = rec[prompt_key], rec[answer_key]
        if not isinstance(prompt, str) or not prompt.strip():
            got = type(prompt).__name__ if not isinstance(prompt, str) else "an empty string"
            raise DataValidationError(
                f"{path}: record {idx}: key '{prompt_key}' should be a non-empty string, got {got}")
        if isinstance(sol, list) and sol and isinstance(sol[0], str) and sol[0].startswith("<"):
            check_labelled_answer(sol, path, idx)
        elif isinstance(sol, list) and not sol:
            raise DataValidationError(f"{path}: record {idx}: key '{answer_key}' is an empty list")
    return records


def read_json(path: str | Path) -> Any:
    """Read a .json (list/object) or .jsonl file with a clear error on bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    try:
        if path.suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:  # the file's line, not the position inside the record
                        raise DataValidationError(
                            f"{path}: invalid JSON at line {lineno} column {e.colno}: {e.msg}") from e
            return rows
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataValidationError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataValidationError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from e
