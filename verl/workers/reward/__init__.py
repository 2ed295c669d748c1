"""Rewards as plug-ins: refusal detection, the RULE reward functions and their registry (ROUGE-L: verl.utils.rouge)."""

from verl.utils.rouge import rougel_f1, rougel_recall

from .functions import (
    forget,
    forget_abs,
    forget_abs_half_reject,
    forget_half_reject,
    forget_two_stage,
    forget_two_stage_abs,
    forget_two_stage_abs_target,
    forget_two_stage_abs_target_half_reject,
    reject_behave_reward,
)
from .refusal import REFUSAL_MODES, is_refusal, refusal_matches
from .registry import REWARD_FNS, get_reward_fn, score_batch

__all__ = [
    "REFUSAL_MODES",
    "REWARD_FNS",
    "forget",
    "forget_abs",
    "forget_abs_half_reject",
    "forget_half_reject",
    "forget_two_stage",
    "forget_two_stage_abs",
    "forget_two_stage_abs_target",
    "forget_two_stage_abs_target_half_reject",
    "get_reward_fn",
    "is_refusal",
    "refusal_matches",
    "reject_behave_reward",
    "rougel_f1",
    "rougel_recall",
    "score_batch",
]
