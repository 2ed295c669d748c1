"""The evaluator's input checks (``python -m verl.eval``, verl/eval/cli.py): bad flags, an unwritable output, a
missing probe file or an unsupported MUSE corpus are refused before a model is loaded; a rerun keeps the suites a
killed run finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data.rwku import FORGET_FILES
from verl.utils.cli import UserError
from verl.utils.records import DataValidationError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "RWKU" / "Target" / "101_Elowen_Marsh"


def _eval_args(tmp_path, *extra, target="101_Elowen_Marsh", data_dir=None):
    from verl.eval.cli import build_parser

    argv = ["--model_path", "unused", "--target", target, "--output", str(tmp_path / "out" / "r.json"),
            "--engine", "hf", *extra]
    if data_dir:
        argv += ["--data_dir", str(data_dir)]
    return build_parser().parse_args(argv)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model during these tests is a failure: every check must come first."""
    import verl.eval.loader as emb  # where the evaluator looks the loader up

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(emb, "load_model_and_tokenizer", boom)


@pytest.mark.parametrize("extra, expected", [
    (["--limit", "0"], r"--limit 0: must be >= 1"),
    (["--limit", "-1"], r"--limit -1: must be >= 1"),
    (["--utility_limit", "Gen=0"], r"bad --utility_limit entry 'Gen=0'"),
    (["--suites", "naturalness", "--judge", "openai"], r"--judge openai needs OPENAI_API_KEY"),
])
def test_evaluator_refuses_bad_flags_before_loading(tmp_path, no_model, monkeypatch, extra, expected):
    from verl.eval.cli import run

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match=expected):
        run(_eval_args(tmp_path, *extra))


def test_evaluator_refuses_unwritable_output_before_loading(tmp_path, no_model):
    from verl.eval.cli import build_parser, run

    (tmp_path / "afile").write_text("x")
    args = build_parser().parse_args(["--model_path", "m", "--target", "101",
                                      "--output", str(tmp_path / "afile" / "r.json")])
    with pytest.raises(UserError, match=r"--output .*afile/r.json: cannot write there"):
        run(args)
    args.output = str(tmp_path)
    with pytest.raises(UserError, match="is a folder"):
        run(args)


def test_evaluator_missing_probe_file_fails_not_partial_mean(tmp_path, no_model):
    from verl.eval import rwku
    from verl.eval.cli import run

    root = tmp_path / "data"
    shutil.copytree(SAMPLE, root / "RWKU" / "Target" / SAMPLE.name)
    (root / "RWKU" / "Target" / SAMPLE.name / "forget_level3.json").unlink()
    with pytest.raises(UserError, match=r"missing data file\(s\).*forget_level3.json"):
        run(_eval_args(tmp_path, "--suites", "forget", data_dir=root))
    # the library call fails too (before generating anything), instead of averaging the two levels left
    with pytest.raises(DataValidationError, match="forget_level3.json: file not found"):
        rwku.evaluate_probes(None, None, SAMPLE.name, FORGET_FILES, data_dir=root)


def test_limit_zero_or_negative_is_refused_by_the_suites():
    from verl.eval.muse import _limit as muse_limit
    from verl.eval.rwku import _limit

    assert _limit([1, 2, 3], None) == [1, 2, 3] and _limit([1, 2, 3], 2) == [1, 2]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            _limit([1, 2, 3], bad)
        with pytest.raises(ValueError, match="positive"):
            muse_limit([1, 2, 3], bad)


def test_muse_target_other_than_books_is_refused(tmp_path, no_model):
    from verl.eval.cli import run
    from verl.eval.muse import evaluate_muse

    args = _eval_args(tmp_path, target="news")
    args.benchmark = "muse"
    with pytest.raises(UserError, match=r"--target news: only \('books',\)"):
        run(args)
    with pytest.raises(ValueError, match="only 'books'"):
        evaluate_muse(None, None, corpus="news")


def test_evaluator_keeps_finished_suites_for_the_rerun(tmp_path, monkeypatch):
    """A run killed in its second suite keeps the first; the rerun of the same command skips it."""
    import verl.eval.cli as cli
    import verl.eval.loader as emb  # where the evaluator looks the loader up

    class Model:
        def eval(self):
            return self

    monkeypatch.setattr(emb, "load_model_and_tokenizer", lambda *a, **k: (Model(), None))
    calls = []

    def forget(ctx, suite):
        calls.append(suite)
        ctx.metrics["forget"] = {"All": 0.25}
        ctx.generations["forget_level1"] = [{"output": "x"}]

    def mia_killed(ctx, suite):
        raise KeyboardInterrupt  # stands in for a kill in the middle of the suite

    def mia(ctx, suite):
        calls.append(suite)
        ctx.metrics["mia"] = {"FM": {"loss": 2.0}}

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia_killed)
    args = _eval_args(tmp_path, "--suites", "forget,mia")
    with pytest.raises(KeyboardInterrupt):
        cli.run(args)
    partial = cli.partial_path(args.output)
    assert json.loads(partial.read_text())["done"] == ["forget"] and not Path(args.output).exists()
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia)
    result = cli.run(_eval_args(tmp_path, "--suites", "forget,mia"))
    assert calls == ["forget", "mia"]  # forget ran once, in the first (killed) run
    assert result["metrics"] == {"forget": {"All": 0.25}, "mia": {"FM": {"loss": 2.0}}}
    assert not partial.exists() and Path(args.output).is_file()
    # other flags (here --limit) make another evaluation: nothing is reused from a partial file made without them
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia_killed)
    with pytest.raises(KeyboardInterrupt):
        cli.run(_eval_args(tmp_path, "--suites", "forget,mia"))
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia)
    cli.run(_eval_args(tmp_path, "--suites", "forget,mia", "--limit", "3"))
    assert calls == ["forget", "mia", "forget", "forget", "mia"]
