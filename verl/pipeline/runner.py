"""Running a plan: each stage a subprocess with its output teed to the stage's run.log, a ``.done`` marker (JSON:
finish time, seconds, command, the seed it trained with and whether every seed shares it) written last, stage
timings in ``<exp>/stage_times.json``, the report at the end. A finished stage is skipped on the next run; a killed
ReBO run resumes from its latest complete checkpoint (the trainer's ``trainer.resume=auto``); a killed RS or baseline
run restarts. Under SEEDS each seed's stages have folders of their own, so a seed is skipped or resumed alone."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from verl.pipeline.plan import Plan, Planner, Step, TargetPlan, latest_actor, rel, stage_env
from verl.pipeline.resources import memory_report
from verl.utils.io import atomic_write_json, atomic_write_text
from verl.utils.malloc import CPU_MALLOC_ENV


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message names it, its log and the log's last lines."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tee(argv: list[str], log_path: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``argv`` with stdout+stderr appended to ``log_path`` and echoed to stderr; returns (rc, last lines)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=25)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')} {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace", bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:  # Ctrl-C: stop the stage too, never leave it running
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return rc, list(tail)


def run_step(step: Step, env: dict[str, str]) -> float:
    step.run_dir.mkdir(parents=True, exist_ok=True)
    log(f"run  {step.title} -> {rel(step.run_dir)}")
    t0 = time.time()
    if step.prepare:
        step.prepare()
    rc, tail = tee(step.argv(), step.log, env)
    if rc != 0:
        raise StageFailed(f"{step.title} failed (exit code {rc}); log: {rel(step.log)}; its last lines:\n  "
                          + "\n  ".join(tail[-15:] or ["(no output)"]))
    seconds = round(time.time() - t0, 1)
    if step.kind != "eval":  # an evaluation's marker is its result JSON, written by the evaluator
        atomic_write_json(step.marker, {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                        "seconds": seconds, "cmd": step.cmd, "seed": step.trained_seed(),
                                        "shared": step.shared, **({"digests": step.digests} if step.digests else {})})
    else:
        missing = [rel(p) for p in (step.results or {"": step.marker}).values() if not p.is_file()]
        if missing:
            raise StageFailed(f"{step.title} exited 0 without writing {', '.join(missing)}; log: {rel(step.log)}")
    log(f"done {step.title} in {seconds:.0f} s")
    return seconds


def run_target(planner: Planner, target: str, env: dict[str, str], times: dict[str, float],
               earlier: dict[str, float] | None = None) -> TargetPlan:
    """Run the target's stages still to do, recording each one's seconds in ``times``. An evaluation runs only the
    models not evaluated yet, so its seconds add to ``earlier`` (the stage times of previous invocations); a training
    stage that runs again replaces its output, and its time."""
    tp = planner.plan_target(target)
    for st in tp.steps:
        if st.done:
            log(f"skip {st.title} ({st.reason})")
    for note in tp.notes:
        log(note)
    attempted: set[str] = set()
    while True:  # re-plan after each stage: a finished stage fixes what the next one reads
        todo = [s for s in tp.steps if not s.done and s.name not in attempted]
        if not todo:
            return tp
        step = todo[0]
        attempted.add(step.name)
        seconds = run_step(step, env)
        times[step.name] = seconds + ((earlier or {}).get(step.name, 0.0) if step.kind == "eval" else 0.0)
        if step.kind == "rebo" and not planner_latest(step):
            raise StageFailed(f"{step.title} finished without a checkpoint in {rel(step.run_dir)}/checkpoints")
        tp = planner.plan_target(target)


def resource_lines(plan: Plan) -> list[str]:
    """The memory plan of the GPU stages (first target and first seed: the others repeat its stages) and the disk
    plan."""
    steps = plan.targets[0].steps if plan.targets else []
    first = plan.settings.seeds[0] if plan.settings.seeds else None
    steps = [st for st in steps if st.seed in (None, first)]
    lines = memory_report(plan.resources, steps)
    if not lines and plan.config.device == "cpu":
        heap = "malloc as your environment sets it"
        if set(CPU_MALLOC_ENV) <= set(plan.env):
            values = " ".join(f"{k}={plan.env[k]}" for k in CPU_MALLOC_ENV)
            heap = f"stages keep freed memory in malloc's heap ({values})"
        lines = [f"memory plan: a CPU budget (no GPU stage); {heap}"]
    lines += [f"note: {n}" for n in plan.notes]
    if plan.disk is not None:
        lines += plan.disk.report(plan.settings.log_dir)
    return lines


def planner_latest(step: Step) -> bool:
    return latest_actor(step.run_dir) is not None


def run_plan(planner: Planner, plan: Plan) -> Path:
    s = plan.settings
    if plan.problems:
        raise StageFailed("cannot run:\n  " + "\n  ".join(plan.problems))
    exp = s.exp_dir
    exp.mkdir(parents=True, exist_ok=True)
    env = stage_env(plan)
    timings_path = exp / "stage_times.json"

    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    t0 = time.time()
    log(f"RULE {s.benchmark}: MODEL={s.model} TARGETS='{' '.join(t.target for t in plan.targets)}' "
        f"METHODS='{' '.join(m.name for m in s.methods)}' BUDGET={s.budget} protocol={s.protocol} "
        f"DATA_DIR={s.data_dir} -> {rel(exp)}")
    for note in s.notes:
        log(f"note: {note}")
    for line in resource_lines(plan):
        log(line)
    for tp in plan.targets:
        log(f"== target {tp.target} ({s.protocol} protocol, {s.budget} budget) -> {rel(tp.dir)}")
        times: dict[str, float] = {}
        try:
            run_target(planner, tp.target, env, times, timings.get(tp.target))
        finally:
            if times:
                timings.setdefault(tp.target, {}).update(times)
                atomic_write_json(timings_path, timings)
    report_dir = exp / "report"
    rc, tail = tee([sys.executable, "-m", "verl.eval.report", rel(exp), "--out", rel(report_dir)],
                   exp / "report.log", env)
    if rc != 0:
        raise StageFailed(f"the report failed (exit code {rc}); log: {rel(exp / 'report.log')}:\n  "
                          + "\n  ".join(tail[-15:]))
    total = round(time.time() - t0, 1)
    lines = [f"{t} {name} {sec}" for t, steps in timings.items() for name, sec in steps.items()]
    atomic_write_text(exp / "stage_times.txt", "\n".join(lines) + "\n")
    log(f"pipeline finished in {total:.0f} s; stage times: {rel(timings_path)}; table: {rel(report_dir / 'report.md')}")
    return report_dir / "report.md"


__all__ = ["StageFailed", "resource_lines", "run_plan", "run_step", "tee"]
