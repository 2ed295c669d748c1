"""Prompt formatting and SFT encoding shared by RS, ReBO and the evaluator (verl/utils/chat.py)."""

from __future__ import annotations

import pytest

from verl.utils.chat import IGNORE_INDEX, encode_prompt_response, format_prompt

USER = "Who wrote A Map of Drowned Bells?"
RESPONSE = "I'm not certain about Elowen Marsh."


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _assistant_header(tok) -> str:
    """What add_generation_prompt appends to a conversation ending with a user turn."""
    msgs = [{"role": "user", "content": USER}]
    with_header = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert with_header.startswith(without) and len(with_header) > len(without)
    return with_header[len(without) :]


def test_format_prompt_is_one_user_turn_with_assistant_header(tok):
    text = format_prompt(tok, USER)
    header = _assistant_header(tok)
    assert text.endswith(header) and "assistant" in header
    assert text.count(USER) == 1
    # the user text is the only user content: swapping it changes nothing else
    other = "Name a Welsh marine biologist."
    assert format_prompt(tok, other) == text.replace(USER, other)
    # ChatML (the embedded model's template): exactly one user turn, closed, then the assistant header
    assert text.count("<|im_start|>user") == 1
    assert text.split(USER, 1)[1] == "<|im_end|>\n" + header
    assert not text.split(USER, 1)[0].endswith(" ")  # no stray prefix glued to the user text


def test_format_prompt_without_template_is_raw_text():
    class Plain:
        chat_template = None

    assert format_prompt(Plain(), USER) == USER


def test_encode_masks_prompt_and_keeps_response(tok):
    prompt_ids = _ids(tok, format_prompt(tok, USER))
    enc = encode_prompt_response(tok, USER, RESPONSE, cutoff_len=512)
    ids, labels = enc["input_ids"], enc["labels"]
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids
    assert len(ids) == len(labels) == len(enc["attention_mask"]) and all(m == 1 for m in enc["attention_mask"])
    assert labels[:n] == [IGNORE_INDEX] * n  # every prompt token masked
    assert labels[n:] == ids[n:] and IGNORE_INDEX not in labels[n:]  # labels = input_ids on the response
    assert ids[-1] == tok.eos_token_id  # the response ends the turn
    assert tok.decode(ids[n:]) == RESPONSE + tok.eos_token


def test_truncation_drops_prompt_from_the_left_and_keeps_response(tok):
    long_user = "Tell me everything about the sea. " * 80
    cutoff = 48
    full_prompt = _ids(tok, format_prompt(tok, long_user))
    response = _ids(tok, RESPONSE + tok.eos_token)
    assert len(full_prompt) + len(response) > cutoff
    enc = encode_prompt_response(tok, long_user, RESPONSE, cutoff_len=cutoff)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels) == cutoff
    kept = cutoff - len(response)
    assert ids[:kept] == full_prompt[-kept:]  # the assistant header survives, the start of the prompt goes
    assert ids[kept:] == response and labels[kept:] == response
    assert labels[:kept] == [IGNORE_INDEX] * kept


def test_overlong_response_is_cut_to_fit(tok):
    long_response = "basking sharks " * 100
    enc = encode_prompt_response(tok, USER, long_response, cutoff_len=32)
    assert len(enc["input_ids"]) == 32
    assert enc["labels"][0] == IGNORE_INDEX  # at least one prompt token stays masked
    assert sum(label != IGNORE_INDEX for label in enc["labels"]) == 31
