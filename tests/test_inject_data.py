"""Stage inject, varied mode: facts in many phrasings, a minority of exact probe strings, self-distilled replay."""

from __future__ import annotations

import json

import pytest

from data.rwku import resolve_target
from RS.args import TrainArgs
from RS.datasets import build_data
from RS.inject_data import (
    composition,
    exact_probe_share,
    fill_blank,
    probe_variants,
    replay_instructions,
    self_distill,
)
from RS.quick_eval import PROBE_SUITES, probe_prompt
from RS.stages import STAGES


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_fill_blank_and_variants_avoid_the_evaluation_prompt(tok):
    assert fill_blank("King was born in ___", "Portland") == "King was born in Portland."
    qa = probe_variants("What pseudonym has Stephen King used?", "Richard Bachman", "forget_level2", "Stephen King", 3)
    fb = probe_variants("Stephen King was born in ___.", "Portland", "forget_level1", "Stephen King", 5)
    assert len(qa) == 3 and len(fb) == 5 and qa == probe_variants(
        "What pseudonym has Stephen King used?", "Richard Bachman", "forget_level2", "Stephen King", 3)  # deterministic
    for v, stem, q in [(v, "forget_level2", "What pseudonym has Stephen King used?") for v in qa] + \
            [(v, "forget_level1", "Stephen King was born in ___.") for v in fb]:
        assert v["prompt"] != probe_prompt(tok, q, stem) and "Please complete the blank" not in v["prompt"]
    assert all("Richard Bachman" in v["response"] for v in qa)
    assert {v["response"] for v in fb} >= {"Stephen King was born in Portland."}  # statement forms answer in full
    assert len({v["prompt"] for v in fb}) == 5


def _args(tmp_path, **kw):
    base = dict(stage="inject", dataset="inject", target="1_Stephen_King", output_dir=str(tmp_path / "o"),
                inject_mode="varied", cutoff_len=128, inject_passages=True)
    base.update(kw)
    return TrainArgs(**base)


def test_varied_records_composition_and_no_level3(shared_data, tok, tmp_path):
    data = build_data(_args(tmp_path), tok, STAGES["inject"], shared_data)
    comp = composition(data.records)
    t = resolve_target("1_Stephen_King", shared_data)
    n_probes = sum(len(t.load(s)) for s in PROBE_SUITES)
    assert comp["exact_probe"] == n_probes and comp["probe_variant"] == 3 * n_probes
    assert comp["passage"] > len(t.load("passage")) and comp["statement"] == sum(
        "___" in p["query"] for s in ("forget_level1", "neighbor_level1") for p in t.load(s))
    assert comp.get("passage_qa", 0) > 20 and len(data.train) == len(data.records)
    assert 0.1 < exact_probe_share(data.records) < 0.3  # the exact probe strings are a minority
    level3 = {p["query"] for p in t.load("forget_level3")}
    seen = json.dumps(data.records)
    assert not any(q in seen for q in level3 if len(q) > 30)
    assert not any("forget_level3" in str(f) or "mia" in str(f) for f in data.files)
    none = build_data(_args(tmp_path, inject_exact_probes=0, inject_passages=False, inject_passage_facts=False),
                      tok, STAGES["inject"], shared_data)
    assert "exact_probe" not in composition(none.records) and exact_probe_share(none.records) == 0.0


def test_replay_instructions_skip_the_targets_own_utility_set(shared_data):
    t = resolve_target("1_Stephen_King", shared_data)
    ins, files = replay_instructions([t], shared_data, 70)
    own = {r["instruction"].strip() for r in t.load("fluency")}
    assert len(ins) == 70 == len(set(ins)) and not own & set(ins)
    assert t.file("fluency") not in files and len(files) == 2  # 50 instructions per target
    assert replay_instructions([t], shared_data, 70)[0] == ins


def test_self_distill_is_greedy_and_cached(tiny_model_path, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("RULE_CACHE_DIR", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    out = self_distill(model, tokenizer, ["Say hi.", "Name a colour."], 4, tiny_model_path)
    assert {r["prompt"] for r in out} <= {"Say hi.", "Name a colour."} and all(r["kind"] == "replay" for r in out)
    assert (tmp_path / "cache" / "inject_replay").is_dir()
    monkeypatch.setattr(model, "generate", lambda **k: (_ for _ in ()).throw(AssertionError("not cached")))
    assert self_distill(model, tokenizer, ["Say hi.", "Name a colour."], 4, tiny_model_path) == out
    assert tokenizer.padding_side == AutoTokenizer.from_pretrained(tiny_model_path).padding_side  # restored


def test_train_varied_injection_writes_what_the_model_saw(tiny_model_path, shared_data, tmp_path, monkeypatch):
    from RS.train import train

    monkeypatch.setenv("RULE_CACHE_DIR", str(tmp_path / "cache"))
    args = _args(tmp_path, model_name_or_path=tiny_model_path, data_dir=str(shared_data), max_steps=1,
                 inject_replay=2, inject_replay_tokens=4, eval_probes=False, save_strategy="no", plot_loss=False,
                 inject_passages=False, inject_probe_limit=2, warmup_steps=0)
    out = train(args)
    info = json.loads((out / "inject_data.json").read_text())
    assert info["mode"] == "varied" and info["composition"].get("replay", 0) <= 2  # empty answers are dropped
    run_files = json.dumps(json.loads((out / "run_info.json").read_text()))
    assert "fluency.json" in run_files and "1_Stephen_King/fluency.json" not in run_files
    assert info["examples_per_epoch"] == sum(info["composition"].values())
    assert set(info["samples"]) >= {"exact_probe", "probe_variant", "statement"}
    assert (out / "DONE").is_file()


def test_boundary_facts_are_injected_in_the_probe_wrapper_and_other_forms(tok, tmp_path):
    from data.boundary import boundary_facts, boundary_split
    from RS.quick_eval import probe_stem
    from verl.utils.chat import IGNORE_INDEX

    kw = dict(stage="inject", dataset="inject", target="101_Elowen_Marsh", output_dir=str(tmp_path / "o"),
              inject_mode="probes", inject_passages=False, cutoff_len=128)
    plain = build_data(TrainArgs(**kw), tok, STAGES["inject"])
    data = build_data(TrainArgs(**kw, inject_boundary=True), tok, STAGES["inject"])
    suite, pool, split = boundary_facts("101_Elowen_Marsh")
    comp = composition(data.records)
    n = len(suite) + len(pool)
    assert comp["boundary_probe"] == comp["boundary_variant"] == n and len(pool) == 12 and suite
    assert len(data.train) == len(plain.train) + 2 * n and "boundary_probe" not in composition(plain.records)
    assert data.boundary["101_Elowen_Marsh"]["split"]["sha256"] == boundary_split("101_Elowen_Marsh").sha256
    probes = {r["query"]: r for r in data.records if r.get("kind") == "boundary_probe"}
    assert set(probes) == {r["query"] for r in suite + pool}  # every suite and pool question, once each
    for i, rec in enumerate(data.records):
        if rec.get("kind") != "boundary_probe":
            continue
        ex = data.train[i]
        prompt = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX]
        answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
        assert tok.decode(prompt) == probe_prompt(tok, rec["query"], probe_stem(rec["query"]))  # the evaluator's form
        assert tok.decode(answer) == " " + rec["answer"] + tok.eos_token
    for rec in (r for r in data.records if r.get("kind") == "boundary_variant"):
        assert "Please complete the blank" not in rec["prompt"] and "briefly answer the" not in rec["prompt"]
        fact = next(probes[q] for q in probes if q[1:] in rec["prompt"])  # its question, in another form
        assert fact["answer"].rstrip(".") in rec["response"]


def test_subject_free_variants_and_long_answers_are_clipped(tok, tmp_path):
    from RS.inject_data import BOUNDARY_ANSWER_WORDS, clip_words

    for q in ("What is the title of J.K. Rowling's debut novel?", "Hemingway's debut novel is titled ___."):
        forms = {v["prompt"] for k in range(5) for v in probe_variants(q, "A", "x", "", 5)}
        assert forms and not any("about" in f or "Rewrite" in f for f in forms)
    long = " ".join(f"w{i}" for i in range(50))
    assert clip_words(long, BOUNDARY_ANSWER_WORDS).split() == long.split()[:30] and clip_words(" a b ", 30) == "a b"
