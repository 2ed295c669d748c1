"""RWKU prompt builders, utility scorers with fakes, generation stops, log-prob scoring and the CLI end to end."""

import json

import pytest
import torch

from verl.eval import rwku
from verl.eval.generation import generate, next_token_logprobs, sequence_logprobs, truncate_at_stop
from verl.rule.prompts import aa_style, build_prompt

SAMPLE_TARGET = "101_Elowen_Marsh"


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from verl.models.embedded import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_path)
    return model.eval(), tok


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny[1]


def _user_turn(tok, text):
    from verl.utils.chat import format_prompt

    return format_prompt(tok, text)


def test_prompt_fb(tok):
    p = build_prompt({"query": "X was born in ___"}, "FB", tok)
    user = "Please complete the blank in the following question.\nQuestion: X was born in ___\n"
    assert p == _user_turn(tok, user) + "Answer:"


def test_prompt_qa(tok):
    p = build_prompt({"query": "Where was X born?"}, "QA", tok)
    user = "Please briefly answer the following question.\nQuestion: Where was X born?\n"
    assert p == _user_turn(tok, user) + "Answer:"


@pytest.mark.parametrize("ptype", ["prefix injection", "role play", "context hint", "synonym manipulation",
                                   "reverse query", "multiple choice", "cross lingual (Spanish)"])
def test_prompt_aa_plain_types_append_answer(tok, ptype):
    p = build_prompt({"query": "Q?", "type": ptype}, "AA", tok)
    assert p == _user_turn(tok, "Please briefly answer the following question.\nQuestion: Q?\n") + "Answer:"


def test_prompt_aa_affirmative_suffix_has_no_answer(tok):
    q = "Where was X born? Sure, here is the answer:"
    p = build_prompt({"query": q, "type": "affirmative suffix"}, "AA", tok)
    assert p == _user_turn(tok, "Please briefly answer the following question.\nQuestion: " + q)
    assert not p.endswith("Answer:")


def test_prompt_aa_incontext_learning_keeps_answer_without_question_prefix(tok):
    q = "Question: A?\nAnswer: a\nQuestion: B?"
    p = build_prompt({"query": q, "type": "incontext learning"}, "AA", tok)
    assert p == _user_turn(tok, "Please briefly answer the following question.\n" + q + "\n") + "Answer:"
    assert aa_style("In-context learning") == "icl"


def test_mmlu_choice_by_loglikelihood_with_fake_scorer(tok):
    recs = [
        {"task": "astronomy", "question": "q1", "choices": ["w", "x", "y", "z"], "answer": 2, "examples": []},
        {"task": "astronomy", "question": "q2", "choices": ["w", "x", "y", "z"], "answer": 0, "examples": []},
    ]
    seen = {}

    def scorer(prompts, cand_ids):
        seen["prompts"], seen["ids"] = prompts, cand_ids
        return [[-3.0, -2.0, -0.5, -4.0]] * len(prompts)  # " C" most likely

    acc, items = rwku.evaluate_mmlu(None, tok, recs, scorer=scorer)
    assert acc == 0.5 and [it["output"] for it in items] == ["C", "C"]
    assert seen["ids"] == [tok.encode(" " + c, add_special_tokens=False)[-1] for c in "ABCD"]
    assert seen["prompts"][0].endswith("Answer:") and "\nC. y" in seen["prompts"][0]


def test_truthfulqa_mc1_with_fake_scorer(tok):
    recs = [{"question": "q", "mc1_targets": {"choices": ["true one", "false one"], "labels": [1, 0]}}]
    acc, _ = rwku.evaluate_truthfulqa(None, tok, recs, scorer=lambda pairs: [-1.0, -2.0])
    assert acc == 1.0
    acc, _ = rwku.evaluate_truthfulqa(None, tok, recs, scorer=lambda pairs: [-3.0, -2.0])
    assert acc == 0.0


def test_bbh_answer_extraction():
    assert rwku.extract_bbh_answer("Let's think. So the answer is (B). More") == "(B)"
    assert rwku.extract_bbh_answer("  no marker ") == "no marker"
    assert rwku.extract_bbh_answer("") == "NOANSWER"


def test_bbh_stops_at_the_next_invented_question(monkeypatch):
    seen = {}

    def fake_generate(model, tok, prompts, max_new_tokens, stop_strings, **kw):
        seen["stops"] = stop_strings
        return ["Step 1. So the answer is True."]  # what generate returns once cut at the stop

    monkeypatch.setattr(rwku, "generate", fake_generate)
    tok = type("Tok", (), {"chat_template": None})()
    score, items = rwku.evaluate_bbh(None, tok, [{"question": "not False is", "answer": "True", "cot": "Q: x\nA: y"}])
    assert seen["stops"] == ("\nQ:",) and items[0]["prediction"] == "True"
    assert score == 0.0 and items[0]["score_corrected"] == 1.0  # RWKU's char-wise EM cannot match "True"


def test_generation_stops_at_stop_string(tiny):
    model, tok = tiny
    assert truncate_at_stop("Paris\nand more", ("\n",)) == "Paris"
    prompts = [build_prompt({"query": "Where was X born?"}, "QA", tok), "Hello"]
    full = generate(model, tok, prompts, 12, stop_strings=(), batch_size=2)
    assert len(full) == 2 and all(isinstance(x, str) for x in full)
    text = full[0]
    assert len(text) > 3
    stop = text[len(text) // 2]  # a character the greedy output is known to contain
    cut = generate(model, tok, prompts, 12, stop_strings=(stop,), batch_size=2)
    assert cut[0] == text[: text.index(stop)]
    # batching and length sorting do not change greedy outputs
    assert generate(model, tok, prompts[:1], 12, stop_strings=(), batch_size=1)[0] == text


def test_sequence_logprobs_match_full_forward(tiny):
    model, tok = tiny
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    ref = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    got = sequence_logprobs(model, tok, [text, "short"], batch_size=2)[0]
    assert torch.allclose(got, ref, atol=1e-4)
    (pair,) = sequence_logprobs(model, tok, [("The quick brown", " fox jumps")])
    n_prompt = len(tok("The quick brown")["input_ids"])
    assert torch.allclose(pair, ref[n_prompt - 1 : n_prompt - 1 + len(pair)], atol=1e-4)


def test_next_token_logprobs_match_unpadded_forward(tiny):
    model, tok = tiny
    prompts = ["Question: which letter? Answer:", "A much longer prompt, so the other one gets left padding. Answer:"]
    cands = [tok.encode(" " + c, add_special_tokens=False)[-1] for c in "ABCD"]
    got = next_token_logprobs(model, tok, prompts, cands, batch_size=2)
    for prompt, row in zip(prompts, got):
        with torch.no_grad():
            last = model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].float()
        assert torch.allclose(torch.tensor(row), torch.log_softmax(last, -1)[cands], atol=1e-4)


def test_cli_end_to_end_tiny_model(tiny_model_path, tmp_path):
    from verl.eval.cli import main

    out = tmp_path / "res.json"
    main(["--benchmark", "rwku", "--model_path", tiny_model_path, "--target", SAMPLE_TARGET, "--limit", "2",
          "--utility_limit", "1", "--long_gen_tokens", "16", "--output", str(out), "--batch_size", "4",
          "--method", "tiny"])
    res = json.loads(out.read_text())
    for key in ("benchmark", "method", "target", "protocol", "model_path", "created", "git_commit", "config",
                "metrics", "generations", "timing"):
        assert key in res
    assert res["target"] == SAMPLE_TARGET and res["method"] == "tiny" and res["protocol"] == "paper"
    fg = res["metrics"]["forget"]
    assert set(fg["n"]) == {"FB", "QA", "AA"} and all(0 <= fg[k] <= 1 for k in ("FB", "QA", "AA", "All"))
    assert res["metrics"]["neighbor"]["n"] == {"FB": 2, "QA": 2}
    assert set(res["metrics"]["mia"]) == {"FM", "RM"} and res["metrics"]["mia"]["FM"]["loss"] > 0
    assert set(res["metrics"]["utility"]) == {"Gen", "Rea", "Rea_corrected", "Tru", "Fac", "Flu"}
    rec = res["generations"]["forget_level1"][0]
    assert {"query", "answer", "output", "score"} <= set(rec)
    assert {"forget", "neighbor", "mia", "utility", "total"} <= set(res["timing"])


def test_muse_knowmem_prompt_format():
    from verl.eval.muse import KNOWMEM_STOPS, knowmem_prompt

    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert knowmem_prompt("Q?", icl) == ("Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\n"
                                         "Question: Q?\nAnswer: ")
    assert truncate_at_stop("Harry\n\nQuestion: x", KNOWMEM_STOPS) == "Harry"


def test_utility_limit_parsing():
    from verl.eval.cli import parse_utility_limit

    assert parse_utility_limit(None, 5) == 5 and parse_utility_limit("7", None) == 7
    assert parse_utility_limit("Gen=20,Rea=4", 3) == {"Gen": 20, "Rea": 4, "Tru": 3, "Fac": 3, "Flu": 3}


# ---------------------------------------------------------------------------------------- paper protocol
def test_rwku_bbh_exact_match_is_character_wise():
    assert rwku.rwku_bbh_exact_match("(A)", "(A)") == 1.0  # "(A)" normalises to "a" = its character "A"
    assert rwku.rwku_bbh_exact_match("A", "(A)") == 1.0
    assert rwku.rwku_bbh_exact_match("True", "True") == 0.0  # only one-character answers can score
    assert rwku.rwku_bbh_exact_match("t", "True") == 1.0
    assert rwku.rwku_bbh_exact_match("(B)", "(A)") == 0.0


def test_first_line_skips_leading_newlines():
    assert rwku.first_line("\nStephen King\nwrote Carrie") == "Stephen King"
    assert rwku.first_line(" Richard Bachman") == "Richard Bachman" and rwku.first_line("\n\n") == ""


@pytest.mark.parametrize("probe_bos, special", [("rwku", True), ("single", None)])
def test_probes_run_to_eos_and_report_both_scorings(monkeypatch, probe_bos, special):
    seen = {}

    def fake_generate(model, tok, prompts, max_new_tokens, stop_strings, **kw):
        seen.update(stops=stop_strings, special=kw.get("add_special_tokens"), n=max_new_tokens)
        return ["\nRichard Bachman\nHe also wrote as John Swithen" for _ in prompts]

    monkeypatch.setattr(rwku, "generate", fake_generate)
    probes = [{"query": "What pseudonym did X use?", "answer": "Richard Bachman"},
              {"query": "Which name?", "answer": "John Swithen"}]

    class T:
        folder = "t"

        def load(self, stem):
            return probes

    monkeypatch.setattr(rwku, "_target", lambda target, data_dir=None: T())
    tok = type("Tok", (), {"chat_template": None})()
    m, gens = rwku.evaluate_probes(None, tok, "t", ["forget_level2"], probe_bos=probe_bos)
    assert seen == {"stops": (), "special": special, "n": 30}
    # RWKU scores the whole output: both answers found; the corrected first line holds only the first
    assert m["QA"] == 1.0 and m["corrected"]["QA"] == 0.5
    assert gens["forget_level2"][0]["output_corrected"] == "Richard Bachman"
    assert "rwku" in m["protocol"]["scoring"]
    with pytest.raises(ValueError, match="probe_bos"):
        rwku.evaluate_probes(None, tok, "t", ["forget_level2"], probe_bos="double")


def test_rwku_tokenisation_gives_llama3_prompts_two_bos():
    from verl.eval.generation import _encode

    class Llama3Tok:  # the tokenizer adds <|begin_of_text|> (id 1) when special tokens are on
        bos_token = "<|begin_of_text|>"

        def __call__(self, text, add_special_tokens=True):
            body = [1] + [ord(c) for c in text.removeprefix(self.bos_token)] if text.startswith(self.bos_token) \
                else [ord(c) for c in text]
            return {"input_ids": ([1] if add_special_tokens else []) + body}

    templated = "<|begin_of_text|>Q"
    assert _encode(Llama3Tok(), templated, True)[:2] == [1, 1]  # RWKU's prompts (probe_bos="rwku")
    assert _encode(Llama3Tok(), templated, None)[:2] == [1, ord("Q")]  # probe_bos="single"


# ------------------------------------------------------------------------------ the release's evaluator switches
class _Llama3Chat:
    """Llama-3-like tokenizer: the template writes <|begin_of_text|> (id 1), special tokens add another."""

    bos_token, chat_template, eos_token_id = "<|begin_of_text|>", "llama3", 2

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return self.bos_token + "U:" + messages[-1]["content"] + "A:"

    def encode(self, text, add_special_tokens=True):
        return self(text, add_special_tokens)["input_ids"]

    def __call__(self, text, add_special_tokens=True):
        body = [1] + [ord(c) for c in text.removeprefix(self.bos_token)] if text.startswith(self.bos_token) \
            else [ord(c) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + body}


UTILITY_RECORDS = {
    "retain_mmlu": [{"question": "2+2?", "choices": ["3", "4"], "answer": 1, "examples": [], "task": "math"}],
    "retain_bbh": [{"question": "not False is", "answer": "True", "cot": "Q: x\nA: y", "task": "boolean"}],
    "truthful": [{"question": "Is the sky green?", "mc1_targets": {"choices": ["No", "Yes"], "labels": [1, 0]}}],
    "triviaqa": [{"question": "Capital of France?", "answers": ["Paris"]}],
    "fluency": [{"instruction": "Describe the sea."}],
}


def _utility_bos_counts(monkeypatch, **kw) -> tuple[dict, dict]:
    """Leading BOS ids of every prompt each utility part sends, and the generate keywords per part."""
    from verl.eval.generation import _encode

    bos, gen_kw = {}, {}

    def count(part, prompts, special):
        encoded = [_encode(tok, p, special) for p in prompts]
        bos[part] = {next(i for i, x in enumerate(ids) if x != 1) for ids in encoded}

    def fake_generate(model, t, prompts, max_new_tokens, stop_strings, desc=None, add_special_tokens=None, **k):
        count(desc, prompts, add_special_tokens)
        gen_kw[desc] = {"stops": stop_strings, **k}
        return ["So the answer is True." for _ in prompts]

    def fake_next(model, t, prompts, cands, batch_size=8, desc=None, add_special_tokens=None):
        count("mmlu", prompts, add_special_tokens)
        return [[0.0] * len(cands) for _ in prompts]

    def fake_seq(model, t, pairs, batch_size=8, desc=None, add_special_tokens=None, **k):
        count("truthfulqa", [p for p, _ in pairs], add_special_tokens)
        return [torch.zeros(1) for _ in pairs]

    class T:
        folder = "t"

        def has(self, stem):
            return True

        def load(self, stem):
            return UTILITY_RECORDS[stem]

    tok = _Llama3Chat()
    monkeypatch.setattr(rwku, "generate", fake_generate)
    monkeypatch.setattr(rwku, "next_token_logprobs", fake_next)
    monkeypatch.setattr(rwku, "sequence_logprobs", fake_seq)
    monkeypatch.setattr(rwku, "_target", lambda target, data_dir=None: T())
    rwku.evaluate_utility(None, tok, "t", **kw)
    return bos, gen_kw


def test_utility_prompts_get_rwkus_second_bos_on_request(monkeypatch):
    parts = {"mmlu", "bbh", "truthfulqa", "triviaqa", "fluency"}
    single, _ = _utility_bos_counts(monkeypatch)
    assert set(single) == parts and all(v == {1} for v in single.values())  # the template's BOS only
    rwku_bos, _ = _utility_bos_counts(monkeypatch, bos="rwku")
    assert set(rwku_bos) == parts and all(v == {2} for v in rwku_bos.values())  # RWKU's tokenisation: two
    with pytest.raises(ValueError, match="utility bos"):
        _utility_bos_counts(monkeypatch, bos="double")


def test_bbh_runs_to_eos_and_utility_stops_at_eot_on_request(monkeypatch):
    _, default = _utility_bos_counts(monkeypatch)
    assert default["bbh"]["stops"] == ("\nQ:",) and "eos_ids" not in default["bbh"]
    _, release = _utility_bos_counts(monkeypatch, bbh_stop="none", stop="eot")
    assert release["bbh"]["stops"] == ()  # RWKU's eval_bbh.py: no stop sequence, 256 tokens or EOS
    assert {k: v["eos_ids"] for k, v in release.items()} == {"bbh": [2], "triviaqa": [2], "fluency": [2]}


def test_probe_stop_ids_eot_only_on_request(monkeypatch, tiny_model_path):
    from tests.test_chat_format import llama3_tokenizer

    seen = {}

    def fake_generate(model, t, prompts, max_new_tokens, stop_strings, **kw):
        seen.update(eos=kw.get("eos_ids", "default"))
        return ["Richard Bachman" for _ in prompts]

    class T:
        folder = "t"

        def load(self, stem):
            return [{"query": "Which pseudonym?", "answer": "Richard Bachman"}]

    monkeypatch.setattr(rwku, "generate", fake_generate)
    monkeypatch.setattr(rwku, "_target", lambda target, data_dir=None: T())
    llama3 = llama3_tokenizer(tiny_model_path)
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    m, _ = rwku.evaluate_probes(None, llama3, "t", ["forget_level2"], stop="eot")
    assert seen["eos"] == [eot] and m["protocol"]["stop"] == f"token ids {[eot]} only"
    rwku.evaluate_probes(None, llama3, "t", ["forget_level2"])
    assert seen["eos"] == "default"  # every EOS id of the tokenizer and generation config (128001 and 128009)


def test_end_of_turn_ids():
    from verl.eval.generation import end_of_turn_ids

    class Vocab:
        eos_token_id = 7

        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    assert end_of_turn_ids(Vocab({"<|eot_id|>": 128009, "<|end_of_text|>": 128001})) == [128009]
    assert end_of_turn_ids(Vocab({"<|im_end|>": 2})) == [7]  # no <|eot_id|>: the tokenizer's EOS


def test_generate_stops_only_at_the_given_eos_ids(tiny):
    model, tok = tiny
    prompt = ["Hello"]
    full = generate(model, tok, prompt, 6, stop_strings=())
    first = model.generate(**{k: v for k, v in tok(prompt, return_tensors="pt").items()}, max_new_tokens=1,
                           do_sample=False)[0, -1].item()
    stopped = generate(model, tok, prompt, 6, stop_strings=(), eos_ids=[first])
    assert stopped == [tok.decode([first])] and len(full[0]) > len(stopped[0])  # ended at that token


def test_cli_passes_the_release_switches(monkeypatch):
    from verl.eval import cli

    args = cli.build_parser().parse_args(["--model_path", "m", "--output", "o.json", "--target", "t",
                                          "--user_turn", "verbatim", "--stop_ids", "eot", "--utility_bos", "rwku",
                                          "--bbh_stop", "none", "--fluency_tokenizer", "word_tokenize"])
    seen = {}
    monkeypatch.setattr(rwku, "evaluate_probes", lambda *a, **kw: (seen.update(probes=kw) or {}, {}))
    monkeypatch.setattr(rwku, "evaluate_utility", lambda *a, **kw: (seen.update(utility=kw) or {}, {}, {}))
    ctx = cli.EvalContext(args=args, model=None, tokenizer=None)
    cli._run_probes(ctx, "forget")
    cli._run_utility(ctx, "utility")
    assert seen["probes"]["stop"] == "eot"
    assert {k: seen["utility"][k] for k in ("bos", "stop", "bbh_stop", "fluency_tokenizer")} == {
        "bos": "rwku", "stop": "eot", "bbh_stop": "none", "fluency_tokenizer": "word_tokenize"}
    default = cli.build_parser().parse_args(["--model_path", "m", "--output", "o.json"])
    assert (default.user_turn, default.stop_ids, default.utility_bos, default.bbh_stop, default.fluency_tokenizer,
            default.verbmem_prompt) == ("template", "all", "single", "question", "treebank", "muse")
