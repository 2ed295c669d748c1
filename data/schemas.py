"""Schemas of the benchmark and RULE files, and validation that names the file, record and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verl.utils.records import DataValidationError, check_labelled_answer, read_json

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
            check_labelled_answer(rec["solution"], path, idx)
    return records


def load_validated(path: str | Path, schema: str | None = None) -> list:
    """Read a file and validate it; the schema defaults to the file's stem (e.g. ``forget_level1``)."""
    path = Path(path)
    return validate_records(read_json(path), schema or path.stem, path)
