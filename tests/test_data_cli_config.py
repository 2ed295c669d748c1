"""The data tools' command lines (data.prepare, data.synthesize, data.compare): the flags become a typed config (the
tool's dataclass, through OmegaConf), and an unknown option is an error, never a silent extra."""

from __future__ import annotations

from pathlib import Path

import pytest

from data import compare, prepare, synthesize
from verl.utils.cli import ConfigError
from verl.utils.typed_args import typed_config


def _rejects_unknown(parse, schema, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parse([*argv, "--no_such_option", "1"])
    assert info.value.code == 2 and "--no_such_option" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no_such_option"):  # the typed merge rejects a key no field names
        typed_config(schema, {"no_such_option": 1})


def test_prepare_flags_become_a_typed_config(capsys):
    argv = ["--benchmark", "rwku", "--source", "hf", "--out", "/tmp/o"]
    cfg = prepare.parse_args([*argv, "--copy", "--targets", "1", "51_Betty_White"])
    assert cfg == prepare.PrepareConfig(benchmark="rwku", source="hf", out="/tmp/o", copy=True,
                                        targets=["1", "51_Betty_White"])
    assert prepare.parse_args(argv) == prepare.PrepareConfig(benchmark="rwku", source="hf", out="/tmp/o")
    _rejects_unknown(prepare.parse_args, prepare.PrepareConfig, argv, capsys)


def test_synthesize_flags_become_a_typed_config(capsys):
    argv = ["--target", "51", "--out", "/tmp/s"]
    cfg = synthesize.parse_args([*argv, "--budget", "paper", "--n_questions", "7", "--rs_fraction", "0.5",
                                 "--no_cache", "--muse_fewshot", "icl", "--data_dir", "${HOME}/d"])
    assert type(cfg) is synthesize.SynthConfig
    assert (cfg.target, cfg.out, cfg.budget, cfg.n_questions, cfg.rs_fraction, cfg.no_cache, cfg.muse_fewshot) == (
        "51", "/tmp/s", "paper", 7, 0.5, True, "icl")
    assert cfg.data_dir == "${HOME}/d"  # a flag value is taken verbatim, not as an OmegaConf interpolation
    assert synthesize.parse_args(argv) == synthesize.SynthConfig(target="51", out="/tmp/s")  # the field defaults
    _rejects_unknown(synthesize.parse_args, synthesize.SynthConfig, argv, capsys)


def test_compare_flags_become_a_typed_config(capsys):
    cfg = compare.parse_args(["A/1_X", "B/1_X", "--tokenizer", "embedded"])
    assert cfg == compare.CompareConfig(official=Path("A/1_X"), synth=Path("B/1_X"), tokenizer="embedded")
    assert isinstance(cfg.official, Path) and compare.parse_args(["a", "b"]).tokenizer == "words"
    _rejects_unknown(compare.parse_args, compare.CompareConfig, ["a", "b"], capsys)


def test_typed_config_checks_types_and_required_fields():
    with pytest.raises(ConfigError, match="n_questions"):
        typed_config(synthesize.SynthConfig, {"n_questions": "many"})
    with pytest.raises(ConfigError, match="benchmark"):  # a field without a default must be given
        typed_config(prepare.PrepareConfig, {"source": "hf", "out": "o"})
    literal = ["${x}", "a\\${y}", "\\\\${z}", "$", "end\\"]
    assert typed_config(prepare.PrepareConfig, {"benchmark": "rwku", "source": literal[1], "out": literal[2],
                                                "targets": literal}).targets == literal
