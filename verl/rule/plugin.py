"""The RULE plug-in of the RL library: registers the paper's rewards, its prompt formats (``rwku``, ``muse``) and its
data-path schemes (``rwku:<target>:<stem>``, ``muse:<stem>``), so that configs name them and the library imports no
domain code. setup.py names this module in the ``verl.plugins`` entry points; the library's registries import it the
first time they miss a name (``verl.utils.registry``).
"""

from __future__ import annotations

from pathlib import Path

from data.muse import TRAIN_ICL_STEM, load_muse, muse_dir
from data.rwku import REBO_EVAL_STEM, resolve_target
from verl.rule.prompts import build_prompt, muse_icl_prefix, muse_prompt, question_level
from verl.rule.rewards import REWARDS as RULE_REWARDS
from verl.trainer.dataset import DATA_SCHEMES
from verl.trainer.prompt_formats import PROMPT_FORMATS, PromptContext, PromptFn
from verl.utils.cli import ConfigError
from verl.workers.reward.registry import REWARDS


def rwku_format(ctx: PromptContext) -> PromptFn:
    """The RWKU evaluator's probe wrapper in the chat template, then "Answer:": FB for a "___" row, else QA (the
    sandbox, whose small model does not carry refusals across prompt forms)."""
    return lambda text, row: build_prompt({"query": text}, question_level(text), ctx.tokenizer)


def muse_format(ctx: PromptContext) -> PromptFn:
    """The RULE release's MUSE-Books base-model format: qa rows after the few-shot prefix of option ``muse_icl`` (a
    MUSE file stem; default ``TRAIN_ICL_STEM``, "" for none), completion rows "Completion: ...\\nAnswer: ", by the
    row's ``mode`` column (default qa)."""
    icl = ctx.options.get("muse_icl", TRAIN_ICL_STEM)
    prefix = muse_icl_prefix(load_muse(icl, ctx.data_root)) if icl else ""
    return lambda text, row: muse_prompt(text, str(row.get("mode") or "qa"), prefix)


def rwku_path(rest: str, data_root: str | None) -> Path:
    """``rwku:<target>:<stem>``: file ``<stem>.json`` of the RWKU target (``data.rwku.resolve_target``)."""
    parts = rest.split(":")
    if len(parts) != 2:
        raise ConfigError(f"data path 'rwku:{rest}': expected rwku:<target>:<stem>, "
                          f"e.g. rwku:1_Stephen_King:{REBO_EVAL_STEM}")
    return resolve_target(parts[0], data_root).file(parts[1])


def muse_path(rest: str, data_root: str | None) -> Path:
    """``muse:<stem>``: ``<data root>/MUSE/books/<stem>.json``."""
    return muse_dir(data_root) / f"{rest}.json"


for _name, _reward in RULE_REWARDS.items():
    REWARDS.add(_name, _reward)
PROMPT_FORMATS.add("rwku", rwku_format)
PROMPT_FORMATS.add("muse", muse_format)
DATA_SCHEMES.add("rwku", rwku_path)
DATA_SCHEMES.add("muse", muse_path)
