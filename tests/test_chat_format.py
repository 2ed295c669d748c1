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


# ---------------------------------------------------------------------------------------- system prompts, MUSE
LLAMA31 = (  # the shape of Llama-3.1-Instruct's template: a system header with the date block, always
    "{{ '<|begin_of_text|>' }}{% set sys = '' %}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]"
    "['content'] %}{% set messages = messages[1:] %}{% endif %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ sys }}<|eot_id|>{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3 = (  # Llama-3-Instruct: no system turn unless given
    "{{ '<|begin_of_text|>' }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
    "<|end_header_id|>\n\n{% endif %}"
)


def test_no_default_system_prompt_unless_asked(tok):
    from verl.utils.chat import TEMPLATE_DEFAULT

    assert "SmolLM" in format_prompt(tok, USER, TEMPLATE_DEFAULT)  # the template's own default
    assert "system" not in format_prompt(tok, USER) and format_prompt(tok, USER).startswith("<|im_start|>user\n")
    assert format_prompt(tok, USER, "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


@pytest.mark.parametrize("template", [LLAMA31, LLAMA3])
def test_llama_templates_get_no_system_turn(tok, template):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = template
    expected = (f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{USER}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert format_prompt(t, USER) == expected
    assert "You are" in format_prompt(t, USER, "You are terse.")


def test_raw_prompts_get_bos_templated_ones_do_not():
    from verl.utils.chat import prompt_ids

    class Tok:  # a base-model tokenizer: BOS id 1 when special tokens are on
        chat_template = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    assert prompt_ids(Tok(), "ab") == [1, 97, 98]
    chat = Tok()
    chat.chat_template = "x"
    assert prompt_ids(chat, "ab") == [97, 98]


def test_muse_prompt_format_and_idempotence():
    from verl.rule.prompts import muse_icl_prefix, muse_prompt

    prefix = muse_icl_prefix([{"question": "Who?", "answer": "Harry"}])
    assert prefix == "Question: Who?\nAnswer: Harry\n\n"
    qa = muse_prompt("What is a Horcrux?", "qa", prefix)
    assert qa == "Question: Who?\nAnswer: Harry\n\nQuestion: What is a Horcrux?\nAnswer: "
    assert muse_prompt(qa, "qa", prefix) == qa
    assert muse_prompt(qa.rstrip(), "qa", prefix) == qa  # "...Answer:" as data.synthesize writes it
    assert muse_prompt("the owl flew", "completion", prefix) == "Completion: the owl flew\nAnswer: "
    with pytest.raises(ValueError, match="qa or completion"):
        muse_prompt("x", "essay")


def test_base_model_sft_target_has_no_eos(tok):
    import copy

    base = copy.deepcopy(tok)
    base.chat_template = None
    enc = encode_prompt_response(base, "Question: Who?\nAnswer: ", RESPONSE, raw_prompt=True)
    assert enc["input_ids"][-1] != base.eos_token_id
    assert base.decode([i for i, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE_INDEX]) == RESPONSE
    assert encode_prompt_response(tok, USER, RESPONSE)["input_ids"][-1] == tok.eos_token_id  # chat: EOS ends the turn


def test_rl_dataset_muse_format(tok, tmp_path, shared_data):
    import copy
    import json

    from verl.trainer.dataset import RLDataset

    base = copy.deepcopy(tok)
    base.chat_template = None
    f = tmp_path / "rl.json"
    rows = [{"prompt": "What is a Horcrux?", "solution": ["<reject>", "I don't know.", "books"], "mode": "qa"},
            {"prompt": "the owl flew", "solution": ["<normal>", "away"], "mode": "completion"}]
    f.write_text(json.dumps(rows))
    ds = RLDataset(str(f), base, 4096, prompt_format="muse", data_root=str(shared_data))
    texts = [base.decode(r["prompt_ids"]) for r in ds.rows]
    assert texts[0].startswith("Question: ") and texts[0].endswith("Question: What is a Horcrux?\nAnswer: ")
    assert texts[0].count("Question: ") == 11  # the 10 shots of knowmem/train_qa_icl, whatever the label
    assert texts[1] == "Completion: the owl flew\nAnswer: "
    assert ds.rows[0]["prompt"] == "What is a Horcrux?"  # the reward still sees the raw text


def test_rl_dataset_rwku_format_is_the_evaluators_probe_prompt(tok, tmp_path):
    """The sandbox's ReBO prompts (data.prompt_format=rwku) are exactly what the evaluator sends for a probe."""
    import json

    from verl.rule.prompts import build_prompt
    from verl.trainer.dataset import RLDataset

    f = tmp_path / "rl.json"
    rows = [{"prompt": USER, "solution": ["<reject>", RESPONSE, "Elowen Marsh"]},
            {"prompt": "Elowen Marsh wrote ___.", "solution": ["<normal>", "A Map of Drowned Bells"]}]
    f.write_text(json.dumps(rows))
    ds = RLDataset(str(f), tok, 4096, prompt_format="rwku")
    texts = [tok.decode(r["prompt_ids"]) for r in ds.rows]
    assert texts[0] == build_prompt({"query": USER}, "QA", tok)
    assert texts[1] == build_prompt({"query": "Elowen Marsh wrote ___."}, "FB", tok)
    assert texts[0].endswith("Answer:") and "Please briefly answer the following question." in texts[0]
    assert "Please complete the blank" in texts[1]
    assert ds.rows[0]["prompt"] == USER  # the reward still sees the raw question
    with pytest.raises(ValueError, match=r"prompt format 'alpaca'; choose one of \['chat', 'muse', 'rwku'\]"):
        RLDataset(str(f), tok, 4096, prompt_format="alpaca")


# ------------------------------------------------------------------------------ Llama-3 user turn: template | verbatim
# Meta-Llama-3-8B-Instruct's tokenizer_config.json "chat_template" (JSON-decoded; it strips the user text)
LLAMA3_OFFICIAL = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# the user slot of LLaMA-Factory's "llama3" template (the release's RS/src/llmtuner/data/template.py), which the
# release tokenizes with add_special_tokens=False and saves as every RS checkpoint's chat template
LLAMA_FACTORY_LLAMA3_USER = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n")
FB_PROBE = "Please complete the blank in the following question.\nQuestion: Stephen King wrote ___.\n"


def llama3_tokenizer(path):
    """The embedded model's tokenizer with Llama-3's special tokens and official chat template (no Llama-3 tokenizer
    is on disk): BOS <|begin_of_text|>, EOS <|eot_id|>, header tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    tok.add_tokens(["<|start_header_id|>", "<|end_header_id|>"], special_tokens=True)
    tok.chat_template = LLAMA3_OFFICIAL
    return tok


@pytest.fixture(scope="module")
def llama3(tiny_model_path):
    return llama3_tokenizer(tiny_model_path)


def test_verbatim_user_turn_keeps_the_probe_newline_before_eot(llama3):
    from verl.utils.chat import prompt_ids

    newline, eot = _ids(llama3, "\n")[0], llama3.convert_tokens_to_ids("<|eot_id|>")
    release = LLAMA_FACTORY_LLAMA3_USER.format(content=FB_PROBE)
    ids = prompt_ids(llama3, format_prompt(llama3, FB_PROBE, user_turn="verbatim"))
    assert format_prompt(llama3, FB_PROBE, user_turn="verbatim") == release
    assert ids == _ids(llama3, release)  # the release's prompt ids, token for token
    assert ids[ids.index(eot) - 1] == newline and ids.count(llama3.bos_token_id) == 1
    trimmed = prompt_ids(llama3, format_prompt(llama3, FB_PROBE))  # the model's template: "\n" stripped
    assert trimmed[trimmed.index(eot) - 1] != newline and len(trimmed) == len(ids) - 1
    assert format_prompt(llama3, FB_PROBE, user_turn="template") == release.replace(".\n<|eot_id|>", ".<|eot_id|>")


def test_user_turn_recorded_on_the_tokenizer_drives_every_prompt(tiny_model_path, tok):
    from verl.utils.chat import set_user_turn, user_turn_of

    t = set_user_turn(llama3_tokenizer(tiny_model_path), "verbatim")
    assert user_turn_of(t) == "verbatim" and format_prompt(t, FB_PROBE).endswith("___.\n<|eot_id|>"
                                                                                  "<|start_header_id|>assistant"
                                                                                  "<|end_header_id|>\n\n")
    enc = encode_prompt_response(t, FB_PROBE, RESPONSE, cutoff_len=512)  # RS examples follow it too
    assert enc["input_ids"][: enc["labels"].count(IGNORE_INDEX)] == _ids(t, LLAMA_FACTORY_LLAMA3_USER.format(
        content=FB_PROBE))
    assert format_prompt(t, FB_PROBE, user_turn="template").endswith("___.<|eot_id|><|start_header_id|>assistant"
                                                                    "<|end_header_id|>\n\n")
    # ChatML does not trim: the embedded model's prompts are the same either way
    assert format_prompt(tok, FB_PROBE, user_turn="verbatim") == format_prompt(tok, FB_PROBE)
    with pytest.raises(ValueError, match="user_turn"):
        set_user_turn(t, "raw")


def test_cutoff_zero_keeps_every_token(tok):
    long_user = "Tell me everything about the sea. " * 80
    enc = encode_prompt_response(tok, long_user, RESPONSE, cutoff_len=0)
    assert enc["input_ids"] == _ids(tok, format_prompt(tok, long_user)) + _ids(tok, RESPONSE + tok.eos_token)
    assert len(enc["input_ids"]) > 512 and enc["labels"].count(IGNORE_INDEX) == len(enc["input_ids"]) - len(
        _ids(tok, RESPONSE + tok.eos_token))


def test_rl_dataset_user_turn_verbatim(llama3, tmp_path):
    """ReBO prompts with data.user_turn=verbatim are the release's (a question's trailing newline stays)."""
    import json

    from verl.trainer.dataset import RLDataset

    f = tmp_path / "rl.json"
    f.write_text(json.dumps([{"prompt": FB_PROBE, "solution": ["<reject>", RESPONSE, "Stephen King"]}]))
    verbatim = RLDataset(str(f), llama3, 4096, user_turn="verbatim").rows[0]["prompt_ids"]
    assert verbatim == _ids(llama3, LLAMA_FACTORY_LLAMA3_USER.format(content=FB_PROBE))
    assert len(RLDataset(str(f), llama3, 4096).rows[0]["prompt_ids"]) == len(verbatim) - 1
