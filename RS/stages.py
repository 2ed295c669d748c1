"""Registry of training stages: what data each one reads and which losses it optimises.

``forget_loss`` names the loss on the forget-side batch and ``retain`` an optional second term on a retain batch,
both by their names in RS/losses.py's registries (``FORGET_LOSSES``: nll = SFT, ga, npo, simnpo, dpo;
``RETAIN_LOSSES``: nll = GDR, kl = KLR against the frozen original model), whose entries say what each one needs.
Note the name clash with the RWKU paper: ``rt`` is refusal SFT; with ``--dataset reject_target`` (default) it is
RULE's Rejection Steering (refusals naming the target), with ``--dataset rwku_rt`` it is RWKU's RT baseline
(the same questions answered by entity-free "I don't know"-style templates).
"""

from __future__ import annotations

from dataclasses import dataclass

from RS.losses import FORGET_LOSSES, RETAIN_LOSSES, LossSpec


@dataclass(frozen=True)
class Stage:
    name: str  # the --stage value
    default_dataset: str  # forget-side dataset when --dataset is empty
    forget_loss: str  # a name in RS.losses.FORGET_LOSSES
    retain: str | None = None  # None or a name in RS.losses.RETAIN_LOSSES
    doc: str = ""  # one line for --help and the docs

    def __post_init__(self) -> None:
        self.losses()  # an unknown loss name fails when the table is built, naming the choices

    def losses(self) -> list[LossSpec]:
        """The registry entries of the forget loss and, when the stage has one, the retain loss."""
        specs = [FORGET_LOSSES.lookup(self.forget_loss)]
        return specs + [RETAIN_LOSSES.lookup(self.retain)] if self.retain else specs

    @property
    def needs_ref(self) -> bool:
        """Whether the frozen original model is needed (NPO/DPO reference log-probs, KLR)."""
        return any(spec.needs_ref for spec in self.losses())

    @property
    def policy_passes(self) -> int:
        """Forward passes of the trained model per micro-step (memory planning)."""
        return sum(spec.policy_passes for spec in self.losses())

    @property
    def ref_passes(self) -> int:
        """Forward passes of the reference per micro-step (memory planning)."""
        return sum(spec.ref_passes for spec in self.losses())


_STAGES = [
    Stage("rt", "reject_target", "nll", None, "refusal SFT: RULE's RS (reject_target) or RWKU's RT (rwku_rt)"),
    Stage("inject", "inject", "nll", None, "stage 0: inject a target's passages + probe QA into a small model"),
    Stage("ga", "passage", "ga", None, "gradient ascent on the target's passages"),
    Stage("ga_gdr", "passage", "ga", "nll", "GA + retain NLL"),
    Stage("ga_klr", "passage", "ga", "kl", "GA + retain KL to the original model"),
    Stage("npo", "passage", "npo", None, "NPO (sequence-level, original paper's loss)"),
    Stage("npo_gdr", "passage", "npo", "nll", "NPO + retain NLL"),
    Stage("npo_klr", "passage", "npo", "kl", "NPO + retain KL to the original model"),
    Stage("simnpo", "passage", "simnpo", None, "SimNPO (length-normalised, reference-free)"),
    Stage("simnpo_gdr", "passage", "simnpo", "nll", "SimNPO + retain NLL"),
    Stage("simnpo_klr", "passage", "simnpo", "kl", "SimNPO + retain KL to the original model"),
    Stage("idkdpo", "idk_pref", "dpo", None, "DPO with an entity-free refusal preferred over the target's text"),
]
STAGES: dict[str, Stage] = {s.name: s for s in _STAGES}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {sorted(STAGES)}")
    return STAGES[name]
