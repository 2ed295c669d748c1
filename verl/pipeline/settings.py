"""The run settings of ``python -m verl.pipeline``: each one an environment variable (what the bash runners have
always read) and a flag (which wins over the variable). One table drives reading, checking and ``--help``."""

from __future__ import annotations

import difflib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from verl.eval.cli import SUITES as EVAL_SUITES
from verl.models.embedded import EMBEDDED_ALIASES, resolve_model_path
from verl.pipeline.config import REBO_DATA, budget_file
from verl.pipeline.methods import Method, parse_methods

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_PARAMS = 134_515_008  # SmolLM2-135M-Instruct, so its size is known before it is built
SMALL_MODEL = 1_000_000_000  # below this many parameters the sandbox protocol is the default
EMBEDDED = "smollm2-135m-instruct"
# the model each benchmark's paper budget unlearns when MODEL is not given (the release's runs)
PAPER_MODELS = {"rwku": "meta-llama/Meta-Llama-3-8B-Instruct", "muse": "muse-bench/MUSE-Books_target"}


@dataclass(frozen=True)
class Var:
    env: str  # environment variable
    flag: str  # command-line flag (wins over the variable)
    default: str  # how the default is chosen (for --help)
    doc: str  # what it sets
    benchmarks: tuple[str, ...] = ("rwku", "muse")


VARS = [
    Var("MODEL", "--model", "BUDGET=paper: the paper's model (RWKU meta-llama/Meta-Llama-3-8B-Instruct, MUSE "
        "muse-bench/MUSE-Books_target); else smollm2-135m-instruct", "model to unlearn: HF folder, hub id or the "
        "embedded default"),
    Var("TARGETS", "--targets",
        "CPU: 1_Stephen_King when the data has it, else the sample 101_Elowen_Marsh; GPUs: 1 .. 10",
        "RWKU targets (ids, folder names or names), space or comma separated", ("rwku",)),
    Var("METHODS", "--methods", "rule_grpo", "methods to train and evaluate (table in --help); the Original and RS "
        "rows (and Base in the sandbox) are always evaluated"),
    Var("BUDGET", "--budget", "smoke without GPU, paper with", "smoke | paper | test, or a budget YAML "
        "(examples/budgets/<name>.yaml)"),
    Var("INJECT", "--inject", "1 for models under 1B parameters (counted from the weights), else 0",
        "1: knowledge-injection sandbox protocol; 0: the paper protocol (MUSE: 0 only)"),
    Var("DATA_DIR", "--data-dir", "$RULE_DATA_DIR, else ../shared/data, else ./data", "data root with RWKU/ and MUSE/ "
        "(the sample target always works)"),
    Var("LOG_DIR", "--log-dir", "log", "where runs go: LOG_DIR/<benchmark>/<EXP>/<target>/<stage>/"),
    Var("EXP", "--exp", "<model name>_<budget>[_sandbox]", "experiment name"),
    Var("EXP_MUSE", "--exp-muse", "EXP, else <model name>_<budget>", "experiment name of a MUSE run", ("muse",)),
    Var("GPUS", "--gpus", "all visible GPUs (none on a CPU machine)", "comma list of GPU ids: CUDA_VISIBLE_DEVICES of "
        "every stage, and the worker count of GPU ReBO runs (GPUS=0,1 -> trainer.n_workers=2)"),
    Var("SUITES", "--suites", "by budget (smoke/test: forget,neighbor,mia; paper: + utility; MUSE: muse)",
        "evaluation suites, comma separated (python -m verl.eval --help)"),
    Var("RS_STEPS", "--rs-steps", "by budget (smoke: 6, sandbox 10; test: 2; paper: epochs decide)",
        "Rejection Steering optimizer steps (RS.train --max_steps; exactly that many, no refusal stop)"),
    Var("REBO_STEPS", "--rebo-steps", "by budget and config (smoke: 4; test: 1; paper: 20)", "ReBO steps "
        "(trainer.total_steps)"),
    Var("REBO_START", "--rebo-start", "rs", "ReBO start model: rs | original (ablation)"),
    Var("REBO_REF", "--rebo-ref", "start", "ReBO KL reference: start (the start model) | original (ablation)"),
    Var("REBO_DATA", "--rebo-data", "full",
        "ReBO prompts: full | reject_only (ablation: no boundary prompts) | indirect (half the <reject> questions "
        "ask about 'this person')"),
    Var("RS_CHECKPOINT", "--rs-checkpoint", "2", "RS epoch whose checkpoint ReBO starts from: 1 | 2 | 3 (the release "
        "ran ReBO from epochs 2 and 3 on RWKU, RS steps 76 and 114, and from 1, 2 and 3 on MUSE, steps 208/416/624)"),
    Var("SEEDS", "--seeds", "one run, each stage at its own config's seed (RS and the baselines 42, ReBO "
        "trainer.seed 1), without seed folders", "seeds, comma separated: every stage that samples (RS's data order, "
        "ReBO, the baselines) runs once per seed with that seed (RS.train --seed, trainer.seed), under "
        "<target>/seed<k>/; the injection and the Base/Original evaluations run once per target and are shared; the "
        "report gives seed means with 95% intervals"),
    Var("GPU_MEMORY", "--gpu-memory", "the smallest GPU of GPUS; 80 on a machine without GPUs", "GB (1e9 bytes) per "
        "GPU the memory plan checks every GPU stage against (plan here for other GPUs, or keep some free)"),
    Var("MUSE_LIMIT", "--muse-limit", "smoke: 20; test: 2; paper: all", "records per MUSE evaluation file", ("muse",)),
    Var("OVERLAYS", "--overlay", "none", "pipeline config overlays merged after the budget (YAML files, space "
        "separated; the flag may repeat), e.g. examples/ablations/without_rs.yaml"),
]
VAR_BY_ENV = {v.env: v for v in VARS}


@dataclass
class Settings:
    """Everything one run was asked for, defaults filled and values checked."""

    benchmark: str  # rwku | muse
    model: str  # MODEL
    methods: list[Method]  # METHODS
    budget: str  # BUDGET (name or YAML path)
    protocol: str  # paper | sandbox (INJECT)
    protocol_reason: str  # why this protocol (given, or the model's size)
    data_dir: str  # DATA_DIR
    log_dir: str  # LOG_DIR
    exp: str  # EXP / EXP_MUSE
    gpus: list[str]  # GPUS
    targets: list[str] = field(default_factory=list)  # TARGETS (RWKU)
    suites: str | None = None  # SUITES
    rs_steps: int | None = None  # RS_STEPS
    rebo_steps: int | None = None  # REBO_STEPS
    rebo_start: str | None = None  # REBO_START
    rebo_ref: str | None = None  # REBO_REF
    rebo_data: str | None = None  # REBO_DATA
    rs_checkpoint: str | None = None  # RS_CHECKPOINT (as the pipeline config's rs_checkpoint)
    muse_limit: int | None = None  # MUSE_LIMIT
    gpu_memory: float | None = None  # GPU_MEMORY, GB per GPU
    overlays: list[str] = field(default_factory=list)  # OVERLAYS
    seeds: list[int] = field(default_factory=list)  # SEEDS ([] = one run at the stage configs' own seeds)
    notes: list[str] = field(default_factory=list)  # settings that were ignored, and why

    @property
    def exp_dir(self) -> Path:
        return Path(self.log_dir) / self.benchmark / self.exp


def _int(name: str, value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def _gb(name: str, value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"{name} is GB per GPU, a number such as 80 or 24, got {value!r}") from None
    if not 1 <= gb <= 10_000:
        raise ValueError(f"{name} is GB per GPU (1 to 10000), got {value}")
    return gb


def _choice(name: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValueError(f"{name} must be one of {' | '.join(choices)}, got {value!r}")
    return value


def gpu_count() -> int:
    """Visible CUDA devices (imports torch, so only asked when a default or a check needs it)."""
    import torch  # start-up cost: torch; the pipeline's --help and plans without GPUs stay fast

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_memory_bytes(ids: list[str]) -> int | None:
    """Total memory of the smallest of the given visible CUDA devices (imports torch); None without CUDA here."""
    import torch  # start-up cost: torch; the pipeline's --help and plans without GPUs stay fast

    if not torch.cuda.is_available():
        return None
    n = torch.cuda.device_count()
    sizes = [torch.cuda.get_device_properties(int(i)).total_memory for i in ids if int(i) < n]
    return min(sizes) if sizes else None


def count_params(model: str) -> int | None:
    """Parameters of a model from its safetensors headers (no weights read); None when not on this machine."""
    if model in EMBEDDED_ALIASES:
        return EMBEDDED_PARAMS
    path = Path(model).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                size = 1
                for d in meta["shape"]:
                    size *= d
                total += size
    return total


def default_data_dir(env: dict) -> str:
    if env.get("RULE_DATA_DIR"):
        return env["RULE_DATA_DIR"]
    shared = REPO.parent / "shared" / "data"
    if (shared / "RWKU").is_dir():
        return str(shared)
    return str(REPO / "data")


def resolve_settings(benchmark: str, values: dict[str, str], env: dict, has_gpu=None) -> Settings:
    """Settings from ``values`` (variable name -> string: the flags over the environment) and ``env`` (for
    RULE_DATA_DIR). ``has_gpu`` (a callable) is asked only when a default depends on it. Bad values raise ValueError."""
    get = {k: (v if v != "" else None) for k, v in values.items()}
    notes = _misspelt(env) + _drop_other_benchmark(benchmark, get)
    gpus, on_gpu = _gpus(benchmark, get, has_gpu or gpu_count)
    budget = get.get("BUDGET") or ("paper" if on_gpu else "smoke")

    budget_file(budget)  # checks the value
    model = _model(benchmark, get.get("MODEL"), budget)
    protocol, reason = _protocol(benchmark, model, get.get("INJECT"))
    data_dir = get.get("DATA_DIR") or default_data_dir(env)
    return Settings(
        benchmark=benchmark, model=model, methods=parse_methods(get.get("METHODS") or "rule_grpo"), budget=budget,
        protocol=protocol, protocol_reason=reason, data_dir=data_dir, log_dir=get.get("LOG_DIR") or "log",
        exp=_exp(benchmark, get, model, budget, protocol), gpus=gpus,
        targets=_targets(get.get("TARGETS"), on_gpu, data_dir) if benchmark == "rwku" else [],
        suites=_suites(benchmark, get.get("SUITES")), seeds=_seeds(get.get("SEEDS")),
        rs_steps=_int("RS_STEPS", get.get("RS_STEPS")), rebo_steps=_int("REBO_STEPS", get.get("REBO_STEPS")),
        rebo_start=_choice("REBO_START", get.get("REBO_START"), ("rs", "original")),
        rebo_ref=_choice("REBO_REF", get.get("REBO_REF"), ("start", "original")),
        rebo_data=_choice("REBO_DATA", get.get("REBO_DATA"), REBO_DATA),
        rs_checkpoint=_rs_checkpoint(get.get("RS_CHECKPOINT")),
        muse_limit=_int("MUSE_LIMIT", get.get("MUSE_LIMIT")), gpu_memory=_gb("GPU_MEMORY", get.get("GPU_MEMORY")),
        overlays=(get.get("OVERLAYS") or "").split(), notes=notes,
    )


def _misspelt(env: dict) -> list[str]:
    """A misspelt variable would be ignored silently: name it, with the setting it resembles."""
    notes = []
    for name in sorted(env):
        close = difflib.get_close_matches(name, VAR_BY_ENV, n=1, cutoff=0.8)
        if close and name not in VAR_BY_ENV and name not in ("RULE_DATA_DIR", "RULE_CACHE_DIR"):
            notes.append(f"variable {name} is not a pipeline setting (did you mean {close[0]}?); ignored")
    return notes


def _drop_other_benchmark(benchmark: str, get: dict) -> list[str]:
    """Unset (in ``get``) the variables of the other benchmark, e.g. TARGETS exported for RWKU runs, with a note."""
    notes = []
    for name, value in list(get.items()):
        var = VAR_BY_ENV[name]
        if value is not None and benchmark not in var.benchmarks:
            notes.append(f"{name} applies to {'/'.join(var.benchmarks)} only: ignored for {benchmark}")
            get[name] = None
    return notes


def _gpus(benchmark: str, get: dict, count) -> tuple[list[str], bool]:
    """(GPU ids, whether the run is on GPUs). The visible GPUs are counted (torch imported) only when a default
    depends on them: GPUS unset and BUDGET (or RWKU's TARGETS) unset."""
    gpus = [g.strip() for g in (get.get("GPUS") or "").split(",") if g.strip()]
    if any(not g.isdigit() for g in gpus):
        raise ValueError(f"GPUS must be a comma list of GPU ids such as 0,1,2,3, got {get['GPUS']!r}")
    if gpus:
        return gpus, True
    if get.get("BUDGET") is None or (benchmark == "rwku" and get.get("TARGETS") is None):
        visible = count()
        return [str(i) for i in range(visible)], bool(visible)
    return [], False


def _model(benchmark: str, model: str | None, budget: str) -> str:
    """MODEL, else the paper budget's model or the embedded one; a local path must exist (a hub id passes)."""
    model = model or (PAPER_MODELS[benchmark] if budget == "paper" else EMBEDDED)

    if model not in EMBEDDED_ALIASES:
        try:
            resolve_model_path(model)
        except (FileNotFoundError, OSError) as exc:
            raise ValueError(f"MODEL: {exc}") from None
    return model


def _protocol(benchmark: str, model: str, inject: str | None) -> tuple[str, str]:
    """(protocol, why): INJECT when given, else the sandbox for models under 1B parameters (RWKU only)."""
    inject = _choice("INJECT", inject, ("0", "1"))
    if inject is not None:
        protocol, reason = ("sandbox" if inject == "1" else "paper"), f"INJECT={inject}"
    elif benchmark == "muse":
        protocol, reason = "paper", "MUSE has no injection sandbox"
    else:
        n = count_params(model)
        if n is None:
            protocol = "paper"
            reason = "model size unknown here (not a local folder): paper protocol; INJECT=1 for the sandbox"
        else:
            protocol = "sandbox" if n < SMALL_MODEL else "paper"
            reason = f"{n / 1e6:.0f}M parameters {'<' if n < SMALL_MODEL else '>='} 1B"
    if benchmark == "muse" and protocol == "sandbox":
        raise ValueError("INJECT=1 is RWKU only: MUSE-Books has no knowledge-injection sandbox (use INJECT=0 or unset "
                         "it)")
    return protocol, reason


def _exp(benchmark: str, get: dict, model: str, budget: str, protocol: str) -> str:
    tag = Path(model.rstrip("/")).name
    if benchmark == "muse":
        exp = get.get("EXP_MUSE") or get.get("EXP") or f"{tag}_{Path(budget).stem}"
    else:
        exp = get.get("EXP") or f"{tag}_{Path(budget).stem}{'_sandbox' if protocol == 'sandbox' else ''}"
    if "/" in exp or exp in (".", ".."):
        raise ValueError(f"EXP must be a plain folder name, got {exp!r}")
    return exp


def _targets(spec: str | None, on_gpu: bool, data_dir: str) -> list[str]:
    if spec is None:
        if on_gpu:
            spec = "1 2 3 4 5 6 7 8 9 10"
        else:
            spec = "1_Stephen_King" if (Path(data_dir) / "RWKU" / "Target").is_dir() else "101_Elowen_Marsh"
    targets = [t for t in spec.replace(",", " ").split() if t]
    if not targets:
        raise ValueError("TARGETS is empty")
    return targets


def _suites(benchmark: str, suites: str | None) -> str | None:
    if suites is not None:
        unknown = [s for s in suites.split(",") if s.strip() not in EVAL_SUITES[benchmark]]
        if unknown:
            raise ValueError(f"SUITES: unknown suite(s) {unknown} for {benchmark}; choose from "
                             f"{sorted(EVAL_SUITES[benchmark])}")
    return suites


def _seeds(value: str | None) -> list[int]:
    """SEEDS "1,2,3" (commas or spaces) -> [1, 2, 3], duplicates dropped; unset -> [] (one run, each stage at its
    own config's seed, in the layout without seed folders)."""
    if value in (None, ""):
        return []
    out: list[int] = []
    for part in value.replace(",", " ").split():
        if not part.isdigit():
            raise ValueError(f"SEEDS must be a comma list of whole numbers >= 0 such as 1,2,3, got {value!r}")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise ValueError("SEEDS is empty")
    return out


def _rs_checkpoint(value: str | None) -> str | None:
    """RS_CHECKPOINT 1 | 2 | 3 (or checkpoint-epoch-N) -> the RS checkpoint folder name."""
    if value in (None, ""):
        return None
    epoch = value.removeprefix("checkpoint-epoch-")
    if epoch not in ("1", "2", "3"):
        raise ValueError(f"RS_CHECKPOINT must be an RS epoch, 1 | 2 | 3, got {value!r}")
    return f"checkpoint-epoch-{epoch}"


def variable_overrides(s: Settings) -> tuple[dict, dict]:
    """The variables that set pipeline-config keys: (top-level keys, merged after the budget and overlays;
    stage flags by stage kind, merged last onto every stage of that kind)."""
    top = {k: getattr(s, k) for k in ("rebo_start", "rebo_ref", "rebo_data", "rs_checkpoint")
           if getattr(s, k) is not None}
    stages: dict = {}
    if s.rs_steps is not None:  # exactly that many steps: also turns off the sandbox's refusal stop
        stages["rs"] = {"max_steps": s.rs_steps, "refusal_stop": 0}
    if s.rebo_steps is not None:  # exactly that many steps, also where a config counts epochs (MUSE paper)
        stages["rebo"] = {"trainer": {"total_steps": s.rebo_steps, "total_epochs": None}}
    ev = {k: v for k, v in (("suites", s.suites), ("limit", s.muse_limit)) if v is not None}
    if ev:
        stages["eval"] = ev
    return top, stages


__all__ = ["Settings", "VARS", "Var", "count_params", "gpu_count", "gpu_memory_bytes", "resolve_settings",
           "variable_overrides"]
