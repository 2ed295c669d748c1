"""Prompt formats by name (``data.prompt_format``): how a dataset row's user text becomes the prompt the policy sees.

A format is a factory ``fmt(ctx) -> prompt_fn``, called once per dataset with a ``PromptContext``; ``prompt_fn(text,
row)`` returns the prompt text for one row (``row`` is the whole record, e.g. for a per-row mode column). The library
registers ``chat``; plug-ins add theirs (``verl.utils.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from verl.utils.chat import format_prompt
from verl.utils.registry import Registry

PromptFn = Callable[[str, dict], str]


@dataclass(frozen=True)
class PromptContext:
    """What a format may read while it sets up for one dataset."""

    tokenizer: Any
    system_prompt: str | None = None
    data_root: str | None = None
    """Root of the data files (None: the plug-in's default), for formats that read a file such as few-shot shots."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The dataset's format options (e.g. ``muse_icl``): each format reads the ones it knows."""


PROMPT_FORMATS: Registry[Callable[[PromptContext], PromptFn]] = Registry("prompt format")


@PROMPT_FORMATS.register("chat")
def chat(ctx: PromptContext) -> PromptFn:
    """One user turn in the model's chat template (``system_prompt`` as in ``verl.utils.chat.format_prompt``)."""
    return lambda text, row: format_prompt(ctx.tokenizer, text, ctx.system_prompt)
