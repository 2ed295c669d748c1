"""The plan: per target, the stages in order, each with its command, input and output models, fully resolved
configuration, and whether it runs or is skipped (and why). A plan is a function of the settings and of what is
on disk, so the runner re-plans after every stage (a finished RS run decides which checkpoint ReBO starts from)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl.pipeline.config import REPO, PipelineConfig, budget_file, load_pipeline_config
from verl.pipeline.methods import ALWAYS, METHODS, Method
from verl.pipeline.settings import Settings, gpu_memory_bytes, variable_overrides

MARKER = ".done"
REBO_TRAIN_STEM = "rl_rejection_with_fb_neighbor_target"
REBO_VAL_STEM = "rl_rejection_eval_target"


class PlanError(ValueError):
    """The run cannot start: a config is missing or wrong, or the machine lacks what a stage needs."""


def rel(path: str | Path) -> str:
    """A path relative to the current folder when inside it (shorter commands), else absolute."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


@dataclass
class Step:
    name: str  # unique within a target: inject, rs, rule_grpo, ga, data, eval:rs, ...
    kind: str  # inject | rs | baseline | rebo | data | eval
    title: str  # for the log: "RS 1_Stephen_King"
    run_dir: Path  # the stage's folder: run.log and the .done marker (eval: the results folder)
    cmd: list[str]  # argv without the interpreter
    inputs: dict[str, str]  # model / ref / data the stage reads
    output: str  # what the stage produces (a model folder, a result JSON)
    config: dict[str, Any]  # the stage's fully resolved configuration
    marker: Path  # exists = done
    log: Path  # where the output is teed
    prepare: Callable[[], None] | None = None  # in-process work before the command (e.g. writing a data subset)
    done: bool = False
    reason: str = ""  # why it is skipped, or what changed since it was done
    memory: Any = None  # resources.StageMemory of a GPU training stage: its per-GPU plan and the knobs chosen

    def argv(self) -> list[str]:
        return [sys.executable, *self.cmd]


@dataclass
class TargetPlan:
    target: str  # RWKU folder, or "books" for MUSE
    dir: Path  # LOG_DIR/<benchmark>/<EXP>/<target>
    steps: list[Step]
    notes: list[str] = field(default_factory=list)  # methods that do not apply, and similar


@dataclass
class Plan:
    settings: Settings
    config: PipelineConfig
    config_files: list[str]  # budget YAML then overlays
    targets: list[TargetPlan]
    problems: list[str]  # what stops a real run (missing GPUs, ...); a dry run lists them
    n_gpus: int
    env: dict[str, str]  # variables set for every stage
    resources: Any = None  # resources.Resources of GPU plans (None: no GPU stage, or the model's shapes are unknown)
    disk: Any = None  # resources.DiskPlan: checkpoints and outputs of the stages still to run, and the free space
    notes: list[str] = field(default_factory=list)  # what the plan could not check


# ------------------------------------------------------------------------------------------------ helpers
def _flags(values: dict[str, Any]) -> list[str]:
    out = []
    for k, v in values.items():
        if v is None:
            continue
        out += [f"--{k}", ("true" if v else "false") if isinstance(v, bool) else str(v)]
    return out


def _dotlist(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _dotlist(v, key + ".")
        elif v is None:
            out.append(f"{key}=null")
        elif isinstance(v, bool):
            out.append(f"{key}={'true' if v else 'false'}")
        elif isinstance(v, list):
            out.append(f"{key}=[{','.join(str(x) for x in v)}]")
        else:
            out.append(f"{key}={v}")
    return out


def _rs_config(title: str, argv: list[str]) -> dict:
    """RS.train's own parsing of the command (unknown flags and YAML keys are errors), as a dict."""
    from RS.args import args_to_dict, parse_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return args_to_dict(parse_args(argv))
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise PlanError(f"{title}: {msg[-1] if msg else 'bad RS.train flags'}") from None
    except (ValueError, FileNotFoundError) as exc:
        raise PlanError(f"{title}: {exc}") from None


def _eval_config(title: str, argv: list[str]) -> dict:
    from verl.eval.cli import build_parser

    ns, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise PlanError(f"{title}: unknown verl.eval flag(s) {unknown} (from the budget's eval section)")
    return vars(ns)


def _rebo_config(title: str, config_file: str, overrides: list[str]) -> dict:
    from verl.config import load_config

    try:
        return load_config(config_file, overrides).to_dict()
    except ValueError as exc:
        raise PlanError(f"{title} ({config_file}): {exc}") from None


def _marker_state(step: Step) -> None:
    """Mark a step done when its marker exists; say so when it was made by another command."""
    if not step.marker.is_file():
        step.reason = "not done"
        return
    step.done = True
    if step.kind == "eval":
        step.reason = f"done: {rel(step.marker)}"
        return
    try:
        info = json.loads(step.marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = {}  # a marker of the bash runners: a date line
    when = info.get("finished", step.marker.read_text().strip()[:20]) if info is not None else ""
    step.reason = f"done {when}: {rel(step.marker)}"
    if isinstance(info, dict) and info.get("cmd") and info["cmd"] != step.cmd:
        step.reason += f" (made with other settings; delete {rel(step.run_dir)} to rerun)"


def latest_actor(run_dir: Path) -> Path | None:
    """The actor of the newest complete ReBO checkpoint under a run folder."""
    from verl.trainer.checkpoint import STEP_DIR

    ckpts = run_dir / "checkpoints"
    steps = sorted((int(m.group(1)), p) for p in (ckpts.iterdir() if ckpts.is_dir() else [])
                   if (m := STEP_DIR.match(p.name)) and (p / "actor").is_dir())
    return steps[-1][1] / "actor" if steps else None


# ------------------------------------------------------------------------------------------------ planner
class Planner:
    def __init__(self, settings: Settings, n_gpus: int | None = None,
                 gpu_memory: Callable[[], int | None] | None = None):
        """``gpu_memory``: bytes of the smallest visible GPU in GPUS (None: none here); asked once, only when a stage
        runs on GPUs and GPU_MEMORY is not set."""
        self.s = settings
        self._gpu_memory = gpu_memory
        self._resources: Any = None
        self.files = [str(budget_file(settings.budget)), *settings.overlays]
        top, self.last = variable_overrides(settings)
        try:
            self.cfg = load_pipeline_config(self.files, top)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        self.n_gpus = len(settings.gpus) if n_gpus is None else n_gpus
        self.problems: list[str] = []
        self.notes: list[str] = []  # what the plan could not check
        if self.cfg.device == "cuda" and self.n_gpus == 0:
            self.problems.append(f"BUDGET={settings.budget} is sized for GPUs (device: cuda) but no GPU is visible: "
                                 "use BUDGET=smoke or BUDGET=test on a CPU, or set GPUS")

    # ---- GPU memory
    def resources(self):
        """The memory planner of GPU stages (``resources.Resources``), made on first use; None when the model's
        shapes cannot be found offline (the plan says so and checks nothing)."""
        if self._resources is None:
            from verl.pipeline.resources import DEFAULT_GPU_GB, Resources
            from verl.utils.memory import GB

            here = None if self.s.gpu_memory else (self._gpu_memory or (lambda: gpu_memory_bytes(self.s.gpus)))()
            if self.s.gpu_memory:
                gpu_bytes, source = int(self.s.gpu_memory * GB), f"GPU_MEMORY={self.s.gpu_memory:g}"
            elif here:
                gpu_bytes, source = here, "the smallest GPU of GPUS"
            else:
                gpu_bytes, source = int(DEFAULT_GPU_GB * GB), "no GPU here: the paper's cards; set GPU_MEMORY"
            from verl.utils.vllm_engine import vllm_available

            self._resources = Resources(self.s.model, self.n_gpus, gpu_bytes, source, REPO,
                                        engine_available=vllm_available() if here else True)
            if self._resources.shape is None:
                self.notes.append(f"memory plan: the shapes of MODEL={self.s.model} are not known offline (not a "
                                  "local folder, not in the Hugging Face cache or the table of the paper's models): "
                                  "not checked")
        return self._resources if self._resources.shape is not None else None

    # ---- stage builders
    def args(self, kind: str) -> dict[str, Any]:
        return self.cfg.stage_args(kind, self.s.benchmark, self.s.protocol, self.last.get(kind))

    def _config_path(self, what: str, stem: str, given: str | None) -> str:
        path = Path(given) if given else REPO / "RS" / "configs" / f"{stem}_{self.cfg.family}.yaml"
        if not path.is_absolute() and not path.exists():
            path = REPO / path
        if not path.is_file():
            raise PlanError(f"{what}: config {rel(path)} does not exist (BUDGET={self.s.budget} uses the "
                            f"'{self.cfg.family}' config family, RS/configs/<stage>_{self.cfg.family}.yaml; no other "
                            "model's config is used instead): write it, or choose another BUDGET")
        return rel(path)

    def rs_like(self, name: str, kind: str, title: str, run_dir: Path, model: str, stage: str, dataset: str,
                config: str, extra: dict[str, Any], target: str | None) -> Step:
        flags = dict(extra)
        flags.pop("config", None)
        argv = ["--stage", stage, "--config", config]
        if dataset:
            argv += ["--dataset", dataset]
        argv += ["--model_name_or_path", model]
        if target:
            argv += ["--target", target]
        argv += ["--data_dir", rel(self.s.data_dir), "--output_dir", rel(run_dir), "--overwrite_output_dir",
                 *_flags(flags)]
        resolved = _rs_config(title, argv)
        accelerate, memory = "RS/configs/accelerate_fsdp.yaml", None
        if self.cfg.device == "cuda" and self.n_gpus and self.resources():
            memory = self.resources().fit_sft(name, kind, resolved, {k: v for k, v in flags.items()})
        if memory is not None:
            knobs = dict(memory.overrides)
            accelerate = knobs.pop("accelerate_config", accelerate)
            if knobs:  # RS.train flags the memory plan chose
                argv += _flags(knobs)
                resolved = _rs_config(title, argv)
            if not memory.fits:
                self.problems.append(memory.message)
        cmd = ["-m", "RS.train", *argv]
        if self.cfg.device == "cuda" and (self.n_gpus > 1 or memory and "accelerate_config" in memory.overrides):
            # one process per GPU (FSDP); the offload config also on one GPU
            cmd = ["-m", "accelerate.commands.launch", "--config_file", rel(REPO / accelerate),
                   "--num_processes", str(self.n_gpus), *cmd]
        return Step(name, kind, title, run_dir, cmd, {"model": model}, rel(run_dir), resolved,
                    run_dir / MARKER, run_dir / "run.log", memory=memory)

    def rs_output(self, rs: Step) -> str:
        """RS's model for ReBO: the configured epoch checkpoint when RS writes it, else its final model."""
        ckpt = rs.run_dir / self.cfg.rs_checkpoint
        if rs.done:
            return rel(ckpt) if ckpt.is_dir() else rel(rs.run_dir)
        c = rs.config
        k = self.cfg.rs_checkpoint.rpartition("-")[2]
        epochs_ok = k.isdigit() and c["save_strategy"] == "epoch" and c["max_steps"] < 0 and c["num_train_epochs"] >= int(k)
        return rel(ckpt) if epochs_ok else rel(rs.run_dir)

    def rebo(self, m: Method, title: str, run_dir: Path, start: str, ref: str, train: str, val: str | None,
             wiring: dict[str, Any]) -> Step:
        variant = self.cfg.rebo_variant
        cfg_file = m.rebo_configs[self.s.benchmark][variant]
        if not (REPO / cfg_file).is_file():
            raise PlanError(f"{title}: ReBO config {cfg_file} does not exist")
        base = {"data": {"train_files": train, "val_files": val, "rwku": {"data_root": rel(self.s.data_dir)}},
                "worker": {"actor": {"model_path": start}, "ref": {"model_path": ref}},
                "trainer": {"save_dir": rel(run_dir), "experiment_name": f"{m.name}_{run_dir.parent.name}"}}
        from omegaconf import OmegaConf

        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(wiring),
                                                        OmegaConf.create(self.args("rebo"))))
        overrides = _dotlist(merged)
        resolved = _rebo_config(title, rel(REPO / cfg_file), overrides)
        if resolved["trainer"]["device"] == "cuda":
            if self.n_gpus == 0:
                self.problems.append(f"{title}: {cfg_file} trains on GPUs (trainer.device=cuda) but no GPU is "
                                     "visible: use BUDGET=smoke or BUDGET=test (CPU configs), or set GPUS")
            else:
                overrides.append(f"trainer.n_workers={self.n_gpus}")  # one worker per GPU given
                resolved = _rebo_config(title, rel(REPO / cfg_file), overrides)
        memory = None
        if resolved["trainer"]["device"] == "cuda" and self.n_gpus and self.resources():
            from verl.pipeline.resources import flat

            memory = self.resources().fit_rebo(m.name, resolved, flat(self.args("rebo")))
            if memory.overrides:  # the knobs and the vLLM share the memory plan chose
                overrides += _dotlist(memory.overrides)
                resolved = _rebo_config(title, rel(REPO / cfg_file), overrides)
            if not memory.fits:
                self.problems.append(memory.message)
        cmd = ["-m", "verl.trainer.main", f"config={rel(REPO / cfg_file)}", *overrides]
        actor = latest_actor(run_dir)
        last = "<last>" if resolved["trainer"].get("total_epochs") else resolved["trainer"]["total_steps"]  # by rows
        out = rel(actor) if actor else f"{rel(run_dir)}/checkpoints/global_step_{last}/actor"
        return Step(m.name, "rebo", title, run_dir, cmd, {"model": start, "ref": ref, "data": train}, out, resolved,
                    run_dir / MARKER, run_dir / "run.log", memory=memory)

    def evaluation(self, name: str, label: str, model: str, results: Path, target: str | None) -> Step:
        out = results / f"{name}.json"
        argv = ["--benchmark", self.s.benchmark, "--model_path", model]
        if target:
            argv += ["--target", target]
        argv += ["--method", label, "--protocol", self.s.protocol, "--data_dir", rel(self.s.data_dir),
                 "--output", rel(out), *_flags(self.args("eval"))]
        title = f"eval {label} ({name})"
        return Step(f"eval:{name}", "eval", title, results, ["-m", "verl.eval", *argv], {"model": model}, rel(out),
                    _eval_config(title, argv), out, results / f"{name}.log")

    # ---- one target
    def plan_rwku(self, target: str) -> TargetPlan:
        from data.rwku import resolve_target

        try:
            folder = resolve_target(target, self.s.data_dir).folder
        except Exception as exc:  # DataValidationError and friends: the message says what to do
            raise PlanError(f"TARGETS: {exc}") from None
        tdir = self.s.exp_dir / folder
        steps: list[Step] = []
        models: dict[str, str] = {"original": self.s.model}
        if self.s.protocol == "sandbox":
            inject_args = self.args("inject")
            steps.append(self.rs_like("inject", "inject", f"inject {folder}", tdir / "inject", self.s.model, "inject", "",
                                      self._config_path("inject", "inject", inject_args.get("config")), inject_args,
                                      folder))
            models["base"] = self.s.model
            models["original"] = rel(tdir / "inject")
        rs_args = self.args("rs")
        rs = self.rs_like("rs", "rs", f"RS {folder}", tdir / "rs", models["original"], "rt", "reject_target",
                          self._config_path("RS", "rs", rs_args.get("config")), rs_args, folder)
        steps.append(rs)
        _marker_state(rs)
        models["rs"] = self.rs_output(rs)
        for m in self.s.methods:
            if m.name in ALWAYS:
                continue
            run_dir = tdir / m.name
            if m.kind == "rebo":
                start = models["rs"] if self.cfg.rebo_start == "rs" else models["original"]
                ref = start if self.cfg.rebo_ref == "start" else models["original"]
                train, prepare = f"rwku:{folder}:{REBO_TRAIN_STEM}", None
                if self.cfg.rebo_data == "reject_only":
                    subset = tdir / f"{m.name}.reject_only.json"
                    train, prepare = rel(subset), _reject_only_writer(folder, self.s.data_dir, subset)
                step = self.rebo(m, f"ReBO {m.name} {folder}", run_dir, start, ref, train,
                                 f"rwku:{folder}:{REBO_VAL_STEM}", {})
                step.prepare = prepare
            else:
                step = self.rs_like(m.name, "baseline", f"{m.name} {folder}", run_dir, models["original"], m.stage,
                                    m.dataset, self._config_path(m.name, m.config_stem, None), self.args("baseline"),
                                    folder)
            steps.append(step)
            models[m.name] = step.output
        for name in ["base", "original", "rs", *[m.name for m in self.s.methods]]:
            if name in models and not any(s.name == f"eval:{name}" for s in steps):
                steps.append(self.evaluation(name, METHODS[name].label, models[name], tdir / "results", folder))
        for st in steps:
            _marker_state(st)
        return TargetPlan(folder, tdir, steps)

    def plan_muse(self) -> TargetPlan:
        tdir = self.s.exp_dir / "books"
        data_out = tdir / "data" / "MUSE" / "books"
        steps: list[Step] = []
        argv = ["--benchmark", "muse", "--data_dir", rel(self.s.data_dir), "--out", rel(data_out),
                *_flags(self.args("data"))]
        steps.append(Step("data", "data", "MUSE ReBO data", tdir / "data", ["-m", "data.synthesize", *argv],
                          {"data": rel(Path(self.s.data_dir) / "MUSE" / "books")}, rel(data_out),
                          {"argv": argv}, tdir / "data" / MARKER, tdir / "data" / "run.log"))
        rs_args = self.args("rs")
        rs = self.rs_like("rs", "rs", "RS books", tdir / "rs", self.s.model, "rt", "muse_reject",
                          self._config_path("RS", "rs", rs_args.get("config")), rs_args, None)
        steps.append(rs)
        _marker_state(rs)
        models = {"original": self.s.model, "rs": self.rs_output(rs)}
        notes = []
        for m in self.s.methods:
            if m.name in ALWAYS:
                continue
            if "muse" not in m.benchmarks:
                notes.append(f"{m.name}: applies to {'/'.join(m.benchmarks)} only; not run on MUSE")
                continue
            start = models["rs"] if self.cfg.rebo_start == "rs" else models["original"]
            ref = start if self.cfg.rebo_ref == "start" else models["original"]
            if self.cfg.rebo_data == "reject_only":
                raise PlanError("REBO_DATA=reject_only is an RWKU ablation; MUSE runs with REBO_DATA=full")
            # MUSE has no target name to reward: the two-stage reward without the entity bonus
            step = self.rebo(m, f"ReBO {m.name} books", tdir / m.name, start, ref,
                             rel(data_out / "rl_rejection_with_neighbor.json"), rel(data_out / f"{REBO_VAL_STEM}.json"),
                             {"worker": {"reward": {"reward_fn": "forget_two_stage_abs"}}})
            steps.append(step)
            models[m.name] = step.output
        for name in ["original", "rs", *[m.name for m in self.s.methods]]:
            if name in models and not any(s.name == f"eval:{name}" for s in steps):
                steps.append(self.evaluation(name, METHODS[name].label, models[name], tdir / "results", None))
        for st in steps:
            _marker_state(st)
        return TargetPlan("books", tdir, steps, notes)

    def plan_target(self, target: str) -> TargetPlan:
        return self.plan_muse() if self.s.benchmark == "muse" else self.plan_rwku(target)

    def plan(self, visible_gpus: Callable[[], int] | None = None) -> Plan:
        targets = [self.plan_target(t) for t in (self.s.targets if self.s.benchmark == "rwku" else ["books"])]
        needs_gpu = self.cfg.device == "cuda" or any(
            st.kind == "rebo" and st.config["trainer"]["device"] == "cuda" for tp in targets for st in tp.steps)
        missing: list[str] = []
        if needs_gpu and self.s.gpus:  # the ids given must exist here (asked only now: it imports torch)
            from verl.pipeline.settings import gpu_count

            have = (visible_gpus or gpu_count)()
            missing = [g for g in self.s.gpus if int(g) >= have]
            if missing:
                self.problems.append(f"GPUS={','.join(self.s.gpus)}: this machine has {have} visible GPU(s), so "
                                     f"GPU id(s) {','.join(missing)} do not exist")
        # a plan for another machine (its GPUs are not here) shows its disk need without refusing over this disk
        runs_here = not needs_gpu or (self.n_gpus > 0 and not missing)
        disk = self.disk_plan(targets, needs_gpu)
        if disk is not None and not disk.fits and runs_here:
            self.problems.append(disk.refusal(self.s.log_dir))
        env = {"RULE_DATA_DIR": rel(self.s.data_dir)}
        if self.s.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.s.gpus)
        return Plan(self.s, self.cfg, self.files, targets, list(dict.fromkeys(self.problems)), self.n_gpus, env,
                    resources=self.resources() if needs_gpu and self.n_gpus else None, disk=disk,
                    notes=list(dict.fromkeys(self.notes)))

    def disk_plan(self, targets: list[TargetPlan], exact: bool):
        """Disk need of the stages still to run against the free space under LOG_DIR (None: shapes unknown)."""
        from verl.pipeline.resources import disk_plan, model_shape

        res = self._resources
        shape = res.shape if res is not None and res.shape is not None else model_shape(self.s.model, exact=exact)
        if shape is None:
            return None
        return disk_plan([(tp.target, tp.steps) for tp in targets], shape, self.s.log_dir)


def _reject_only_writer(folder: str, data_dir: str, out: Path) -> Callable[[], None]:
    def write() -> None:
        from data.rwku import resolve_target
        from verl.utils.io import atomic_write_json

        rows = [r for r in resolve_target(folder, data_dir).load(REBO_TRAIN_STEM) if r["solution"][0] == "<reject>"]
        if not rows:
            raise PlanError(f"{folder}: {REBO_TRAIN_STEM}.json has no <reject> rows for REBO_DATA=reject_only")
        atomic_write_json(out, rows)

    return write


def stage_env(plan: Plan) -> dict[str, str]:
    return {**os.environ, **plan.env}


__all__ = ["Plan", "PlanError", "Planner", "Step", "TargetPlan", "latest_actor", "rel", "stage_env"]
