"""The method table: every name METHODS accepts, what it trains, with which config, and the row it becomes.

Kinds: ``model`` (a row evaluated without training: the original model, the pre-injection base model, the RS
model), ``rs-stage`` (an ``RS.train`` run: Rejection Steering itself and the SFT-style baselines) and ``rebo``
(a ``verl.trainer.main`` run started from the RS model). RS-stage configs are ``RS/configs/<family>/<stem>.yaml``
(the family comes from the budget: smollm2 for smoke/test, llama3_8b for paper; one file per loss family, its retain
variants chosen by ``--stage``); ReBO configs are named per
benchmark and config variant (``cpu`` for the smoke and test budgets, ``paper`` for the paper budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field

BENCHMARKS = ("rwku", "muse")


@dataclass(frozen=True)
class Method:
    name: str  # the METHODS value, also the run folder and result file name
    kind: str  # model | rs-stage | rebo
    label: str  # the row label in every table (RWKU and MUSE alike)
    benchmarks: tuple[str, ...] = BENCHMARKS  # where the method applies
    stage: str = ""  # rs-stage: RS.train --stage
    dataset: str = ""  # rs-stage: RS.train --dataset ("" = the stage's default)
    config_stem: str = ""  # rs-stage: RS/configs/<family>/<config_stem>.yaml
    rebo_configs: dict[str, dict[str, str]] = field(default_factory=dict)  # rebo: benchmark -> variant -> YAML
    doc: str = ""  # one line for --help

    @property
    def produces(self) -> str:
        """What the evaluator scores afterwards (shown in the dry run)."""
        if self.kind == "rebo":
            return "<run>/checkpoints/global_step_<last>/actor"
        if self.kind == "rs-stage":
            return "<run> (final HF model)"
        return "(no training)"


def _rebo(algo: str, muse_paper: str | None = None) -> dict[str, dict[str, str]]:
    paper, cpu = f"examples/{algo}_rj_rl.yaml", f"examples/{algo}_rj_rl_cpu.yaml"
    return {"rwku": {"paper": paper, "cpu": cpu}, "muse": {"paper": muse_paper or paper, "cpu": cpu}}


def _baseline(name: str, label: str, doc: str, stage: str | None = None, dataset: str = "",
              stem: str | None = None) -> Method:
    return Method(name, "rs-stage", label, ("rwku",), stage=stage or name, dataset=dataset,
                  config_stem=stem or name, doc=doc)


_METHODS = [
    Method("base", "model", "Base (before injection)", ("rwku",),
           doc="sandbox only: the model before injection (always evaluated there)"),
    Method("original", "model", "Original",
           doc="the model to unlearn from: MODEL, or the injected model in the sandbox (always evaluated)"),
    Method("rs", "rs-stage", "RS", stage="rt", config_stem="rs",
           doc="Rejection Steering, RULE stage 1 (always run and evaluated)"),
    Method("rule_grpo", "rebo", "RULE (GRPO)", rebo_configs=_rebo("grpo", "examples/grpo_rj_rl_muse.yaml"),
           doc="ReBO with GRPO (the paper's main setting)"),
    Method("rule_ppo", "rebo", "RULE (PPO)", rebo_configs=_rebo("ppo"), doc="ReBO with PPO (critic + GAE)"),
    Method("rule_rpp", "rebo", "RULE (Reinforce++)", rebo_configs=_rebo("rpp"), doc="ReBO with Reinforce++"),
    _baseline("ga", "GA", "gradient ascent on the target's passages"),
    _baseline("ga_gdr", "GA+GDR", "GA + retain NLL", stem="ga"),
    _baseline("ga_klr", "GA+KLR", "GA + retain KL to the original", stem="ga"),
    _baseline("npo", "NPO", "NPO"),
    _baseline("npo_gdr", "NPO+GDR", "NPO + retain NLL", stem="npo"),
    _baseline("npo_klr", "NPO+KLR", "NPO + retain KL to the original", stem="npo"),
    _baseline("simnpo", "SimNPO", "SimNPO"),
    _baseline("simnpo_gdr", "SimNPO+GDR", "SimNPO + retain NLL", stem="simnpo"),
    _baseline("simnpo_klr", "SimNPO+KLR", "SimNPO + retain KL to the original", stem="simnpo"),
    _baseline("rt", "RT", "RWKU's refusal tuning (entity-free refusals)", stage="rt", dataset="rwku_rt",
              stem="rwku_rt"),
    _baseline("idkdpo", "IdkDPO", "DPO preferring an entity-free refusal"),
]
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}
# the rows every run evaluates, in table order, before the requested methods
ALWAYS = ("base", "original", "rs")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in METHODS; choose from {' '.join(METHODS)}")
    return METHODS[name]


def parse_methods(spec: str) -> list[Method]:
    """``"rule_grpo ga"`` (spaces or commas) -> methods in the given order, duplicates dropped; unknown names raise."""
    names = [s for s in spec.replace(",", " ").split() if s]
    if not names:
        raise ValueError("METHODS is empty; name at least one method, e.g. METHODS=rule_grpo")
    out: list[Method] = []
    for n in names:
        m = get_method(n)
        if m not in out:
            out.append(m)
    return out


__all__ = ["ALWAYS", "BENCHMARKS", "METHODS", "Method", "get_method", "parse_methods"]
