"""Robustness probes on the tiny random model: logit lens, relearning on a copy, quantisation skipped on CPU."""

import json

import pytest
import torch

from verl.eval.robustness import (
    RobustnessConfig,
    evaluate_robustness,
    logit_lens,
    quant_unavailable_reason,
    relearn,
    summary,
)
from verl.models.embedded import load_model_and_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    model, tok = load_model_and_tokenizer(tiny_model_path)
    model.eval()
    return model, tok


@pytest.fixture
def target_dir(tmp_path):
    """A minimal RWKU-format target (only the files these probes read)."""
    d = tmp_path / "999_Test_Person"
    d.mkdir()
    files = {
        "intro": [{"target": "Test Person", "intro": "Please forget Test Person."}],
        "forget_level1": [
            {"query": "Test Person was born in ___.", "answer": "Paris"},
            {"query": "Test Person wrote the novel ___.", "answer": "Blue Harbor"},
            {"query": "Test Person studied ___ at college.", "answer": "physics"},
        ],
        "forget_level2": [{"query": "Where was Test Person born?", "answer": "Paris"}],
        "forget_level3": [
            {"query": "Which novel did Test Person write?", "answer": "Blue Harbor", "type": "paraphrase"},
        ],
        "passage": [
            {"text": "Test Person was born in Paris and wrote Blue Harbor."},
            {"text": "Test Person studied physics at college before writing novels."},
        ],
    }
    for stem, recs in files.items():
        (d / f"{stem}.json").write_text(json.dumps(recs))
    return d


def test_logit_lens_shapes_and_final_layer_matches_logits(tiny):
    model, tok = tiny
    prompts = [
        "<|im_start|>user\nThe capital of France is ___<|im_end|>\n<|im_start|>assistant\nAnswer:",
        "Short prompt:",
    ]
    res = logit_lens(model, tok, prompts, ["Paris", "yes"], top_k=10, batch_size=2)
    n_layers, vocab = model.config.num_hidden_layers, model.config.vocab_size
    assert res["n"] == 2 and res["num_layers"] == n_layers
    assert len(res["mean_rank"]) == len(res["top10_rate"]) == n_layers
    assert all(len(r) == n_layers for r in res["ranks"])
    assert all(1 <= r <= vocab for row in res["ranks"] for r in row)
    assert all(0.0 <= h <= 1.0 for h in res["top10_rate"])
    # the last layer's lens is the model's own next-token distribution
    ids = tok(prompts[1], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    gold = [tok(" yes", add_special_tokens=False)["input_ids"][0], tok("yes", add_special_tokens=False)["input_ids"][0]]
    expected = min(int((logits > logits[g]).sum()) + 1 for g in gold)
    assert res["ranks"][1][-1] == expected


def test_relearn_changes_only_the_copy(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attacked, losses = relearn(
        model,
        tok,
        ["alpha beta gamma delta.", "one two three four five."],
        steps=2,
        lr=1e-2,
        batch_size=2,
        max_length=32,
    )
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert attacked is not model and not attacked.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # original untouched
    changed = [k for k, v in attacked.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert tok.padding_side == "left"  # restored


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_quant_skipped_on_cpu_and_full_robustness(tiny, target_dir):
    model, tok = tiny
    assert quant_unavailable_reason("/some/model") is not None
    cfg = RobustnessConfig(
        relearn_steps=1,
        relearn_batch_size=2,
        relearn_max_length=32,
        limit=2,
        batch_size=4,
        logit_lens_limit=2,
        model_path="/not/used",
    )
    res = evaluate_robustness(model, tok, str(target_dir), cfg, baseline_forget={"All": 0.0})
    assert res["quant"]["8bit"]["skipped"] and res["quant"]["4bit"]["reason"]
    rl = res["relearn"]
    assert rl["n_texts"] == 2 and set(rl["forget"]) >= {"FB", "QA", "All"} and "delta_All" in rl
    assert res["logit_lens"]["n"] == 2 and "ranks" not in res["logit_lens"]
    assert set(res["timing"]) == {"relearn", "quant", "logit_lens"}
    json.dumps(res)  # fits in the result file
    # dict / namespace arguments work too
    res2 = evaluate_robustness(model, tok, str(target_dir), {"suites": "quant", "quant_bits": "8"})
    assert list(res2) == ["timing", "quant"] and list(res2["quant"]) == ["8bit"]
    muse = evaluate_robustness(model, tok, "books", {"benchmark": "muse", "limit": None})
    assert muse["skipped"] and "RWKU" in muse["reason"]
    with pytest.raises(ValueError, match="relearn, quant, logit_lens"):
        RobustnessConfig(suites=("relearn", "lens"))


def test_cli_runs_the_probes_not_the_evaluator_suites(tiny_model_path, tmp_path):
    """--suites lists the evaluator's suites; the probes come from --robustness."""
    from verl.eval.cli import main
    from verl.utils.cli import UserError

    common = ["--model_path", tiny_model_path, "--target", "101_Elowen_Marsh", "--limit", "2", "--batch_size", "2"]
    out = tmp_path / "res.json"
    main([*common, "--suites", "forget,robustness", "--output", str(out)])
    block = json.loads(out.read_text())["metrics"]["robustness"]
    assert set(block["timing"]) == {"relearn", "quant", "logit_lens"}
    assert block["relearn"]["forget"]["n"]["FB"] == 2 and "delta_All" in block["relearn"]  # against the forget suite
    assert block["logit_lens"]["n"] == 2
    rate = block["logit_lens"]["top10_rate"]
    assert block["logit_lens"]["top_k_rate_best"] == max(rate) and block["logit_lens"]["top_k_rate_final"] == rate[-1]
    assert {"relearn_All", "relearn_delta_All", "quant_8bit_All", "logit_lens_best_layer"} <= set(summary(block))
    out2 = tmp_path / "lens.json"
    main([*common, "--suites", "robustness", "--robustness", "logit_lens", "--output", str(out2)])
    assert set(json.loads(out2.read_text())["metrics"]["robustness"]) == {"timing", "logit_lens"}
    with pytest.raises(UserError, match="unknown robustness probe"):
        main([*common, "--suites", "robustness", "--robustness", "relearn,lens", "--output", str(tmp_path / "x.json")])
