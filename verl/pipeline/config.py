"""The pipeline's typed configuration: a budget YAML (``examples/budgets/<name>.yaml``), then any overlays
(``--overlay FILE``, e.g. the ablations in ``examples/ablations/``), then the variables (RS_STEPS, REBO_STEPS, ...),
merged with OmegaConf onto ``PipelineConfig``; an unknown key anywhere is an error naming the file.

Each stage's flags are then ``args`` + ``sandbox`` (sandbox protocol only) + ``muse`` (MUSE only), merged on top of
the stage's own config file (``RS/configs/...`` or the method's ReBO YAML).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

REPO = Path(__file__).resolve().parents[2]
BUDGET_DIR = REPO / "examples" / "budgets"
BUDGETS = ("smoke", "paper", "test")


@dataclass
class StageArgs:
    """Flags added to one kind of stage (flat flag: value for the CLIs with --flags, nested keys for ReBO)."""

    inject: dict[str, Any] = field(default_factory=dict)
    """RS.train flags of stage 0, knowledge injection (``config``: its YAML, default
    RS/configs/<family>/inject.yaml)."""
    rs: dict[str, Any] = field(default_factory=dict)
    """RS.train flags of Rejection Steering (``config``: its YAML, default RS/configs/<family>/rs.yaml)."""
    baseline: dict[str, Any] = field(default_factory=dict)
    """RS.train flags added to every SFT-style baseline (config: RS/configs/<family>/<loss family>.yaml)."""
    rebo: dict[str, Any] = field(default_factory=dict)
    """verl.trainer.main overrides (nested keys, e.g. trainer: {total_steps: 4}) added to every ReBO method."""
    eval: dict[str, Any] = field(default_factory=dict)
    """verl.eval flags (suites, batch_size, limit, ...)."""
    data: dict[str, Any] = field(default_factory=dict)
    """data.synthesize flags of the MUSE ReBO data stage."""


@dataclass
class PipelineConfig:
    family: str = "smollm2"
    """Config family of RS and the baselines: RS/configs/<family>/<stage>.yaml, each extending
    RS/configs/model/<family>.yaml (missing file = error, no fallback)."""
    rebo_variant: str = "cpu"
    """Which ReBO config of each method: cpu (examples/*_rj_rl_cpu.yaml) or paper (examples/*_rj_rl.yaml)."""
    device: str = "cpu"
    """What the budget is sized for: cpu, or cuda (a real run stops at once on a machine without GPUs)."""
    rebo_start: str = "rs"
    """ReBO start model: rs (the paper) or original (ablation "without RS")."""
    rebo_ref: str = "start"
    """ReBO KL reference: start (the start model, the paper) or original (ablation "ref = original")."""
    rebo_data: str = "full"
    """ReBO prompts: full (<reject> + <normal> boundary prompts), reject_only (ablation "without boundary") or indirect
    (full, every second <reject> question asking about the target as "this person": data.boundary.indirect_rows)."""
    rs_checkpoint: str = "checkpoint-epoch-2"
    """ReBO starts from this RS checkpoint when RS writes it (the paper: epoch 2), else from RS's final model."""
    args: StageArgs = field(default_factory=StageArgs)
    """Stage flags for every benchmark and protocol."""
    sandbox: StageArgs = field(default_factory=StageArgs)
    """Added on top in the knowledge-injection sandbox (INJECT=1)."""
    muse: StageArgs = field(default_factory=StageArgs)
    """Added on top for MUSE-Books."""

    def stage_args(self, kind: str, benchmark: str, protocol: str, last: dict | None = None) -> dict[str, Any]:
        """The merged flags of one stage kind (inject, rs, baseline, rebo, eval, data); ``last`` (the variables,
        e.g. RS_STEPS) wins over every section."""
        parts = [getattr(self.args, kind)]
        if protocol == "sandbox":
            parts.append(getattr(self.sandbox, kind))
        if benchmark == "muse":
            parts.append(getattr(self.muse, kind))
        parts.append(last or {})
        merged = OmegaConf.merge(*[OmegaConf.create(p) for p in parts])
        return OmegaConf.to_container(merged, resolve=True)

    def to_dict(self) -> dict:
        return asdict(self)


REBO_DATA = ("full", "reject_only", "indirect")
CHOICES = {"rebo_variant": ("cpu", "paper"), "device": ("cpu", "cuda"), "rebo_start": ("rs", "original"),
           "rebo_ref": ("start", "original"), "rebo_data": REBO_DATA}


def budget_file(budget: str) -> Path:
    """``smoke`` | ``paper`` | ``test`` -> examples/budgets/<name>.yaml; anything else must be a YAML path."""
    if budget in BUDGETS:
        return BUDGET_DIR / f"{budget}.yaml"
    path = Path(budget)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ValueError(f"BUDGET must be smoke, paper, test or a budget YAML file, got {budget!r}")


def load_pipeline_config(files: list[str | Path], overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """``PipelineConfig`` <- each YAML file in order <- ``overrides`` (a nested dict); unknown keys raise ValueError."""
    cfg = OmegaConf.structured(PipelineConfig)
    OmegaConf.set_struct(cfg, True)
    for section in ("args", "sandbox", "muse"):  # stage flags are free-form here; each stage's CLI checks them
        for kind in ("inject", "rs", "baseline", "rebo", "eval", "data"):
            OmegaConf.set_struct(cfg[section][kind], False)
    for src in [*files, overrides]:
        if src is None:
            continue
        name = str(src) if not isinstance(src, dict) else "the variables"
        try:
            layer = OmegaConf.load(src) if not isinstance(src, dict) else OmegaConf.create(src)
            cfg = OmegaConf.merge(cfg, layer)
        except FileNotFoundError:
            raise ValueError(f"overlay file {src} does not exist") from None
        except ConfigKeyError as exc:
            raise ValueError(f"{name}: unknown key ({exc.msg.splitlines()[0]}); the keys are those of "
                             "verl/pipeline/config.py PipelineConfig") from None
        except OmegaConfBaseException as exc:
            raise ValueError(f"{name}: {str(exc).splitlines()[0]}") from None
    out: PipelineConfig = OmegaConf.to_object(cfg)
    for key, choices in CHOICES.items():
        if getattr(out, key) not in choices:
            raise ValueError(f"{key}={getattr(out, key)!r}: choose one of {choices}")
    return out


__all__ = ["BUDGETS", "PipelineConfig", "StageArgs", "budget_file", "load_pipeline_config"]
