"""The plan: per target, the stages in order, each with its command, input and output models, fully resolved
configuration, and whether it runs or is skipped (and why). A plan is a function of the settings and of what is
on disk, so the runner re-plans after every stage (a finished RS run decides which checkpoint ReBO starts from)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data import muse
from data.boundary import BOUNDARY_SHARE, rebo_train_rows, write_rebo_train_file
from data.rwku import REBO_EVAL_STEM, REBO_TRAIN_STEM, resolve_target
from RS.args import args_to_dict, parse_args
from verl.eval.cli import build_parser
from verl.pipeline.config import REPO, PipelineConfig, budget_file, load_pipeline_config
from verl.pipeline.methods import ALWAYS, METHODS, Method
from verl.pipeline.resources import DEFAULT_GPU_GB, Resources, disk_plan, flat, model_shape
from verl.pipeline.settings import Settings, gpu_count, gpu_memory_bytes, variable_overrides
from verl.utils.checkpoint import STEP_DIR
from verl.utils.malloc import cpu_malloc_env
from verl.utils.memory import GB
from verl.utils.vllm_engine import vllm_available

MARKER = ".done"


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
    seed: int | None = None  # the SEEDS value the stage runs for (None: SEEDS not given, or a stage shared by seeds)
    shared: bool = False  # runs once per target and serves every seed (injection, MUSE data, Base/Original results)
    results: dict[str, Path] = field(default_factory=dict)  # eval: result name -> its JSON (several: one engine)
    digests: dict[str, str] = field(default_factory=dict)  # content hashes of what it reads (in the marker)

    def argv(self) -> list[str]:
        return [sys.executable, *self.cmd]

    def trained_seed(self) -> int | None:
        """The seed the stage trains with, as its resolved config says (RS.train --seed, ReBO trainer.seed)."""
        if self.kind == "rebo":
            return self.config.get("trainer", {}).get("seed")
        return self.config.get("seed") if self.kind in ("inject", "rs", "baseline") else None


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
    ns, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise PlanError(f"{title}: unknown verl.eval flag(s) {unknown} (from the budget's eval section)")
    return vars(ns)


def _rebo_config(title: str, config_file: str, overrides: list[str]) -> dict:
    from verl.config import load_config  # start-up cost: torch, via the core algorithms; --help stays fast

    try:
        return load_config(config_file, overrides).to_dict()
    except ValueError as exc:
        raise PlanError(f"{title} ({config_file}): {exc}") from None


def _marker_state(step: Step) -> None:
    """Mark a step done when its marker exists; say so when it was made by another command."""
    if step.kind == "eval":
        missing = [name for name, path in step.results.items() if not path.is_file()]
        step.done = not missing
        step.reason = f"done: {rel(step.marker)}" if step.done else "not done"
        if step.done and len(step.results) > 1:
            step.reason = f"done: {len(step.results)} results in {rel(step.marker.parent)}"
        return
    if not step.marker.is_file():
        step.reason = "not done"
        return
    step.done = True
    try:
        info = json.loads(step.marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = {}  # a marker of the bash runners: a date line
    when = info.get("finished", step.marker.read_text().strip()[:20]) if info is not None else ""
    step.reason = f"done {when}: {rel(step.marker)}"
    changed = isinstance(info, dict) and info.get("cmd") and info["cmd"] != step.cmd
    changed = changed or (isinstance(info, dict) and step.digests and info.get("digests", {}) != step.digests)
    if changed:
        step.reason += f" (made with other settings; delete {rel(step.run_dir)} to rerun)"


@functools.cache
def multi_model_eval() -> bool:
    """Whether verl.eval scores several models in one process (``--model NAME:LABEL=PATH --output_dir DIR``)."""
    return any("--output_dir" in a.option_strings for a in build_parser()._actions)


def seed_dir(tdir: Path, seed: int | None) -> Path:
    """Where a seed's stages go: ``<target>/seed<k>/``; without SEEDS the target folder itself (one run)."""
    return tdir if seed is None else tdir / f"seed{seed}"


def _named(name: str, seed: int | None) -> str:
    """A step name unique within a target: ``rs``, or ``seed2/rs`` under SEEDS."""
    return name if seed is None else f"seed{seed}/{name}"


def _titled(title: str, seed: int | None) -> str:
    return title if seed is None else f"{title} seed {seed}"


def latest_actor(run_dir: Path) -> Path | None:
    """The actor of the newest complete ReBO checkpoint under a run folder."""
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
        self._rebo_files: dict[tuple, tuple[list[dict], dict]] = {}  # ReBO train rows per target and recipe
        self.rebo_summaries: dict[str, dict] = {}  # target -> its ReBO file: rows kept and dropped, split, hash
        if self.cfg.device == "cuda" and self.n_gpus == 0:
            self.problems.append(f"BUDGET={settings.budget} is sized for GPUs (device: cuda) but no GPU is visible: "
                                 "use BUDGET=smoke or BUDGET=test on a CPU, or set GPUS")

    # ---- GPU memory
    def resources(self):
        """The memory planner of GPU stages (``resources.Resources``), made on first use; None when the model's
        shapes cannot be found offline (the plan says so and checks nothing)."""
        if self._resources is None:
            here = None if self.s.gpu_memory else (self._gpu_memory or (lambda: gpu_memory_bytes(self.s.gpus)))()
            if self.s.gpu_memory:
                gpu_bytes, source = int(self.s.gpu_memory * GB), f"GPU_MEMORY={self.s.gpu_memory:g}"
            elif here:
                gpu_bytes, source = here, "the smallest GPU of GPUS"
            else:
                gpu_bytes, source = int(DEFAULT_GPU_GB * GB), "no GPU here: the paper's cards; set GPU_MEMORY"

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
        path = Path(given) if given else REPO / "RS" / "configs" / self.cfg.family / f"{stem}.yaml"
        if not path.is_absolute() and not path.exists():
            path = REPO / path
        if not path.is_file():
            raise PlanError(f"{what}: config {rel(path)} does not exist (BUDGET={self.s.budget} uses the "
                            f"'{self.cfg.family}' config family, RS/configs/{self.cfg.family}/<stage>.yaml; no other "
                            "model's config is used instead): write it, or choose another BUDGET")
        return rel(path)

    def rs_like(self, name: str, kind: str, title: str, run_dir: Path, model: str, stage: str, dataset: str,
                config: str, extra: dict[str, Any], target: str | None, seed: int | None = None) -> Step:
        """An RS.train stage; ``seed`` (a SEEDS value) becomes its ``--seed``, over any budget section."""
        flags = dict(extra)
        flags.pop("config", None)
        if seed is not None:
            flags["seed"] = seed
        argv = ["--stage", stage, "--config", config]
        if dataset:
            argv += ["--dataset", dataset]
        argv += ["--model_name_or_path", model]
        if target:
            argv += ["--target", target]
        argv += ["--data_dir", rel(self.s.data_dir), "--output_dir", rel(run_dir), "--overwrite_output_dir",
                 *_flags(flags)]
        resolved = _rs_config(title, argv)
        keep = self.cfg.rs_checkpoint.rpartition("-")[2]
        if kind == "rs" and keep.isdigit() and keep not in str(resolved.get("save_keep_epochs", "")).split(","):
            # --save_total_limit must never remove the epoch checkpoint ReBO starts from (RS_CHECKPOINT)
            argv += ["--save_keep_epochs", ",".join(filter(None, [str(resolved.get("save_keep_epochs", "")), keep]))]
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
                    run_dir / MARKER, run_dir / "run.log", memory=memory, seed=seed, shared=kind == "inject")

    def rs_output(self, rs: Step) -> str:
        """RS's model for ReBO: the configured epoch checkpoint when RS writes it, else its final model."""
        ckpt = rs.run_dir / self.cfg.rs_checkpoint
        if rs.done:
            return rel(ckpt) if ckpt.is_dir() else rel(rs.run_dir)
        c = rs.config
        k = self.cfg.rs_checkpoint.rpartition("-")[2]
        epochs_ok = (k.isdigit() and c["save_strategy"] == "epoch" and c["max_steps"] < 0
                     and c["num_train_epochs"] >= int(k))
        return rel(ckpt) if epochs_ok else rel(rs.run_dir)

    def rebo(self, m: Method, title: str, run_dir: Path, start: str, ref: str, train: str, val: str | None,
             wiring: dict[str, Any], experiment: str, seed: int | None = None) -> Step:
        """A verl.trainer.main stage; ``seed`` (a SEEDS value) becomes its ``trainer.seed``, over any budget section."""
        variant = self.cfg.rebo_variant
        cfg_file = m.rebo_configs[self.s.benchmark][variant]
        if not (REPO / cfg_file).is_file():
            raise PlanError(f"{title}: ReBO config {cfg_file} does not exist")
        base = {"data": {"train_files": train, "val_files": val, "rwku": {"data_root": rel(self.s.data_dir)}},
                "worker": {"actor": {"model_path": start}, "ref": {"model_path": ref}},
                "trainer": {"save_dir": rel(run_dir), "experiment_name": experiment}}

        last = {"trainer": {"seed": seed}} if seed is not None else {}
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(wiring),
                                                        OmegaConf.create(self.args("rebo")), OmegaConf.create(last)))
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
            memory = self.resources().fit_rebo(_named(m.name, seed), resolved, flat(self.args("rebo")))
            if memory.overrides:  # the knobs and the vLLM share the memory plan chose
                overrides += _dotlist(memory.overrides)
                resolved = _rebo_config(title, rel(REPO / cfg_file), overrides)
            if not memory.fits:
                self.problems.append(memory.message)
        cmd = ["-m", "verl.trainer.main", f"config={rel(REPO / cfg_file)}", *overrides]
        actor = latest_actor(run_dir)
        last = "<last>" if resolved["trainer"].get("total_epochs") else resolved["trainer"]["total_steps"]  # by rows
        out = rel(actor) if actor else f"{rel(run_dir)}/checkpoints/global_step_{last}/actor"
        return Step(_named(m.name, seed), "rebo", title, run_dir, cmd, {"model": start, "ref": ref, "data": train}, out,
                    resolved, run_dir / MARKER, run_dir / "run.log", memory=memory, seed=seed)

    def evaluation(self, name: str, label: str, model: str, results: Path, target: str | None,
                   seed: int | None = None) -> Step:
        """One verl.eval process scoring one model into ``results/<name>.json``."""
        out = results / f"{name}.json"
        argv = ["--benchmark", self.s.benchmark, "--model_path", model]
        if target:
            argv += ["--target", target]
        argv += ["--method", label, "--protocol", self.s.protocol, "--data_dir", rel(self.s.data_dir),
                 "--output", rel(out), *_flags(self.args("eval"))]
        title = _titled(f"eval {label} ({name})", seed)
        return Step(_named(f"eval:{name}", seed), "eval", title, results, ["-m", "verl.eval", *argv], {"model": model},
                    rel(out), _eval_config(title, argv), out, results / f"{name}.log", seed=seed,
                    shared=seed is None and bool(self.s.seeds), results={name: out})

    def evaluations(self, rows: list[tuple[str, str]], results: Path, target: str | None,
                    seed: int | None) -> list[Step]:
        """The evaluation stages of one results folder: ``rows`` = (method name, model), each scored into
        ``results/<name>.json`` (a name listed twice is scored once). One evaluator process for all of them when
        verl.eval has its several-models mode (one engine, weights swapped: the engine's start-up and the data
        loading are paid once), else one process per model."""
        rows = list(dict(rows).items())
        if not rows:
            return []
        if not multi_model_eval():
            return [self.evaluation(name, METHODS[name].label, model, results, target, seed) for name, model in rows]
        outs = {name: results / f"{name}.json" for name, _ in rows}
        todo = [(name, model) for name, model in rows if not outs[name].is_file()] or rows
        argv = ["--benchmark", self.s.benchmark, "--output_dir", rel(results)]
        for name, model in todo:
            argv += ["--model", f"{name}:{METHODS[name].label}={model}"]
        if target:
            argv += ["--target", target]
        argv += ["--protocol", self.s.protocol, "--data_dir", rel(self.s.data_dir), *_flags(self.args("eval"))]
        title = _titled(f"eval {target or 'books'}", seed)
        return [Step(_named("eval", seed), "eval", title, results, ["-m", "verl.eval", *argv], dict(rows),
                     f"{rel(results)}/{{{','.join(outs)}}}.json", _eval_config(title, argv), outs[rows[0][0]],
                     results / "eval.log", seed=seed, shared=seed is None and bool(self.s.seeds), results=outs)]

    # ---- one target
    def seeds(self) -> list[int | None]:
        """The SEEDS values; [None] without SEEDS: one run, each stage at its own config's seed, no seed folders."""
        return list(self.s.seeds) or [None]

    def plan_rwku(self, target: str) -> TargetPlan:
        """[injection] -> per seed: RS -> ReBO methods and baselines -> their evaluations. The injection and the
        Base/Original evaluations do not sample: they run once per target and every seed shares them."""
        try:
            folder = resolve_target(target, self.s.data_dir).folder
        except Exception as exc:  # DataValidationError and friends: the message says what to do
            raise PlanError(f"TARGETS: {exc}") from None
        tdir = self.s.exp_dir / folder
        steps: list[Step] = []
        shared: dict[str, str] = {"original": self.s.model}
        inject_config: dict[str, Any] = {}
        if self.s.protocol == "sandbox":
            inject_args = self.args("inject")
            steps.append(self.rs_like("inject", "inject", f"inject {folder}", tdir / "inject", self.s.model, "inject",
                                      "", self._config_path("inject", "inject", inject_args.get("config")),
                                      inject_args, folder))
            shared = {"base": self.s.model, "original": rel(tdir / "inject")}
            inject_config = steps[-1].config
        rs_args = self.args("rs")
        rs_config = self._config_path("RS", "rs", rs_args.get("config"))

        def rs(seed: int | None) -> Step:
            return self.rs_like(_named("rs", seed), "rs", _titled(f"RS {folder}", seed), seed_dir(tdir, seed) / "rs",
                                shared["original"], "rt", "reject_target", rs_config, rs_args, folder, seed)

        def method(m: Method, seed: int | None, rs_model: str) -> Step:
            return self._rwku_method(m, folder, tdir, seed, shared["original"], rs_model, inject_config)

        steps += self.per_seed(tdir, list(shared.items()), folder, rs, method)
        for st in steps:
            _marker_state(st)
        return TargetPlan(folder, tdir, steps)

    def per_seed(self, tdir: Path, shared: list[tuple[str, str]], target: str | None, rs: Callable[[int | None], Step],
                 method: Callable[[Method, int | None, str], Step | None]) -> list[Step]:
        """The stages that sample, once per seed (``rs(seed)``, then ``method(m, seed, rs model)`` for each method,
        None where it does not apply), each seed's evaluations after its training, and the evaluation of the
        ``shared`` models (Base, Original: (name, model)) once, before them; without SEEDS one results folder for
        all."""
        steps = self.evaluations(shared, tdir / "results", target, None) if self.s.seeds else []
        for seed in self.seeds():
            rs_step = rs(seed)
            _marker_state(rs_step)  # a finished RS decides which checkpoint ReBO starts from
            steps.append(rs_step)
            models = {"rs": self.rs_output(rs_step)}
            for m in self.s.methods:
                step = None if m.name in ALWAYS else method(m, seed, models["rs"])
                if step is not None:
                    steps.append(step)
                    models[m.name] = step.output
            rows = [] if self.s.seeds else list(shared)
            rows += [(n, models[n]) for n in ["rs", *[m.name for m in self.s.methods]] if n in models]
            steps += self.evaluations(rows, seed_dir(tdir, seed) / "results", target, seed)
        return steps

    def _rwku_method(self, m: Method, folder: str, tdir: Path, seed: int | None, original: str, rs: str,
                     inject_config: dict[str, Any]) -> Step:
        """One ReBO method or SFT-style baseline of one seed, started from that seed's RS model (ReBO) or the
        original model (baselines)."""
        run_dir = seed_dir(tdir, seed) / m.name
        if m.kind != "rebo":
            return self.rs_like(_named(m.name, seed), "baseline", _titled(f"{m.name} {folder}", seed), run_dir,
                                original, m.stage, m.dataset, self._config_path(m.name, m.config_stem, None),
                                self.args("baseline"), folder, seed)
        start = rs if self.cfg.rebo_start == "rs" else original
        ref = start if self.cfg.rebo_ref == "start" else original
        train, prepare, digest = self.rebo_train_file(folder, tdir, inject_config)
        step = self.rebo(m, _titled(f"ReBO {m.name} {folder}", seed), run_dir, start, ref, train,
                         f"rwku:{folder}:{REBO_EVAL_STEM}", {}, _experiment(m.name, folder, seed), seed)
        step.prepare, step.digests = prepare, {"data": digest}
        kept = self.rebo_summaries[folder]
        step.inputs["data_sha256"] = digest
        pool = f"a pool of {kept['pool']} groups" if kept["pool"] else "every other group"
        step.inputs["data_rows"] = f"{kept['n_kept']}/{kept['n_rows']} ({kept['dropped']['held_out']} held out, {pool})"
        return step

    def boundary_recipe(self, inject_config: dict[str, Any]) -> tuple[float, int]:
        """(share of the ReBO groups held out as the boundary suite, sandbox pool size) of ReBO's training file. The
        share is the evaluator's (its suite must be what ReBO never sees); the pool is the injection's when it teaches
        the pool's boundary facts (ReBO then samples only rows whose answers the Original knows), else 0: all rows."""
        share = float(self.args("eval").get("boundary_share", BOUNDARY_SHARE))
        if not inject_config.get("inject_boundary"):
            return share, 0
        if abs(float(inject_config["inject_boundary_share"]) - share) > 1e-12:
            raise PlanError(f"boundary share: the injection holds out {inject_config['inject_boundary_share']} of the "
                            f"ReBO groups, the evaluator {share}: set inject_boundary_share and the eval stage's "
                            "boundary_share alike (the suite must be the facts injected and never trained on)")
        return share, int(inject_config["inject_boundary_pool"])

    def rebo_train_file(self, folder: str, tdir: Path, inject_config: dict[str, Any]):
        """(path, writer, sha256) of ReBO's training file for a target: its ReBO rows without the boundary suite's
        held-out groups or a probe (``data.boundary.write_rebo_train_file``), in the sandbox only the pool's groups,
        with REBO_DATA=reject_only only ``<reject>`` rows, with REBO_DATA=indirect every second ``<reject>`` row
        asking about the target indirectly. One file per target, shared by every seed and method; the hash is of its
        rows, computed here so that the plan shows it and a marker made from other rows says so."""
        share, pool = self.boundary_recipe(inject_config)
        labels = ("<reject>",) if self.cfg.rebo_data == "reject_only" else None
        indirect = self.cfg.rebo_data == "indirect"
        out = tdir / ("rebo_train.json" if self.cfg.rebo_data == "full" else f"rebo_train.{self.cfg.rebo_data}.json")
        key = (folder, share, pool, labels, indirect)
        if key not in self._rebo_files:
            self._rebo_files[key] = _rebo_rows(folder, self.s.data_dir, share, pool, labels, indirect)
        rows, summary = self._rebo_files[key]
        digest = rows_sha256(rows)
        self.rebo_summaries[folder] = {"file": rel(out), "sha256": digest, **summary}

        def write() -> None:
            write_rebo_train_file(folder, out, share, pool, labels, data_root=self.s.data_dir, indirect=indirect)
            written = rows_sha256(json.loads(out.read_text(encoding="utf-8")))
            if written != digest:
                raise PlanError(f"{rel(out)}: the rows written (sha256 {written[:12]}) are not the planned ones "
                                f"({digest[:12]}): the data changed during the run")

        return rel(out), write, digest

    def plan_muse(self) -> TargetPlan:
        """ReBO data -> per seed: RS -> ReBO -> evaluations; the data and the Original evaluation are shared."""
        tdir = self.s.exp_dir / "books"
        data_out = tdir / "data" / "MUSE" / "books"
        steps: list[Step] = []
        argv = ["--benchmark", "muse", "--data_dir", rel(self.s.data_dir), "--out", rel(data_out),
                *_flags(self.args("data"))]
        steps.append(Step("data", "data", "MUSE ReBO data", tdir / "data", ["-m", "data.synthesize", *argv],
                          {"data": rel(Path(self.s.data_dir) / "MUSE" / "books")}, rel(data_out),
                          {"argv": argv}, tdir / "data" / MARKER, tdir / "data" / "run.log", shared=True))
        notes = [f"{m.name}: applies to {'/'.join(m.benchmarks)} only; not run on MUSE" for m in self.s.methods
                 if m.name not in ALWAYS and "muse" not in m.benchmarks]
        if self.cfg.rebo_data != "full":
            raise PlanError(f"REBO_DATA={self.cfg.rebo_data} is an RWKU setting; MUSE runs with REBO_DATA=full")
        rs_args = self.args("rs")
        rs_config = self._config_path("RS", "rs", rs_args.get("config"))

        def rs(seed: int | None) -> Step:
            return self.rs_like(_named("rs", seed), "rs", _titled("RS books", seed), seed_dir(tdir, seed) / "rs",
                                self.s.model, "rt", "muse_reject", rs_config, rs_args, None, seed)

        def method(m: Method, seed: int | None, rs_model: str) -> Step | None:
            if "muse" not in m.benchmarks:
                return None
            start = rs_model if self.cfg.rebo_start == "rs" else self.s.model
            ref = start if self.cfg.rebo_ref == "start" else self.s.model
            # MUSE has no target name to reward: the two-stage reward without the entity bonus
            return self.rebo(m, _titled(f"ReBO {m.name} books", seed), seed_dir(tdir, seed) / m.name, start, ref,
                             rel(data_out / f"{muse.REBO_TRAIN_STEM}.json"),
                             rel(data_out / f"{muse.REBO_EVAL_STEM}.json"),
                             {"worker": {"reward": {"reward_fn": "forget_two_stage_abs"}}},
                             _experiment(m.name, "books", seed), seed)

        steps += self.per_seed(tdir, [("original", self.s.model)], None, rs, method)
        for st in steps:
            _marker_state(st)
        return TargetPlan("books", tdir, steps, notes)

    def plan_target(self, target: str) -> TargetPlan:
        return self.plan_muse() if self.s.benchmark == "muse" else self.plan_rwku(target)

    def plan(self, visible_gpus: Callable[[], int] | None = None, environ: Mapping[str, str] | None = None) -> Plan:
        """``environ``: the environment the stages will run in (default ``os.environ``), read for the user's own
        malloc settings."""
        targets = [self.plan_target(t) for t in (self.s.targets if self.s.benchmark == "rwku" else ["books"])]
        needs_gpu = self.cfg.device == "cuda" or any(
            st.kind == "rebo" and st.config["trainer"]["device"] == "cuda" for tp in targets for st in tp.steps)
        missing: list[str] = []
        if needs_gpu and self.s.gpus:  # the ids given must exist here (asked only now: it imports torch)
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
        if not needs_gpu:
            env.update(cpu_malloc_env(os.environ if environ is None else environ))
        return Plan(self.s, self.cfg, self.files, targets, list(dict.fromkeys(self.problems)), self.n_gpus, env,
                    resources=self.resources() if needs_gpu and self.n_gpus else None, disk=disk,
                    notes=list(dict.fromkeys(self.notes)))

    def disk_plan(self, targets: list[TargetPlan], exact: bool):
        """Disk need of the stages still to run against the free space under LOG_DIR (None: shapes unknown)."""
        res = self._resources
        shape = res.shape if res is not None and res.shape is not None else model_shape(self.s.model, exact=exact)
        if shape is None:
            return None
        return disk_plan([(tp.target, tp.steps) for tp in targets], shape, self.s.log_dir)


def _experiment(method: str, target: str, seed: int | None) -> str:
    """ReBO's trainer.experiment_name (the logger's run name): method, target and seed."""
    return f"{method}_{target}" + ("" if seed is None else f"_seed{seed}")


def rows_sha256(rows: list[dict]) -> str:
    """SHA-256 of rows as canonical JSON (key order and spacing do not count)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _rebo_rows(folder: str, data_dir: str, share: float, pool: int, labels: tuple[str, ...] | None,
               indirect: bool = False):
    """The rows ``data.boundary.write_rebo_train_file`` writes for these settings, and its summary (nothing is
    written: the plan needs their hash, a dry run writes nothing)."""
    t = resolve_target(folder, data_dir)
    if not t.has(REBO_TRAIN_STEM):
        raise PlanError(f"{folder}: no {REBO_TRAIN_STEM}.json, so ReBO has nothing to train on "
                        "(data.synthesize makes one)")
    kept, summary = rebo_train_rows(t, share, pool, labels, indirect)
    if not kept:
        raise PlanError(f"{folder}: no ReBO row left after the boundary split ({summary['dropped']})")
    return kept, summary


def stage_env(plan: Plan) -> dict[str, str]:
    return {**os.environ, **plan.env}


__all__ = ["Plan", "PlanError", "Planner", "Step", "TargetPlan", "latest_actor", "rel", "rows_sha256", "seed_dir",
           "stage_env"]
