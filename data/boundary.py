"""The boundary split: which of a target's ReBO groups are held out as the evaluator's boundary suite.

ReBO's training file (``data.rwku.REBO_TRAIN_STEM``) is made of groups of four rows, row 4i..4i+3 from record i of
``reject_with_fb_neighbor_target.json``: the FB rewrite (``<reject>``), the question (``<reject>``), the boundary
question about another, similar entity (``<normal>``) and an FB boundary question about yet another one
(``<normal>``). A file in any other layout is split row by row (every row its own group).

A fixed share of the groups is held out, chosen by the hash of each group's first prompt (so the choice depends on
neither file order, machine nor seed); the held-out groups' ``<normal>`` rows, one per distinct question, are the
**boundary suite**: near-boundary questions that a model which refuses only what is about the target answers. ReBO must
never sample a suite question, so it trains on a filtered copy of the file (``write_rebo_train_file``): without the
held-out groups, and without any other row that repeats a suite question or an RWKU probe (the release's files repeat
prompts across groups, up to 36 times). The sandbox further restricts ReBO to a *pool* of K train groups, whose
``<normal>`` facts stage 0 injects together with the suite's (``RS.inject_data.boundary_records``), so that the
boundary branch of the reward has answers to pay.

Every split carries a SHA-256 of its suite, written beside the filtered file and into the evaluator's result, so a
run can check that injection, ReBO and evaluation used the same split.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data.rwku import PROBE_FILES, REBO_TRAIN_STEM, Target, resolve_target
from verl.utils.io import atomic_write_json

BOUNDARY_SHARE = 0.05  # of the groups; 15 of an official target's 300 groups, <= 30 suite questions
SANDBOX_POOL = 6  # train groups the sandbox's ReBO samples (and stage 0 injects): 12 <reject> + 12 <normal> rows
GROUP_LABELS = ("<reject>", "<reject>", "<normal>", "<normal>")


def normalize(prompt: str) -> str:
    """Prompts compare case- and whitespace-insensitively (the files hold copies differing only in spacing)."""
    return " ".join(str(prompt).split()).casefold()


def label(row: dict) -> str:
    sol = row.get("solution") or [""]
    return str(sol[0])


def rebo_groups(rows: list[dict]) -> tuple[list[list[int]], str]:
    """Row indices of each group and the layout's name: ``groups of 4`` when every block of four rows holds two
    ``<reject>`` and two ``<normal>`` rows (the release: reject, reject, normal, normal; ``data.synthesize --budget
    count`` interleaves them), else one row per group."""
    if rows and len(rows) % 4 == 0 and all(
        sorted(label(r) for r in rows[i : i + 4]) == sorted(GROUP_LABELS) for i in range(0, len(rows), 4)
    ):
        return [list(range(i, i + 4)) for i in range(0, len(rows), 4)], "groups of 4"
    return [[i] for i in range(len(rows))], "one row per group"


def _rank_key(rows: list[dict], group: list[int]) -> str:
    return hashlib.sha256(normalize(rows[group[0]]["prompt"]).encode("utf-8")).hexdigest()


def held_out_count(n_groups: int, share: float) -> int:
    """round(share x groups), at least one group when the share is positive, and never every group."""
    if not 0 <= share < 1:
        raise ValueError(f"boundary share must be in [0, 1), got {share}")
    if share == 0 or n_groups < 2:
        return 0
    return min(n_groups - 1, max(1, round(share * n_groups)))


@dataclass
class BoundarySplit:
    """A target's split. ``order``: every group index, held-out groups first, then the train groups in hash order
    (the sandbox pool is taken from its head); ``suite``: {row, group, query, answer} per distinct question."""

    share: float
    n_groups: int = 0
    layout: str = ""
    source: str = ""
    held_out: list[int] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    suite: list[dict] = field(default_factory=list)
    reason: str = ""  # why the suite is empty

    @property
    def empty(self) -> bool:
        return not self.suite

    @property
    def sha256(self) -> str:
        """Fingerprint of the suite (its questions in order, and the share): equal iff the same split."""
        key = json.dumps([self.share, [normalize(s["query"]) for s in self.suite]], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def record(self) -> dict:
        """What a run writes down to show which split it used (no suite text beyond the row indices)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("order", "suite")}
        out.update(sha256=self.sha256, n_suite=len(self.suite), suite_rows=[s["row"] for s in self.suite])
        return out


def split_rows(rows: list[dict], share: float = BOUNDARY_SHARE, source: str = "") -> BoundarySplit:
    """The split of ReBO rows (module doc); deterministic in the rows' prompts alone."""
    groups, layout = rebo_groups(rows)
    ranked = sorted(range(len(groups)), key=lambda g: (_rank_key(rows, groups[g]), g))
    n_out = held_out_count(len(groups), share)
    held = sorted(ranked[:n_out])
    suite, seen = [], set()
    for g in held:
        for i in groups[g]:
            key = normalize(rows[i]["prompt"])
            if label(rows[i]) == "<normal>" and key not in seen:
                seen.add(key)
                suite.append({"row": i, "group": g, "query": rows[i]["prompt"], "answer": str(rows[i]["solution"][1])})
    reason = "" if suite else f"no <normal> row in the {n_out} held-out group(s) of {len(groups)}"
    return BoundarySplit(share, len(groups), layout, source, held, held + ranked[n_out:], suite, reason)


def _target(target: Target | str, data_root=None) -> Target:
    return target if isinstance(target, Target) else resolve_target(target, data_root)


def boundary_split(target: Target | str, share: float = BOUNDARY_SHARE, data_root=None) -> BoundarySplit:
    """The split of a target's ReBO file; an empty suite with its reason when the target has no such file."""
    t = _target(target, data_root)
    if not t.has(REBO_TRAIN_STEM):
        return BoundarySplit(share, reason=f"{t.folder} has no {REBO_TRAIN_STEM}.json: no boundary suite")
    return split_rows(t.load(REBO_TRAIN_STEM), share, str(t.file(REBO_TRAIN_STEM)))


def probe_queries(target: Target) -> set[str]:
    """The target's RWKU probe questions (forget levels 1-3, neighbor levels 1-2), normalised."""
    return {normalize(p["query"]) for stem in PROBE_FILES if target.has(stem) for p in target.load(stem)}


def pool_groups(rows: list[dict], split: BoundarySplit, k: int, excluded: set[str] = frozenset()) -> list[int]:
    """The sandbox pool: train groups in hash order, each keeping every row (no prompt of theirs is a suite question
    or in ``excluded``), until it holds ``2k`` rows of each label: ``k`` groups of 4 (one row per group: 2k rows of
    each label)."""
    if k <= 0:
        return []
    groups, _ = rebo_groups(rows)
    banned = {normalize(s["query"]) for s in split.suite} | set(excluded)
    need = {lab: 2 * k for lab in ("<reject>", "<normal>")}
    out = []
    for g in split.order[len(split.held_out):]:
        labels = [label(rows[i]) for i in groups[g]]
        if banned.intersection(normalize(rows[i]["prompt"]) for i in groups[g]):
            continue
        if any(need.get(lab, 0) > 0 for lab in labels):
            out.append(g)
            for lab in labels:
                need[lab] = need.get(lab, 0) - 1
        if all(v <= 0 for v in need.values()):
            break
    return out


def _drop_reason(in_held: bool, in_kept: bool, key: str, lab: str, banned: set[str], excluded: set[str],
                 labels: tuple[str, ...] | None) -> str:
    """Why ``train_rows`` leaves a row out ("" keeps it)."""
    if in_held:
        return "held_out"
    if not in_kept:
        return "outside_pool"
    if key in banned:
        return "suite_repeat"
    if key in excluded:
        return "probe"
    return "label" if labels is not None and lab not in labels else ""


def train_rows(rows: list[dict], split: BoundarySplit, pool: int = 0, excluded: set[str] = frozenset(),
               labels: tuple[str, ...] | None = None) -> tuple[list[dict], dict]:
    """ReBO's training rows: every row but the held-out groups' and any whose prompt is a suite question or in
    ``excluded`` (the probes); with ``pool`` > 0 only the pool's groups; with ``labels`` only rows of those labels
    (``("<reject>",)``: the ablation without boundary prompts). Returns the rows and a summary of what was dropped."""
    groups, _ = rebo_groups(rows)
    held = set(split.held_out)
    banned = {normalize(s["query"]) for s in split.suite}
    pool_ids = pool_groups(rows, split, pool, excluded) if pool > 0 else []
    keep_groups = set(pool_ids) if pool > 0 else set(range(len(groups))) - held
    kept, dropped = [], {"held_out": 0, "suite_repeat": 0, "probe": 0, "outside_pool": 0, "label": 0}
    for g, idx in enumerate(groups):
        for i in idx:
            why = _drop_reason(g in held, g in keep_groups, normalize(rows[i]["prompt"]), label(rows[i]), banned,
                               excluded, labels)
            if why:
                dropped[why] += 1
            else:
                kept.append(rows[i])
    summary = {"split": split.record(), "pool": pool, "pool_groups": pool_ids, "n_rows": len(rows),
               "n_kept": len(kept), "dropped": dropped,
               "kept_labels": {lab: sum(label(r) == lab for r in kept) for lab in ("<reject>", "<normal>")}}
    return kept, summary


INDIRECT_REFERENCE = "this person"


def indirect_rows(rows: list[dict], name: str, reference: str = INDIRECT_REFERENCE) -> tuple[list[dict], int]:
    """``rows`` with every second ``<reject>`` row that names the target asking about it as ``reference`` instead
    ("... where many of this person's stories take place, including Carrie, Cujo, and IT?"), and how many were
    rewritten. The solution is kept, so the reward still pays a refusal that names the target. The release's
    questions nearly all name the target while a third of RWKU's forget probes refer to it indirectly ("Who wrote
    'Misery'?"); these rows ask the policy to name the target from what the question says about it. Every second
    row, so that a group's question and its fill-in-the-blank rewrite keep one form each and the labels' counts (and
    so ReBO's stratified batches) stay as they were."""
    pattern = re.compile(re.escape(name), re.IGNORECASE) if name else None
    out, n, naming = [], 0, 0
    for r in rows:
        if pattern and label(r) == "<reject>" and pattern.search(r["prompt"]):
            naming += 1
            if naming % 2 == 0:
                r, n = {**r, "prompt": pattern.sub(reference, r["prompt"])}, n + 1
        out.append(r)
    return out, n


def rebo_train_rows(t: Target, share: float = BOUNDARY_SHARE, pool: int = 0, labels: tuple[str, ...] | None = None,
                    indirect: bool = False) -> tuple[list[dict], dict]:
    """ReBO's training rows for target ``t`` and their summary (``train_rows`` on its ReBO file; ``indirect``: then
    ``indirect_rows``, counted as ``n_indirect``). Nothing is written: the pipeline's plan hashes these rows."""
    rows = t.load(REBO_TRAIN_STEM)
    split = split_rows(rows, share, str(t.file(REBO_TRAIN_STEM)))
    kept, summary = train_rows(rows, split, pool, probe_queries(t), labels)
    if kept and indirect:
        kept, n = indirect_rows(kept, t.name)
        summary = {**summary, "n_indirect": n}
    return kept, summary


def write_rebo_train_file(target: Target | str, out: str | os.PathLike, share: float = BOUNDARY_SHARE,
                          pool: int = 0, labels: tuple[str, ...] | None = None, data_root=None,
                          indirect: bool = False) -> dict:
    """Write ReBO's training file for ``target`` to ``out`` (``rebo_train_rows``: no suite question, no probe; the
    sandbox passes ``pool=SANDBOX_POOL``) and its summary to ``<out stem>.split.json``; returns the summary. A target
    without a ReBO file is an error (ReBO has nothing to train on)."""
    t = _target(target, data_root)
    kept, summary = rebo_train_rows(t, share, pool, labels, indirect)
    if not kept:
        raise ValueError(f"{t.folder}: no ReBO row left after the boundary split ({summary['dropped']})")
    out = Path(out)
    atomic_write_json(out, kept)
    summary = {"target": t.folder, "file": str(out), **summary}
    atomic_write_json(out.with_name(out.stem + ".split.json"), summary)
    return summary


def boundary_facts(target: Target | str, share: float = BOUNDARY_SHARE, pool: int = SANDBOX_POOL,
                   data_root=None) -> tuple[list[dict], list[dict], BoundarySplit]:
    """The ``<normal>`` facts stage 0 injects: the suite's rows and the pool's ``<normal>`` rows, each
    {query, answer}; empty lists when the target has no ReBO file."""
    t = _target(target, data_root)
    split = boundary_split(t, share)
    if not t.has(REBO_TRAIN_STEM):
        return [], [], split
    rows = t.load(REBO_TRAIN_STEM)
    groups, _ = rebo_groups(rows)
    suite = [{"query": s["query"], "answer": s["answer"]} for s in split.suite]
    seen = {normalize(s["query"]) for s in suite}
    pool_rows = []
    for g in pool_groups(rows, split, pool, probe_queries(t)):
        for i in groups[g]:
            if label(rows[i]) == "<normal>" and normalize(rows[i]["prompt"]) not in seen:
                seen.add(normalize(rows[i]["prompt"]))
                pool_rows.append({"query": rows[i]["prompt"], "answer": str(rows[i]["solution"][1])})
    return suite, pool_rows, split


__all__ = ["BOUNDARY_SHARE", "INDIRECT_REFERENCE", "SANDBOX_POOL", "BoundarySplit", "boundary_facts", "boundary_split",
           "held_out_count", "indirect_rows", "normalize", "pool_groups", "probe_queries", "rebo_groups",
           "rebo_train_rows", "split_rows", "train_rows", "write_rebo_train_file"]
