"""Prompt formatting shared by RS, ReBO and the evaluator: one user turn in the model's chat template, or the raw
text (with BOS) for a base model without one. (The paper's own prompt forms, built on these: ``verl.rule.prompts``.)

System prompts: none unless asked. Templates that insert one by themselves lose it (``system_prompt=None``):

| model (template)                | what the template adds without a system message | here (default)             |
|---------------------------------|--------------------------------------------------|----------------------------|
| Meta-Llama-3-8B-Instruct        | nothing                                          | as rendered                |
| Llama-3.1-8B-Instruct           | a system turn "Cutting Knowledge Date ... Today Date ..." | that turn removed  |
| Qwen2.5-*-Instruct (ChatML)     | "You are Qwen, created by Alibaba Cloud. ..."    | that turn removed          |
| SmolLM2-*-Instruct (ChatML)     | "You are a helpful AI assistant named SmolLM ..." | that turn removed         |
| MUSE-Books_target (base, none)  | no template: raw text, BOS added when tokenizing  | raw text + BOS             |

``system_prompt=TEMPLATE_DEFAULT`` keeps whatever the template renders; any other string is sent as the system turn.
Other templates are used as rendered.

User turn (``user_turn``): ``template`` renders the user text as the model's own template does (Llama-3's strips
it, so "Question: ...\n" loses its newline before <|eot_id|>); ``verbatim`` places the text unchanged where the
template puts it, which is what the RULE release tokenized: its RS ran LLaMA-Factory's ``llama3`` template
(no trimming) and saved that template into every checkpoint's tokenizer, which its ReBO prompts and evaluator then
rendered. Templates that do not trim (ChatML: SmolLM2, Qwen2.5) give the same text either way. The mode can be
recorded on a tokenizer (``set_user_turn``) so that every prompt built with it follows.
"""

from __future__ import annotations

import re

IGNORE_INDEX = -100
TEMPLATE_DEFAULT = "<template default>"  # system_prompt value: keep the template's own default system turn
# a system turn a template inserted by itself: ChatML (SmolLM2, Qwen2.5) and Llama-3 headers (3.1's date block)
_DEFAULT_SYSTEM_TURNS = (
    re.compile(r"^<\|im_start\|>system\n.*?<\|im_end\|>\n", re.S),
    re.compile(r"<\|start_header_id\|>system<\|end_header_id\|>.*?<\|eot_id\|>", re.S),
)


USER_TURNS = ("template", "verbatim")
_USER_TURN_ATTR = "rule_user_turn"  # where set_user_turn records the mode on a tokenizer
_SLOT = "\x00RULE-USER-TURN\x00"  # stands in for the user text while the template renders


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_user_turn(mode: str) -> str:
    if mode not in USER_TURNS:
        raise ValueError(f"user_turn={mode!r}: choose one of {USER_TURNS}")
    return mode


def set_user_turn(tokenizer, mode: str):
    """Record how ``format_prompt`` renders the user text for this tokenizer (module doc), so that every prompt
    builder sharing it (RS data, ReBO prompts, every evaluation suite) follows one setting. Returns the tokenizer
    (None, a stand-in without a chat template, is returned as it is)."""
    check_user_turn(mode)
    if tokenizer is not None:
        setattr(tokenizer, _USER_TURN_ATTR, mode)
    return tokenizer


def user_turn_of(tokenizer) -> str:
    return getattr(tokenizer, _USER_TURN_ATTR, "template")


def format_prompt(tokenizer, user_text: str, system_prompt: str | None = None, user_turn: str | None = None) -> str:
    """The user turn wrapped in the chat template with the assistant header appended. ``system_prompt`` None: no
    system turn (one the template inserts by itself is removed, see the module doc); ``TEMPLATE_DEFAULT``: the
    template as it renders; a string: that system turn. ``user_turn``: template | verbatim (None: the tokenizer's
    ``set_user_turn`` mode, else template). Without a template: the raw text (BOS comes from ``prompt_ids``)."""
    if not has_chat_template(tokenizer):
        return user_text
    verbatim = check_user_turn(user_turn or user_turn_of(tokenizer)) == "verbatim"
    messages = [{"role": "user", "content": _SLOT if verbatim else user_text}]
    if system_prompt not in (None, TEMPLATE_DEFAULT):
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if system_prompt is None:
        for pat in _DEFAULT_SYSTEM_TURNS:
            text = pat.sub("", text, count=1)
    if verbatim:
        if text.count(_SLOT) != 1:
            raise ValueError("user_turn=verbatim: the chat template does not render the user text exactly once")
        text = text.replace(_SLOT, user_text)
    return text


def prompt_ids(tokenizer, formatted: str) -> list[int]:
    """Token ids of a ``format_prompt`` result: a chat template carries its own BOS (Llama-3's <|begin_of_text|>),
    raw text gets the tokenizer's special tokens (BOS for Llama-2 based MUSE models), as the releases tokenize."""
    return tokenizer(formatted, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def encode_prompt_response(tokenizer, prompt: str, response: str, cutoff_len: int = 512,
                           append_eos: bool | None = None, raw_prompt: bool = False) -> dict[str, list[int]]:
    """Tokenize a (user prompt, assistant response) pair for SFT.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (length <= cutoff_len) where every prompt token's
    label is IGNORE_INDEX, so the loss covers the response (and its end-of-turn token) only. When too long,
    the prompt is truncated from the left first, keeping the response whole where possible; ``cutoff_len`` <= 0
    keeps every token (the release's MUSE RS encodes its rows without a cutoff). ``append_eos`` None:
    the end-of-turn/EOS token ends the response only with a chat template (a base model's RS targets end without
    one, as in the release's MUSE run). ``raw_prompt``: ``prompt`` is already formatted (e.g. a base model's
    few-shot text).
    """
    ids = prompt_ids(tokenizer, prompt if raw_prompt else format_prompt(tokenizer, prompt))
    if append_eos is None:
        append_eos = has_chat_template(tokenizer)
    eos = (tokenizer.eos_token or "") if append_eos else ""
    response_ids = tokenizer(response + eos, add_special_tokens=False)["input_ids"]
    if cutoff_len <= 0:
        return {"input_ids": ids + response_ids, "attention_mask": [1] * (len(ids) + len(response_ids)),
                "labels": [IGNORE_INDEX] * len(ids) + response_ids}
    if len(response_ids) >= cutoff_len:
        response_ids = response_ids[: cutoff_len - 1]
    budget = cutoff_len - len(response_ids)
    if len(ids) > budget:
        ids = ids[-budget:]
    input_ids = ids + response_ids
    labels = [IGNORE_INDEX] * len(ids) + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
