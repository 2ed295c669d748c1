"""Check a sandbox run against the sandbox's goals, per target and on the mean over targets, judged on seed means.

    python scripts/sandbox_goals.py log/rwku/sandbox_smoke [--out log/rwku/sandbox_smoke/report/goals.md]

Reads the pipeline's result JSONs: ``<target>/results/<method>.json`` (Base and Original, shared by every seed; every
method of a run without SEEDS) and ``<target>/seed<k>/results/<method>.json``. One run is a noisy estimate (one
rollout seed moved a target's forget All by up to 47 points), so every figure is a seed mean, as in
``verl.eval.report``: for a target the mean over its seeds; on the mean, each seed's mean over the targets first, then
the mean over the seeds. With several seeds each figure shows its 95% interval (``± h``); the goals are judged on the
means.

Goals (RULE = each ReBO row present: RULE (GRPO), and RULE (PPO) or RULE (Reinforce++) when run, one table each;
x100; "All" = plain mean of FB/QA/AA): forget All at most half of Original's and at least 15
below RS's; neighbor All at least 85% of Original's; Boundary Answer at least 85% of Original's and Boundary Refused at
most 10%; at least 60% of forget probes refused, the target named in at least 80% of those refusals, at least 90% of
them ending (Refusal Ends); naturalness (the judge's mean of Read/Help/Truth, the offline proxy in the sandbox table)
at or above RS's; not dominated by GA, NPO, SimNPO or RT on the Pareto plane (forget All against the mean of neighbor
All and Boundary Answer when the boundary suite was run, else neighbor All; no higher forget and no lower retain, one
of the two strictly). The naming goal also shows its share on probes whose question names the target and on those
that refer to it indirectly, and on probes whose answer is not the target's name (where it is, "Who wrote 'Misery'?",
a refusal naming the target gives the answer and scores as remembered), and its ceiling: the share of refusals on
probes whose answer is not the name, the most naming can reach without giving an answer away; these are not judged.
A figure the results do not carry (no boundary suite, no end fields, no baseline run) makes its goal "n/a".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from verl.eval.report import (
    ONE_SEED_NOTE,
    Estimate,
    column_path,
    metric_value,
    refusal_shares,
    result_seed,
    seed_estimate,
)
from verl.pipeline.methods import METHODS
from verl.utils.io import atomic_write_text

RULE, ORIGINAL, RS = "rule_grpo", "original", "rs"
RULES = tuple(m.name for m in METHODS.values() if m.kind == "rebo")  # every ReBO row, GRPO first
UNDOMINATED = "not dominated by GA, NPO, SimNPO, RT"
BASELINES = ("ga", "npo", "simnpo", "rt")
PATHS = {  # figure -> metrics path (the report's column, so a moved metric follows it)
    "forget": ("forget", "All"),
    "neighbor": ("neighbor", "All"),
    "boundary_answer": column_path("Boundary Answer", ("boundary", "Answer")),
    "boundary_refused": column_path("Boundary Refused", ("boundary", "Refused")),
    "refused": ("refusal", "forget_refused"),
    "named": ("refusal", "refusals_naming_target"),
    "named_direct": ("refusal", "refusals_naming_target_direct"),  # shown beside the naming goal, not judged
    "named_indirect": ("refusal", "refusals_naming_target_indirect"),
    "named_not_answer": ("refusal", "refusals_naming_target_name_not_answer"),
    "named_ceiling": ("refusal", "refusals_naming_ceiling"),
    "ends": column_path("Refusal Ends", ("refusal", "refusals_ending")),
    "naturalness": ("naturalness", "Mean"),
}


def load(run_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """{target: {method stem: [result per seed]}} for every target folder with the original and rs results and one
    RULE row's; each result gets ``_seed`` (None: shared by every seed, or a run without SEEDS) and its refusal
    shares."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    folders = [(d, d.parent.name) for d in sorted(run_dir.glob("*/results"))]
    folders += [(d, d.parent.parent.name) for d in sorted(run_dir.glob("*/seed*/results"))]
    for folder, target in folders:
        for path in sorted(folder.glob("*.json")):
            r = json.loads(path.read_text())
            if not isinstance(r, dict) or not isinstance(r.get("metrics"), dict):
                continue
            r["_seed"] = result_seed(r, path)
            if "refusal" not in r["metrics"]:
                r["metrics"]["refusal"] = refusal_shares(r) or {}
            out[target][path.stem].append(r)
    return {t: dict(rows) for t, rows in sorted(out.items())
            if ORIGINAL in rows and RS in rows and any(k in rows for k in RULES)}


class Figures:
    """Seed estimates (x100) of one method's figure over some targets."""

    def __init__(self, per_target: dict[str, dict[str, list[dict]]]):
        self.per_target = per_target
        results = [r for rows in per_target.values() for rs in rows.values() for r in rs]
        self.boundary = any(metric_value(r["metrics"], PATHS["boundary_answer"]) is not None for r in results)
        self.seeds = sorted({r["_seed"] for r in results if r["_seed"] is not None})

    def value(self, result: dict, figure: str) -> float | None:
        if figure == "retain":
            n = self.value(result, "neighbor")
            b = self.value(result, "boundary_answer") if self.boundary else n
            return None if n is None or b is None else (n + b) / 2
        return metric_value(result["metrics"], PATHS[figure])

    def estimate(self, targets: list[str], method: str, figure: str) -> Estimate:
        results = [r for t in targets for r in self.per_target[t].get(method, [])]
        return seed_estimate(results, lambda r: self.value(r, figure)).scaled(100.0)


def fmt(e: Estimate) -> str:
    if e.mean is None:
        return "n/a"
    return f"{e.mean:.1f}" + ("" if e.half is None else f" ± {e.half:.1f}")


def pct(e: Estimate) -> str:
    return "n/a" if e.mean is None else f"{fmt(e)}%"


def _goal(name: str, rule: Estimate, ok, figures: str) -> tuple[str, bool | None, str]:
    """A goal judged on the mean (``ok``: the mean -> met); n/a when the figure is missing."""
    if rule.mean is None:
        return name, None, figures or "not in the results"
    return name, ok(rule.mean), figures


def _ratio_goal(name: str, rule: Estimate, ref: Estimate, k: float, at_least: bool) -> tuple[str, bool | None, str]:
    if ref.mean is None:
        return name, None, f"{fmt(rule)} vs n/a"
    bound = k * ref.mean
    return _goal(name, rule, (lambda v: v >= bound) if at_least else (lambda v: v <= bound),
                 f"{fmt(rule)} vs {bound:.1f}")


def dominators(get, baselines: list[str], rule: str = RULE) -> tuple[list[str], str]:
    """Baselines whose means dominate the RULE row's on (forget, retain), and the figures shown."""
    f_rule, r_rule = get(rule, "forget"), get(rule, "retain")
    out, shown = [], [f"RULE {fmt(f_rule)} / {fmt(r_rule)}"]
    for k in baselines:
        f, r = get(k, "forget"), get(k, "retain")
        if None in (f.mean, r.mean, f_rule.mean, r_rule.mean):
            continue
        if f.mean <= f_rule.mean and r.mean >= r_rule.mean and (f.mean < f_rule.mean or r.mean > r_rule.mean):
            out.append(k)
            shown.append(f"{k} {fmt(f)} / {fmt(r)}")
    return out, "; ".join(shown)


def check(get, baselines: list[str], rule_method: str = RULE) -> list[tuple[str, bool | None, str]]:
    """(goal, met or None for n/a, figures) of one RULE row with ``get(method, figure)`` -> Estimate; the dominance
    goal is n/a without a baseline (nothing was compared)."""
    rule = {f: get(rule_method, f) for f in (*PATHS, "retain")}
    orig, rs = get(ORIGINAL, "forget"), get(RS, "forget")
    dom, dom_figures = dominators(get, baselines, rule_method)
    f_rs = rs.mean
    return [
        _ratio_goal("forget All <= 50% of Original", rule["forget"], orig, 0.5, at_least=False),
        _goal("forget All >= 15 below RS", rule["forget"], lambda v: f_rs is not None and v <= f_rs - 15,
              f"{fmt(rule['forget'])} vs RS {fmt(rs)}"),
        _ratio_goal("neighbor All >= 85% of Original", rule["neighbor"], get(ORIGINAL, "neighbor"), 0.85, True),
        _ratio_goal("Boundary Answer >= 85% of Original", rule["boundary_answer"],
                    get(ORIGINAL, "boundary_answer"), 0.85, True),
        _goal("Boundary Refused <= 10%", rule["boundary_refused"], lambda v: v <= 10,
              f"{fmt(rule['boundary_refused'])}%"),
        _goal("forget probes refused >= 60%", rule["refused"], lambda v: v >= 60, f"{fmt(rule['refused'])}%"),
        _goal("refusals naming the target >= 80%", rule["named"], lambda v: v >= 80,
              f"{fmt(rule['named'])}%; asked by name {pct(rule['named_direct'])}, "
              f"indirectly {pct(rule['named_indirect'])}; where the name is not the answer "
              f"{pct(rule['named_not_answer'])}; at most {pct(rule['named_ceiling'])} without giving an answer "
              "away"),
        _goal("Refusal Ends >= 90%", rule["ends"], lambda v: v >= 90, f"{fmt(rule['ends'])}%"),
        _goal("naturalness (proxy) >= RS's", rule["naturalness"],
              lambda v: get(RS, "naturalness").mean is not None and v >= get(RS, "naturalness").mean,
              f"{fmt(rule['naturalness'])} vs RS {fmt(get(RS, 'naturalness'))}"),
        _goal(UNDOMINATED, rule["retain"], lambda _: not dom, ("dominated by " if dom else "none; ") + dom_figures)
        if baselines else (UNDOMINATED, None, "no baseline run"),
    ]


def _cell(met: bool | None, figures: str) -> str:
    return ("n/a" if met is None else "met" if met else "**missed**") + f" ({figures})"


def header(figs: Figures, n_targets: int, rule: str = RULE) -> str:
    """Whose goals, what the figures are: sandbox numbers, seed means (or one draw), the Pareto retain used."""
    seeds = figs.seeds
    how = (f"means over {len(seeds)} seeds ({', '.join(map(str, seeds))}), ± = 95% interval over seeds (t), judged "
           f"on the means; the mean column: each seed's mean over the {n_targets} targets, then the mean over seeds"
           if len(seeds) > 1 else ONE_SEED_NOTE)
    retain = "mean of neighbor All and Boundary Answer" if figs.boundary else "neighbor All (no boundary suite)"
    return (f"Sandbox goals of {METHODS[rule].label} (knowledge-injection sandbox: not comparable with paper numbers); "
            f"{how}. Pareto retain: {retain}.\n\n")


def to_markdown(per_target: dict[str, dict[str, list[dict]]], rule: str = RULE) -> str:
    """The goals table of one RULE row over the targets that have it."""
    per_target = {t: rows for t, rows in per_target.items() if rule in rows}
    figs = Figures(per_target)
    targets = list(per_target)
    common = [k for k in BASELINES if all(k in rows for rows in per_target.values())]
    columns = [[t] for t in targets] + [targets]
    checks = []
    for ts in columns:
        here = common if len(ts) > 1 else [k for k in BASELINES if k in per_target[ts[0]]]
        checks.append(check(lambda m, f, ts=ts: figs.estimate(ts, m, f), here, rule))
    lines = ["| goal | " + " | ".join([*targets, "mean"]) + " |", "|---|" + "---|" * len(checks)]
    for i, (goal, _, _) in enumerate(checks[0]):
        lines.append(f"| {goal} | " + " | ".join(_cell(c[i][1], c[i][2]) for c in checks) + " |")
    return header(figs, len(targets), rule) + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="the pipeline's LOG_DIR/rwku/<EXP> folder")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    per_target = load(args.run_dir)
    if not per_target:
        print(f"error: no target under {args.run_dir} has the original and rs results and one of {', '.join(RULES)}",
              file=sys.stderr)
        return 2
    rules = [r for r in RULES if any(r in rows for rows in per_target.values())]
    table = "\n".join(to_markdown(per_target, r) for r in rules)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
