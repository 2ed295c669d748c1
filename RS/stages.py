"""Registry of training stages: what data each one reads and which loss it optimises.

``forget_loss`` names the loss on the forget-side batch (``nll`` = SFT, ``ga``, ``npo``, ``simnpo``, ``dpo``);
``retain`` adds a second term on a retain batch (``nll`` = GDR, ``kl`` = KLR against the frozen original model).
Note the name clash with the RWKU paper: ``rt`` is refusal SFT; with ``--dataset reject_target`` (default) it is
RULE's Rejection Steering (refusals naming the target), with ``--dataset rwku_rt`` it is RWKU's RT baseline
(the same questions answered by entity-free "I don't know"-style templates).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # the --stage value
    default_dataset: str  # forget-side dataset when --dataset is empty
    forget_loss: str  # nll | ga | npo | simnpo | dpo
    retain: str | None = None  # None | nll (GDR) | kl (KLR)
    doc: str = ""  # one line for --help and the docs

    @property
    def needs_ref(self) -> bool:
        """Whether the frozen original model is needed (NPO/DPO reference log-probs, KLR)."""
        return self.forget_loss in ("npo", "dpo") or self.retain == "kl"


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
