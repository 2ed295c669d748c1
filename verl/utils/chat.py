"""Prompt formatting shared by RS, ReBO and the evaluator: one user turn in the model's chat template."""

from __future__ import annotations

IGNORE_INDEX = -100


def format_prompt(tokenizer, user_text: str) -> str:
    """The user turn wrapped in the chat template with the assistant header appended (no system turn added
    by us; a template's own default system prompt is kept). Falls back to the raw text without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return user_text


def encode_prompt_response(tokenizer, prompt: str, response: str, cutoff_len: int = 512) -> dict[str, list[int]]:
    """Tokenize a (user prompt, assistant response) pair for SFT.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (length <= cutoff_len) where every prompt token's
    label is IGNORE_INDEX, so the loss covers the response (and its end-of-turn token) only. When too long,
    the prompt is truncated from the left first, keeping the response whole where possible.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    response_ids = tokenizer(response + eos, add_special_tokens=False)["input_ids"]
    if len(response_ids) >= cutoff_len:
        response_ids = response_ids[: cutoff_len - 1]
    budget = cutoff_len - len(response_ids)
    if len(prompt_ids) > budget:
        prompt_ids = prompt_ids[-budget:]
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
