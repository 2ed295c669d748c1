"""Schemas of the benchmark and RULE files, and validation that names the file, record and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from verl.utils.cli import UserError


class DataValidationError(UserError, ValueError):
    """A data file is missing, unreadable or has a record with a missing or mistyped key."""


_STR, _LIST, _INT, _DICT = str, list, int, dict
# file stem -> (record kind, {key: type}); "str" kind means each record is a plain string
SCHEMAS: dict[str, tuple[str, dict[str, type]]] = {
    "forget_level1": ("dict", {"query": _STR, "answer": _STR}),
    "forget_level2": ("dict", {"query": _STR, "answer": _STR}),
    "forget_level3": ("dict", {"query": _STR, "answer": _STR, "type": _STR}),
    "neighbor_level1": ("dict", {"query": _STR, "answer": _STR}),
    "neighbor_level2": ("dict", {"query": _STR, "answer": _STR}),
    "forget_mia": ("dict", {"text": _STR}),
    "retain_mia": ("dict", {"text": _STR}),
    "retain_mmlu": ("dict", {"question": _STR, "choices": _LIST, "answer": _INT, "examples": _LIST}),
    "retain_bbh": ("dict", {"task": _STR, "question": _STR, "answer": _STR, "cot": _STR}),
    "truthful": ("dict", {"question": _STR, "mc1_targets": _DICT}),
    "triviaqa": ("dict", {"question": _STR, "answers": _LIST}),
    "fluency": ("dict", {"instruction": _STR}),
    "intro": ("dict", {"target": _STR, "intro": _STR}),
    "passage": ("dict", {"text": _STR}),
    "idk_target": ("str", {}),
    "reject_target": ("dict", {"instruction": _STR, "output": _STR}),
    "reject_with_fb_neighbor_target": (
        "dict",
        {"instruction": _STR, "output": _STR, "FB_instruction": _STR, "neighbor_question": _DICT},
    ),
    "rl_rejection_with_fb_neighbor_target": ("dict", {"prompt": _STR, "solution": _LIST}),
    "rl_rejection_eval_target": ("dict", {"prompt": _STR, "solution": _LIST}),
    # MUSE-Books
    "verbmem/forget": ("dict", {"prompt": _STR, "gt": _STR}),
    "knowmem/forget_qa": ("dict", {"question": _STR, "answer": _STR}),
    "knowmem/retain_qa": ("dict", {"question": _STR, "answer": _STR}),
    "knowmem/forget_qa_icl": ("dict", {"question": _STR, "answer": _STR}),
    "knowmem/retain_qa_icl": ("dict", {"question": _STR, "answer": _STR}),
    "knowmem/train_qa_icl": ("dict", {"question": _STR, "answer": _STR}),  # the MUSE ReBO/RS few-shot prefix
    "privleak/forget": ("str", {}),
    "privleak/holdout": ("str", {}),
    "privleak/retain": ("str", {}),
    "reject_target_0.5": ("dict", {"instruction": _STR, "output": _STR}),
    "reject_target_0.5_0.2": ("dict", {"instruction": _STR, "output": _STR}),
    "reject_qa": ("dict", {"instruction": _STR, "output": _STR}),
    "reject_with_neighbor_target": ("dict", {"instruction": _STR, "output": _STR, "neighbor_question": _DICT}),
}


def _check_solution(rec: dict, path: Path, idx: int) -> None:
    sol = rec["solution"]
    if not sol or sol[0] not in ("<reject>", "<normal>"):
        raise DataValidationError(
            f"{path}: record {idx}: key 'solution' must start with '<reject>' or '<normal>', got {str(sol)[:80]}"
        )
    if len(sol) < 2 or not all(isinstance(s, str) for s in sol):
        raise DataValidationError(f"{path}: record {idx}: key 'solution' must be a list of >= 2 strings")


def validate_records(records: Any, schema: str, path: str | Path) -> list:
    """Check ``records`` against ``SCHEMAS[schema]``; raise DataValidationError naming file, record and key."""
    path = Path(path)
    if schema not in SCHEMAS:
        raise KeyError(f"no schema named {schema!r}; known: {sorted(SCHEMAS)}")
    kind, keys = SCHEMAS[schema]
    if not isinstance(records, list):
        raise DataValidationError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise DataValidationError(f"{path}: the file has no records")
    for idx, rec in enumerate(records):
        if kind == "str":
            if not isinstance(rec, str):
                raise DataValidationError(f"{path}: record {idx}: expected a string, got {type(rec).__name__}")
            continue
        if not isinstance(rec, dict):
            raise DataValidationError(f"{path}: record {idx}: expected an object, got {type(rec).__name__}")
        for key, typ in keys.items():
            if key not in rec:
                raise DataValidationError(f"{path}: record {idx}: missing key '{key}'")
            if not isinstance(rec[key], typ):
                raise DataValidationError(
                    f"{path}: record {idx}: key '{key}' should be {typ.__name__}, got {type(rec[key]).__name__}"
                )
        if "solution" in keys:
            _check_solution(rec, path, idx)
    return records


def validate_rl_records(records: Any, path: str | Path, prompt_key: str = "prompt", answer_key: str = "solution") -> list:
    """The RL trainer's rows (``rl_rejection_*`` files, or any file with other column names): ``prompt_key`` a
    non-empty string; ``answer_key`` present and not null; a list answer that carries a ``<...>`` label must be a
    RULE solution (``["<reject>"|"<normal>", text, ...]``, strings). Raises DataValidationError naming the file,
    the record and the key."""
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
            raise DataValidationError(f"{path}: record {idx}: key '{prompt_key}' should be a non-empty string, got {got}")
        if isinstance(sol, list) and sol and isinstance(sol[0], str) and sol[0].startswith("<"):
            _check_solution({"solution": sol}, path, idx)
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
                        raise DataValidationError(f"{path}: invalid JSON at line {lineno} column {e.colno}: {e.msg}") from e
            return rows
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataValidationError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataValidationError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from e


def load_validated(path: str | Path, schema: str | None = None) -> list:
    """Read a file and validate it; the schema defaults to the file's stem (e.g. ``forget_level1``)."""
    path = Path(path)
    return validate_records(read_json(path), schema or path.stem, path)
