"""``python -m verl.pipeline rwku|muse [flags]``: the whole RULE pipeline (run_rwku.sh and run_muse.sh call it).

Per RWKU target: [stage 0: knowledge injection, sandbox protocol] -> Rejection Steering -> ReBO methods and
SFT-style baselines -> verl.eval on every model -> verl.eval.report (markdown/CSV/LaTeX table and Pareto plot).
MUSE-Books: ReBO data (data.synthesize) -> RS -> ReBO -> evaluation -> table. Every stage writes into
LOG_DIR/<benchmark>/<EXP>/<target>/<stage>/ and a .done marker last: a rerun skips finished stages, a killed ReBO
run resumes from its latest complete checkpoint. With SEEDS=1,2,3 every stage that samples (RS, ReBO, the
baselines) runs once per seed under <target>/seed<k>/<stage>/ (results in <target>/seed<k>/results/), while the
injection and the Base/Original evaluations (<target>/inject/, <target>/results/) run once and serve every seed;
the report gives seed means with 95% intervals. ``--dry-run`` prints the plan and runs nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap

from verl.pipeline.config import BUDGETS, PipelineConfig
from verl.pipeline.methods import METHODS
from verl.pipeline.plan import Plan, PlanError, Planner, rel
from verl.pipeline.runner import StageFailed, log, resource_lines, run_plan
from verl.pipeline.settings import VARS, resolve_settings


def _help_epilog() -> str:
    rows = [f"  {m.name:<11} {m.kind:<8} {m.label!r:<26} {'/'.join(m.benchmarks):<9} {m.doc}" for m in METHODS.values()]
    return "\n".join([
        "every flag above is also an environment variable (the name after 'variable'); the flag wins, and an",
        "empty variable counts as unset. Unknown flags and bad values are errors.",
        "",
        "methods (METHODS): name, kind, row label, benchmarks, what it is:",
        *rows,
        "",
        f"budgets (BUDGET): {', '.join(BUDGETS)} = examples/budgets/<name>.yaml, or any YAML with the keys of",
        "  verl/pipeline/config.py PipelineConfig; overlays (--overlay) use the same keys (the ablations:",
        "  examples/ablations/*.yaml). Stage flags merge onto each stage's own config file; --dry-run shows the "
        "result.",
        "",
        "examples:",
        "  bash run_rwku.sh                         # CPU default: embedded model, one target, smoke budget",
        "  BUDGET=test INJECT=0 bash run_rwku.sh --dry-run",
        "  SEEDS=1,2,3 BUDGET=test bash run_rwku.sh --dry-run   # RS, ReBO and baselines once per seed",
        "  MODEL=meta-llama/Meta-Llama-3-8B-Instruct INJECT=0 BUDGET=paper GPUS=0,1,2,3 \\",
        "      METHODS=\"rule_grpo rule_ppo rule_rpp ga npo simnpo rt\" bash run_rwku.sh",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verl.pipeline", description=__doc__.split("\n\n", 1)[1],
                                epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("benchmark", choices=("rwku", "muse"), help="which pipeline: RWKU targets or MUSE-Books")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, inputs/outputs, run or skip and "
                   "why, each stage's resolved configuration) and exit; loads no model")
    for v in VARS:
        kw = {"action": "append"} if v.env == "OVERLAYS" else {}
        doc = f"{v.doc} (variable {v.env}; default: {v.default})".replace("%", "%%")  # argparse formats help
        p.add_argument(v.flag, dest=v.env, metavar=v.env, help=doc, **kw)
    return p


def _values(ns: argparse.Namespace, env: dict) -> dict[str, str]:
    out = {}
    for v in VARS:
        flag = getattr(ns, v.env)
        if isinstance(flag, list):
            flag = " ".join(flag)
        out[v.env] = flag if flag is not None else env.get(v.env, "")
    return out


def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={v}")
    return out


def format_plan(plan: Plan) -> str:
    s = plan.settings
    lines = [
        f"RULE pipeline, {s.benchmark}: dry run (nothing is run)",
        f"  MODEL={s.model}  protocol={s.protocol} ({s.protocol_reason})  BUDGET={s.budget}",
        f"  METHODS={' '.join(m.name for m in s.methods)}  EXP dir={rel(s.exp_dir)}  DATA_DIR={rel(s.data_dir)}",
        f"  GPUs: {','.join(s.gpus) if s.gpus else 'none'} ({plan.n_gpus} -> trainer.n_workers of GPU ReBO runs)",
        f"  config: {' + '.join(rel(f) for f in plan.config_files)} + variables",
        "  " + seeds_line(s.seeds),
        "  stage env: " + " ".join(f"{k}={v}" for k, v in plan.env.items()),
    ]
    lines += [f"  note: {n}" for n in s.notes]
    cfg: PipelineConfig = plan.config
    lines.append("  pipeline config: " + " ".join(f"{k}={getattr(cfg, k)}" for k in
                                                  ("family", "rebo_variant", "device", "rebo_start", "rebo_ref",
                                                   "rebo_data", "rs_checkpoint")))
    for tp in plan.targets:
        lines.append(f"\n== target {tp.target} -> {rel(tp.dir)}")
        for i, st in enumerate(tp.steps, 1):
            state = f"skip ({st.reason})" if st.done else "run"
            lines.append(f"{i:>3}. {st.title}: {state}")
            lines.append("       in:  " + "  ".join(f"{k}={v}" for k, v in st.inputs.items()))
            lines.append(f"       out: {st.output}")
            if len(st.results) > 1:  # one evaluator process for several models: each one's state
                states = [f"{METHODS[n].label} ({n}): {'skip (done)' if p.is_file() else 'run'}"
                          for n, p in st.results.items()]
                lines.append("       models: " + " | ".join(states))
            lines.append("       cmd: python " + shlex.join(st.cmd))
            body = " ".join(_flat(st.config))
            lines += textwrap.wrap(body, 116, initial_indent="       config: ", subsequent_indent="         ",
                                   break_on_hyphens=False, break_long_words=False)
        for note in tp.notes:
            lines.append(f"     note: {note}")
    lines.append("\n  then: python -m verl.eval.report " + rel(s.exp_dir) + " --out " + rel(s.exp_dir / "report"))
    lines += ["", *resource_lines(plan)]
    if plan.problems:
        lines.append("\nA real run would stop before its first stage:")
        lines += [f"  - {p}" for p in plan.problems]
    return "\n".join(lines)


def seeds_line(seeds: list[int]) -> str:
    if not seeds:
        return ("SEEDS: one run, each stage at its own config's seed (one seed: one draw; SEEDS=1,2,3 for seed means "
                "with intervals)")
    return (f"SEEDS={','.join(map(str, seeds))}: RS (--seed), ReBO (trainer.seed) and the baselines (--seed) once per "
            "seed under <target>/seed<k>/; the injection and the Base/Original evaluations once, shared")


def main(argv: list[str] | None = None, env: dict | None = None) -> int:
    env = dict(os.environ if env is None else env)
    ns = build_parser().parse_args(argv)
    try:
        settings = resolve_settings(ns.benchmark, _values(ns, env), env)
        planner = Planner(settings)
        plan = planner.plan(environ=env)
    except (PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ns.dry_run:
        print(format_plan(plan))
        return 0
    try:
        run_plan(planner, plan)
    except (StageFailed, PlanError) as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: finished stages are kept; run again to resume")
        return 130
    return 0


__all__ = ["build_parser", "format_plan", "main"]
