"""``--refusal_stop``: end RS once the model refuses a share of held-out RS questions asked as the evaluator asks.

How many RS steps steer a small model part-way depends on the target (sandbox, 10 steps at 1e-4: 17% of target 1's
forget probes refused, 89% after 15; target 2: 2% after 10, 15% after 15). A fixed step count either leaves ReBO
without refusals to build on or refuses neighbors too. This check holds out ``--refusal_holdout`` of the target's
own reject_target questions (never the test probes), asks them in the RWKU probe wrapper (greedy, 30 tokens, first
line, as the evaluator) every ``--refusal_check_steps`` optimizer steps, and stops once the share refused reaches
``--refusal_stop``; ``--max_steps`` stays the ceiling.
"""

from __future__ import annotations

import json
import logging

import torch

from RS.quick_eval import probe_prompt, probe_stem
from verl.eval.generation import generate
from verl.eval.rwku import PROBE_MAX_NEW_TOKENS
from verl.rule.refusal import is_refusal
from verl.utils.text import first_line

logger = logging.getLogger("RS.train")


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


class RefusalStop:
    """--refusal_stop during a run: every --refusal_check_steps optimizer steps the share of held-out questions
    refused (each check appended to ``refusal_checks.jsonl``); once it reaches --refusal_stop, the step the run ends
    at (--refusal_stop_after steps later, within the step budget). Off (no checks) without --refusal_stop."""

    def __init__(self, run, records: list[dict]):
        self.run = run
        self.prompts = check_prompts(records, run.tokenizer) if run.args.refusal_stop else []
        self.stopped_at: dict | None = None  # the check that ended training, with its stop_step

    def check(self) -> None:
        """After an optimizer step: check when one is due and no earlier check reached the share."""
        run, args = self.run, self.run.args
        if not self.prompts or self.stopped_at or run.step % args.refusal_check_steps or run.step >= run.total_steps:
            return
        share, answers = refusal_share(run.accelerator.unwrap_model(run.model), run.tokenizer, self.prompts)
        check = {"step": run.step, "refusal_share": round(share, 4), "n": len(answers)}
        with open(run.out / "refusal_checks.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**check, "answers": answers}) + "\n")
        run.bar.set_postfix(refused=f"{share:.2f}")
        if share < args.refusal_stop:
            return
        self.stopped_at = {**check, "stop_step": min(run.total_steps, run.step + args.refusal_stop_after)}
        logger.info("refusal stop: %d of %d held-out questions refused at step %d (>= %.2f); stopping at step %d",
                    round(share * len(answers)), len(answers), run.step, args.refusal_stop,
                    self.stopped_at["stop_step"])

    def summary(self) -> dict:
        """DONE's ``refusal_stop`` entry: the check that stopped the run, or why none did."""
        return self.stopped_at or {"step": None, "reason": f"not reached by max_steps {self.run.total_steps}"}


__all__ = ["check_prompts", "refusal_share", "RefusalStop"]
