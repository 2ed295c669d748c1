"""Side-by-side summary of two RWKU target folders' RULE files (e.g. the official release vs. synthesized).

    python -m data.compare OFFICIAL_DIR SYNTH_DIR [--tokenizer words|embedded|PATH]

Prints a markdown table: record counts, mean token lengths (counted like ``data.synthesize``), distinct boundary
entities, and the share of boundary questions whose entity is a *real neighbor*: one of the ``neighbor`` values of
the target's neighbor probes (taken from the first folder, else the second). The entity is the record's ``entity``
key when present (synthesized data), otherwise a neighbor value found in the question text (official data has no
entity field, so entities there are recognised only when they are real neighbors; "distinct entities" for such files
is a heuristic: the first capitalised name in the question that is not the target's).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from data.rwku import NEIGHBOR_FILES, REBO_TRAIN_STEM, resolve_target
from data.schemas import load_validated
from data.synthesize import make_token_counter
from verl.utils.typed_args import parse_typed

_NAME = re.compile(r"\b([A-Z][\w.'-]*(?:\s+[A-Z][\w.'-]*)+)")


def _neighbors(*dirs: Path) -> set[str]:
    for d in dirs:
        vals = set()
        for stem in NEIGHBOR_FILES:
            f = d / f"{stem}.json"
            if f.is_file():
                vals |= {p["neighbor"] for p in load_validated(f) if isinstance(p.get("neighbor"), str)}
        if vals:
            return vals
    return set()


def _entity(nq: dict, target: str, neighbors: set[str]) -> tuple[str | None, bool]:
    """(entity, is_real_neighbor) for a boundary question dict."""
    q = nq.get("question", "")
    if isinstance(nq.get("entity"), str):
        e = nq["entity"]
        return e, e.lower() in {n.lower() for n in neighbors}
    hits = [n for n in neighbors if n.lower() in q.lower()]
    if hits:
        return max(hits, key=len), True
    parts = set(target.split())
    for m in _NAME.finditer(q):
        if not set(m.group(1).split()) & parts:
            return m.group(1), False
    return None, False


def summarize(folder: Path, neighbors: set[str], count) -> dict:
    t = resolve_target(folder)
    rs = load_validated(folder / "reject_target.json") if (folder / "reject_target.json").is_file() else []
    fb = (load_validated(folder / "reject_with_fb_neighbor_target.json")
          if (folder / "reject_with_fb_neighbor_target.json").is_file() else [])
    rl_f = folder / f"{REBO_TRAIN_STEM}.json"
    rl = load_validated(rl_f) if rl_f.is_file() else []
    mean = lambda xs: round(statistics.mean(xs), 1) if xs else float("nan")  # noqa: E731
    boundary = [r[k] for r in fb for k in ("neighbor_question", "FB_neighbor_question") if isinstance(r.get(k), dict)]
    ents = [_entity(b, t.name, neighbors) for b in boundary]
    real = sum(is_real for _, is_real in ents)
    mention = sum(t.name.lower() in b.get("question", "").lower() for b in boundary)
    return {
        "reject_target records": len(rs),
        "reject_with_fb_neighbor records": len(fb),
        "ReBO <reject> prompts": sum(r["solution"][0] == "<reject>" for r in rl),
        "ReBO <normal> prompts": sum(r["solution"][0] == "<normal>" for r in rl),
        "mean tokens: question": mean([count(r["instruction"]) for r in rs]),
        "mean tokens: FB rewrite": mean([count(r["FB_instruction"]) for r in fb]),
        "mean tokens: refusal": mean([count(r["output"]) for r in rs]),
        "mean tokens: boundary question": mean([count(b.get("question", "")) for b in boundary]),
        "mean tokens: boundary answer": mean([count(b.get("answer", "")) for b in boundary
                                              if isinstance(b.get("answer"), str)]),
        "distinct refusals": len({r["output"] for r in rs}),
        "questions naming the target": f"{sum(t.name.lower() in r['instruction'].lower() for r in rs)}/{len(rs)}",
        "distinct boundary entities": len({e for e, _ in ents if e}),
        "boundary items that are real neighbors": f"{real}/{len(boundary)} ({100 * real / max(1, len(boundary)):.1f}%)",
        "boundary questions naming the target": f"{mention}/{len(boundary)}",
    }


def compare(a: Path, b: Path, tokenizer: str = "words") -> str:
    count = make_token_counter(tokenizer)
    neighbors = _neighbors(a, b)
    sa, sb = summarize(a, neighbors, count), summarize(b, neighbors, count)
    lines = [f"A = `{a}`  \nB = `{b}`\n", f"| metric (tokens: {tokenizer}) | A: {a.name} | B: {b.name} |",
             "|---|---|---|"]
    lines += [f"| {k} | {sa[k]} | {sb[k]} |" for k in sa]
    lines.append(f"\nreal neighbors = {len(neighbors)} `neighbor` values of the target's neighbor probes")
    return "\n".join(lines)


@dataclass
class CompareConfig:
    """The options of ``python -m data.compare``; each argument is the field of the same name."""

    official: Path  # first target folder (column A, e.g. the official release)
    synth: Path  # second target folder (column B, e.g. synthesized)
    tokenizer: str = "words"  # token counter, as data.synthesize: words | HF tokenizer path/id | embedded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("official", type=Path)
    p.add_argument("synth", type=Path)
    p.add_argument("--tokenizer", default=CompareConfig.tokenizer)
    return p


def parse_args(argv: list[str] | None = None) -> CompareConfig:
    return parse_typed(build_parser(), CompareConfig, argv)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    print(compare(cfg.official, cfg.synth, cfg.tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
