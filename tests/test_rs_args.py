"""RS.train's typed config: composed YAML files (extends, by_stage), their precedence and their errors."""

from __future__ import annotations

import itertools

import pytest
import yaml

from RS.args import TrainArgs, load_yaml_config, parse_args
from tests.conftest import REPO

CONFIGS = REPO / "RS" / "configs"
LAUNCHERS = ("accelerate_",)  # accelerate launch's own configs, not RS.train's


def _parse(*argv: str) -> TrainArgs:
    return parse_args([*argv, "--target", "1", "--output_dir", "o"])


def _shipped() -> list:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith(LAUNCHERS))


def test_a_retain_variant_composes_model_loss_family_and_stage():
    args = _parse("--stage", "npo_klr", "--config", str(CONFIGS / "smollm2/npo.yaml"))
    assert args.stage == "npo_klr"  # the flag picks the variant of the loss family's file
    assert args.npo_beta == 0.2  # smollm2/npo.yaml
    assert (args.learning_rate, args.max_steps, args.save_strategy) == (1e-4, 8, "no")  # smollm2/baseline.yaml
    assert (args.model_name_or_path, args.cutoff_len) == ("smollm2-135m-instruct", 128)  # model/smollm2.yaml
    assert args.retain_weight == 1.0 and args.klr_reduction == "labelled_mean"  # TrainArgs defaults


def test_by_stage_sections_follow_the_stage():
    npo = str(CONFIGS / "llama3_8b/npo.yaml")
    assert _parse("--stage", "npo_klr", "--config", npo).klr_reduction == "release"  # model/llama3_8b.yaml "*_klr"
    assert _parse("--stage", "npo_gdr", "--config", npo).klr_reduction == "labelled_mean"
    plain = _parse("--config", npo)
    assert (plain.stage, plain.learning_rate, plain.total_batch_size) == ("npo", 2e-6, 16)
    ga = str(CONFIGS / "llama3_8b/ga.yaml")
    assert _parse("--config", ga).loss_reduction == "global_token_mean"
    assert _parse("--stage", "ga_gdr", "--config", ga).loss_reduction == "micro_batch_mean"
    assert load_yaml_config(ga)["loss_reduction"] == "global_token_mean"
    assert "loss_reduction" not in load_yaml_config(ga, stage="ga_klr")


def test_flag_beats_yaml_beats_default(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("learning_rate: 1.0e-3\nwarmup_steps: 7\nseed: 1\n")
    cfg = tmp_path / "sub" / "cfg.yaml"
    cfg.parent.mkdir()
    cfg.write_text("extends: ../base.yaml\nseed: 2\n")
    args = _parse("--config", str(cfg), "--warmup_steps", "3")
    assert args.warmup_steps == 3  # flag over both files
    assert args.seed == 2  # the file over the file it extends
    assert args.learning_rate == 1e-3  # the extended file over the default
    assert args.logging_steps == TrainArgs.logging_steps  # the default
    assert args.config == str(cfg)


def test_extends_merges_a_list_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 1\nlogging_steps: 3\n")
    (tmp_path / "b.yaml").write_text("seed: 2\n")
    (tmp_path / "c.yaml").write_text("extends: [a.yaml, b.yaml]\n")
    assert load_yaml_config(tmp_path / "c.yaml") == {"seed": 2, "logging_steps": 3}


@pytest.mark.parametrize("text, where", [
    ("learning_rate: 1.0e-5\nnum_epochs: 3\n", "cfg.yaml: unknown option(s) ['num_epochs']"),
    ("extends: base.yaml\n", "base.yaml: unknown option(s) ['warmup']"),
    ("by_stage:\n  npo: {betta: 1}\n", "cfg.yaml by_stage 'npo': unknown option(s) ['betta']"),
    ("cutoff_len: many\n", "cfg.yaml: option cutoff_len"),
    ("bf16: maybe\n", "cfg.yaml: option bf16"),
    ("by_stage:\n  npo: {stage: ga}\n", "cannot set stage"),
    ("extends: cfg.yaml\n", "extends itself"),
])
def test_config_errors_name_the_file_and_key(tmp_path, text, where):
    (tmp_path / "base.yaml").write_text("warmup: 3\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError) as info:
        _parse("--config", str(cfg))
    assert where in str(info.value)


def test_unknown_flag_exits():
    with pytest.raises(SystemExit):
        _parse("--learning_rat", "1e-5")


def test_bool_flags_and_auto(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("bf16: true\nplot_loss: no\n")
    args = _parse("--config", str(cfg))
    assert args.bf16 is True and args.plot_loss is False and args.precision_note == "set explicitly"
    auto = _parse("--config", str(cfg), "--bf16", "auto", "--plot_loss")
    assert auto.plot_loss is True and auto.precision_note != "set explicitly"  # auto: resolved for this machine
    assert load_yaml_config(cfg)["bf16"] is True


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_parses_for_its_stages(path):
    from RS.stages import STAGES

    own = load_yaml_config(path).get("stage")
    if own is None:  # a shared layer (model/, smollm2/baseline.yaml): only extended
        return
    for stage in [s for s in STAGES if s == own or s.startswith(f"{own}_")]:
        assert _parse("--stage", stage, "--config", str(path)).stage == stage


def test_no_two_shipped_configs_differ_by_one_key():
    raw = {p: yaml.safe_load(p.read_text()) or {} for p in _shipped()}
    for (a, da), (b, db) in itertools.combinations(raw.items(), 2):
        differing = [k for k in set(da) | set(db) if da.get(k) != db.get(k)]
        assert len(differing) > 1, f"{a.name} and {b.name} differ only in {differing}: compose them"
