"""Put RWKU / MUSE-Books into the layout the project reads, from the Hugging Face hub or a local folder.

    python -m data.prepare --benchmark rwku --source hf --out data_root [--targets 1 2 51]
    python -m data.prepare --benchmark muse --source hf --out data_root
    python -m data.prepare --benchmark rwku --source /path/to/root_or_RWKU --out data_root [--copy]

Layout written: ``OUT/RWKU/Target/<id>_<Name>/*.json`` and ``OUT/MUSE/books/{raw,verbmem,knowmem,privleak}/...``;
point ``RULE_DATA_DIR`` (or ``--data_dir``) at ``OUT``.

- ``hf``, RWKU: the per-target JSON files of the dataset repo ``jinzhuoran/RWKU`` (folder ``Target/``) via
  ``huggingface_hub.snapshot_download`` (only the benchmark files; the large negative/positive/pair training files
  are skipped). MUSE: ``muse-bench/MUSE-Books`` via ``datasets.load_dataset`` (configs raw, verbmem, knowmem,
  privleak; the hub names the retain split ``retain2``/``retain2_qa`` in some revisions: both are accepted and
  written as ``retain``). The RULE training files are not on the hub: build them with ``data.synthesize``.
  Without network it fails in a few seconds with a clear message.
- local ``DIR``: every file with a known schema is validated (errors name file, record and key), then symlinked
  (``--copy``: copied) into ``OUT``. Invalid files are reported and not linked; the exit status is 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from data.rwku import BENCHMARK_FILES
from data.schemas import SCHEMAS, load_validated
from data.synthesize import place
from verl.utils.io import atomic_write_json
from verl.utils.records import DataValidationError
from verl.utils.typed_args import parse_typed

RWKU_REPO = "jinzhuoran/RWKU"
MUSE_REPO = "muse-bench/MUSE-Books"


class PrepareError(RuntimeError):
    """Preparation cannot proceed (offline, missing source, invalid files)."""


# ------------------------------------------------------------------------------------------- network
def hub_online(timeout: float = 3.0) -> bool:
    """True when the hub endpoint accepts a TCP connection within ``timeout`` (and HF offline mode is off)."""
    if (os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            or os.environ.get("HF_DATASETS_OFFLINE") == "1"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _require_online() -> None:
    if not hub_online():
        raise PrepareError(
            "cannot reach the Hugging Face hub (no network, or HF_HUB_OFFLINE is set). Download on a machine with "
            "network and run `python -m data.prepare --source DIR` here, or set RULE_DATA_DIR to an existing copy."
        )


# ------------------------------------------------------------------------------------------- local
def _schema_for(rel: Path, benchmark: str) -> str | None:
    """Schema name for a file path relative to a target folder / MUSE books folder, None if unknown."""
    stem = rel.with_suffix("").as_posix()
    if benchmark == "rwku":
        stem = rel.stem
    return stem if stem in SCHEMAS else None


def _find_rwku(src: Path) -> Path:
    for cand in (src / "RWKU" / "Target", src / "Target", src):
        if cand.is_dir() and any((d / "intro.json").is_file() for d in cand.iterdir() if d.is_dir()):
            return cand
    raise PrepareError(f"{src}: no RWKU targets found (expected <src>/RWKU/Target/<id>_<Name>/intro.json)")


def _find_muse(src: Path) -> Path:
    for cand in (src / "MUSE" / "books", src / "books", src):
        if (cand / "knowmem").is_dir() or (cand / "verbmem").is_dir():
            return cand
    raise PrepareError(f"{src}: no MUSE-Books folder found (expected <src>/MUSE/books/knowmem/...)")


def prepare_local(benchmark: str, src: Path, out: Path, copy: bool = False, targets: list[str] | None = None) -> dict:
    """Validate and link/copy a local copy; returns {"linked": n, "errors": [messages]}."""
    linked, errors = 0, []
    if benchmark == "rwku":
        base, dst_base = _find_rwku(src), out / "RWKU" / "Target"
        folders = [d for d in sorted(base.iterdir()) if d.is_dir() and d.name.partition("_")[0].isdigit()]
        if targets:
            folders = [d for d in folders if d.name in targets or d.name.partition("_")[0] in targets]
        pairs = [(f, dst_base / d.name / f.name, Path(f.name)) for d in folders for f in sorted(d.glob("*.json"))]
    else:
        base, dst_base = _find_muse(src), out / "MUSE" / "books"
        pairs = [(f, dst_base / f.relative_to(base), f.relative_to(base)) for f in sorted(base.rglob("*"))
                 if f.is_file() and not f.name.startswith(".")]
    if not pairs:
        raise PrepareError(f"{src}: nothing to prepare for {benchmark}")
    for f, dst, rel in pairs:
        schema = _schema_for(rel, benchmark)
        try:
            if schema:
                load_validated(f, schema)
            elif f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))  # unknown JSON: syntax check only
        except (DataValidationError, json.JSONDecodeError, UnicodeDecodeError) as e:
            errors.append(str(e) if isinstance(e, DataValidationError) else f"{f}: {e}")
            continue
        place(f, dst, copy)
        linked += 1
    return {"linked": linked, "errors": errors, "out": str(dst_base)}


# ------------------------------------------------------------------------------------------- hub
def prepare_hf_rwku(out: Path, targets: list[str] | None = None) -> dict:
    _require_online()
    from huggingface_hub import snapshot_download

    sel = targets or ["*"]
    patterns = [f"Target/{t}_*/{f}.json" if t != "*" and t.isdigit() else f"Target/{t}/{f}.json"
                for t in sel for f in BENCHMARK_FILES]
    with tempfile.TemporaryDirectory(dir=out if out.is_dir() else None) as tmp:
        snapshot_download(repo_id=RWKU_REPO, repo_type="dataset", allow_patterns=patterns, local_dir=tmp)
        res = prepare_local("rwku", Path(tmp), out, copy=True, targets=targets)
    return res


def _hf_splits(config: str) -> dict:
    from datasets import load_dataset

    return load_dataset(MUSE_REPO, config)


def prepare_hf_muse(out: Path) -> dict:
    _require_online()
    books, n, errors = out / "MUSE" / "books", 0, []
    rename = lambda s: s.replace("retain2", "retain")  # noqa: E731

    raw = _hf_splits("raw")
    for split, ds in raw.items():
        texts = [r["text"] for r in ds]
        (books / "raw").mkdir(parents=True, exist_ok=True)
        (books / "raw" / f"{rename(split)}.txt").write_text("\n\n".join(texts), encoding="utf-8")
        atomic_write_json(books / "raw" / f"{rename(split)}.json", texts)
        n += 2
    for split, ds in _hf_splits("verbmem").items():
        rows = [{"prompt": r["prompt"], "gt": r["gt"]} for r in ds]
        atomic_write_json(books / "verbmem" / f"{rename(split)}.json", rows)
        n += 1
    for split, ds in _hf_splits("knowmem").items():
        atomic_write_json(books / "knowmem" / f"{rename(split)}.json",
                          [{"question": r["question"], "answer": r["answer"]} for r in ds])
        n += 1
    for split, ds in _hf_splits("privleak").items():
        atomic_write_json(books / "privleak" / f"{rename(split)}.json", [r["text"] for r in ds])
        n += 1
    for f in sorted(books.rglob("*.json")):
        schema = _schema_for(f.relative_to(books), "muse")
        if schema:
            try:
                load_validated(f, schema)
            except DataValidationError as e:
                errors.append(str(e))
    return {"linked": n, "errors": errors, "out": str(books)}


def prepare(benchmark: str, source: str, out: str | Path, copy: bool = False, targets: list[str] | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if source == "hf":
        return prepare_hf_rwku(out, targets) if benchmark == "rwku" else prepare_hf_muse(out)
    src = Path(source).expanduser()
    if not src.is_dir():
        raise PrepareError(f"--source {source}: not 'hf' and not a folder")
    return prepare_local(benchmark, src, out, copy=copy, targets=targets)


# ------------------------------------------------------------------------------------------- CLI
@dataclass
class PrepareConfig:
    """The options of ``python -m data.prepare``; each flag is the field of the same name."""

    benchmark: str  # rwku | muse
    source: str  # 'hf' (the Hugging Face hub) or a local folder holding the benchmark
    out: str  # data root to write (then RULE_DATA_DIR=OUT)
    copy: bool = False  # copy local files instead of symlinking them
    targets: list[str] | None = None  # RWKU target ids or folder names (None: every target)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", choices=["rwku", "muse"], required=True)
    p.add_argument("--source", required=True, help="'hf' (Hugging Face hub) or a local folder")
    p.add_argument("--out", required=True, help="data root to write (then RULE_DATA_DIR=OUT)")
    p.add_argument("--copy", action="store_true", default=PrepareConfig.copy,
                   help="copy local files instead of symlinking")
    p.add_argument("--targets", nargs="*", default=PrepareConfig.targets,
                   help="RWKU target ids or folder names (default all)")
    return p


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    return parse_typed(build_parser(), PrepareConfig, argv)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        res = prepare(cfg.benchmark, cfg.source, cfg.out, copy=cfg.copy, targets=cfg.targets)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for err in res["errors"]:
        print(f"invalid: {err}", file=sys.stderr)
    print(f"{cfg.benchmark}: {res['linked']} files ready under {res['out']}; {len(res['errors'])} invalid")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    from verl.utils.cli import run_main  # user errors in one line; tracebacks and logs with secrets scrubbed

    run_main(main)
