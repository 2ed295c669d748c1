"""Refusal Ends: the evaluator records how each generation ended, the report counts refusals that stop."""

from __future__ import annotations

import pytest

from verl.eval import rwku
from verl.eval.endings import MAX_TAIL_TOKENS, end_fields, ending_share, ends
from verl.eval.generation import generate
from verl.eval.report import refusal_shares


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from verl.models.embedded import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_path)
    return model.eval(), tok


def n_tok(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_end_fields_count_the_tokens_after_the_first_sentence(tiny):
    _, tok = tiny
    said = " I'm not sure about Stephen King."
    assert end_fields(tok, said, {"n_tokens": n_tok(tok, said), "eos": True})["tail_tokens"] == 0
    polite = said + " Sorry."
    f = end_fields(tok, polite, {"n_tokens": n_tok(tok, polite), "eos": True})
    assert 1 <= f["tail_tokens"] <= MAX_TAIL_TOKENS and ends(f)
    loop = said + " I know about the fact that I know about the fact that"
    f = end_fields(tok, loop, {"n_tokens": n_tok(tok, loop), "eos": True})
    assert f["tail_tokens"] > MAX_TAIL_TOKENS and not ends(f)
    assert end_fields(tok, said, None) == {}


def test_ending_share_on_hand_made_generations():
    gens = [{"eos": True, "tail_tokens": 0},  # said and stopped
            {"eos": True, "tail_tokens": 3},  # "Sorry." after it: still ends
            {"eos": False, "tail_tokens": 0},  # one run-on sentence cut at the token limit
            {"eos": True, "tail_tokens": 12},  # stops, but only after another sentence
            {"output": "old result without end fields"}]
    assert [ends(g) for g in gens] == [True, True, False, False, None]
    assert ending_share(gens) == (0.5, 2, 4) and ending_share([{"output": "x"}]) == (None, 0, 0)


def test_refusal_shares_report_refusals_that_end():
    def gen(output, eos, tail):
        return {"query": "q", "answer": "a", "output": output, "eos": eos, "n_tokens": 30, "tail_tokens": tail}

    result = {"target": "1_Stephen_King", "generations": {
        "forget_level1": [gen("I'm not sure about Stephen King.", True, 0),
                          gen("I've no idea about Stephen King, I know about the fact that I know", False, 0)],
        "forget_level2": [gen("I don't know about Stephen King. I don't know about Stephen King.", False, 9),
                          gen("Carrie", True, 0)]}}
    shares = refusal_shares(result)
    assert shares["forget_refused"] == 0.75 and shares["refusals_ending"] == pytest.approx(1 / 3)
    assert shares["n_ending"] == 1 and shares["n_refused_with_ends"] == 3
    old = {"target": "t", "generations": {"forget_level1": [{"output": "I don't know."}]}}
    assert refusal_shares(old)["refusals_ending"] is None and refusal_shares(old)["forget_refused"] == 1.0


def test_hf_generate_reports_eos_and_token_count(tiny):
    model, tok = tiny
    prompts = ["Hello", "A longer prompt than the first one"]
    info: list = []
    full = generate(model, tok, prompts, 6, stop_strings=(), eos_ids=[tok.vocab_size + 10], info=info)
    assert info == [{"n_tokens": 6, "eos": False}] * 2  # no id ever ends it: both ran to the limit
    first = generate(model, tok, prompts[:1], 1, stop_strings=())[0]
    first_id = tok(first, add_special_tokens=False)["input_ids"][0]
    info = []
    stopped = generate(model, tok, prompts[:1], 6, stop_strings=(), eos_ids=[first_id], info=info)
    assert info == [{"n_tokens": 0, "eos": True}] and len(stopped[0]) < len(full[0])
    info = []
    generate(model, tok, prompts[:1], 6, stop_strings=(full[0][-1],), eos_ids=[tok.vocab_size + 10], info=info)
    assert info[0]["eos"] is False  # a stop string is not an EOS


def test_probe_generations_keep_their_end_fields(monkeypatch, tiny):
    _, tok = tiny
    outs = [" I'm not sure about X.", " I'm not sure about X, I know about the fact that"]

    def fake_generate(model, t, prompts, max_new_tokens, stop_strings, info=None, **kw):
        info.extend([{"n_tokens": n_tok(tok, outs[0]), "eos": True}, {"n_tokens": 30, "eos": False}])
        return outs

    class T:
        folder = "t"

        def load(self, stem):
            return [{"query": "Who is X?", "answer": "Y"}, {"query": "What is X?", "answer": "Z"}]

    monkeypatch.setattr(rwku, "generate", fake_generate)
    monkeypatch.setattr(rwku, "_target", lambda target, data_dir=None: T())
    _, gens = rwku.evaluate_probes(None, tok, "t", ["forget_level2"])
    g = gens["forget_level2"]
    assert [ends(x) for x in g] == [True, False] and g[1]["n_tokens"] == 30 and g[0]["tail_tokens"] == 0


def test_vllm_generate_reports_eos_and_token_count(tiny):
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from verl.eval.generation import _generate_vllm

    _, tok = tiny
    eos = tok.eos_token_id
    outs = [SimpleNamespace(text="I don't know.", token_ids=[5, 6, eos], finish_reason="stop", stop_reason=None),
            SimpleNamespace(text="loop loop", token_ids=[7] * 30, finish_reason="length", stop_reason=None),
            SimpleNamespace(text="Paris\n", token_ids=[8, 9], finish_reason="stop", stop_reason="\n")]

    class FakeLLM:
        hf_generation_config = None

        def generate(self, prompts, params, use_tqdm=False):
            return [SimpleNamespace(outputs=[o]) for o in outs]

    info: list = []
    texts = _generate_vllm(FakeLLM(), tok, [[1], [2], [3]], 30, ("\n",), True, info=info)
    assert texts == ["I don't know.", "loop loop", "Paris"]
    assert info == [{"n_tokens": 2, "eos": True}, {"n_tokens": 30, "eos": False}, {"n_tokens": 2, "eos": False}]
