"""``--refusal_stop``: end RS once the model refuses a share of held-out RS questions asked as the evaluator asks.

How many RS steps steer a small model part-way depends on the target (sandbox, 10 steps at 1e-4: 17% of target 1's
forget probes refused, 89% after 15; target 2: 2% after 10, 15% after 15). A fixed step count either leaves ReBO
without refusals to build on or refuses neighbors too. This check holds out ``--refusal_holdout`` of the target's
own reject_target questions (never the test probes), asks them in the RWKU probe wrapper (greedy, 30 tokens, first
line, as the evaluator) every ``--refusal_check_steps`` optimizer steps, and stops once the share refused reaches
``--refusal_stop``; ``--max_steps`` stays the ceiling.
"""

from __future__ import annotations

import torch

from RS.datasets import probe_stem
from RS.quick_eval import probe_prompt
from verl.eval.generation import generate
from verl.eval.rwku import PROBE_MAX_NEW_TOKENS
from verl.utils.text import first_line
from verl.workers.reward.refusal import is_refusal


def check_prompts(records: list[dict], tokenizer) -> list[str]:
    """The evaluator's prompts for held-out reject_target records, in the wrapper RS trains them in."""
    return [probe_prompt(tokenizer, r["instruction"], probe_stem(r["instruction"])) for r in records]


@torch.no_grad()
def refusal_share(model, tokenizer, prompts: list[str], batch_size: int = 16) -> tuple[float, list[str]]:
    """(share of ``prompts`` whose greedy answer is a refusal, the answers). Leaves the model in train mode."""
    model.eval()
    try:
        outputs = generate(model, tokenizer, prompts, PROBE_MAX_NEW_TOKENS, stop_strings=(), batch_size=batch_size,
                           desc="refusal check")
    finally:
        model.train()
    answers = [first_line(o) for o in outputs]
    return sum(is_refusal(a) for a in answers) / max(1, len(answers)), answers


__all__ = ["check_prompts", "refusal_share"]
