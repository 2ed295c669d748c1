"""verl.utils.registry: named tables filled by decorators, plug-ins loaded on a miss, and the three tables the RULE
plug-in fills (rewards, prompt formats, data-path schemes)."""

from __future__ import annotations

import pytest

from verl.trainer.dataset import DATA_SCHEMES, resolve_data_path
from verl.trainer.prompt_formats import PROMPT_FORMATS
from verl.utils.cli import MissingFileError
from verl.utils.registry import PLUGIN_GROUP, Registry
from verl.workers.reward.registry import REWARDS


def test_register_lookup_and_refused_duplicate():
    table: Registry[int] = Registry("thing")

    @table.register("one")
    def one():
        return 1

    assert table.lookup("one") is one and table.names() == ["one"]
    with pytest.raises(ValueError, match="thing 'one' is already registered"):
        table.add("one", one)


def test_an_unknown_name_lists_the_known_ones_and_where_plugins_come_from():
    table: Registry[int] = Registry("thing")
    table.add("a", 1)
    with pytest.raises(ValueError, match=rf"unknown thing 'b'; choose one of \['a'\] .*{PLUGIN_GROUP}"):
        table.lookup("b")


def test_the_rule_plugin_fills_the_library_tables_by_entry_point():
    """Nothing in the library imports the plug-in: its names appear once a lookup loads the entry points."""
    assert {"rwku", "muse"} <= set(DATA_SCHEMES.names())
    assert {"chat", "rwku", "muse"} <= set(PROMPT_FORMATS.names())
    assert "forget_two_stage_abs_target" in REWARDS.names()


def test_data_path_schemes(shared_data, tmp_path):
    path = resolve_data_path("rwku:1_Stephen_King:rl_rejection_eval_target")
    assert path.name == "rl_rejection_eval_target.json" and path.is_file()
    with pytest.raises(ValueError, match="rwku:<target>:<stem>"):
        resolve_data_path("rwku:1_Stephen_King")
    assert resolve_data_path("muse:knowmem/train_qa_icl", str(shared_data)).name == "train_qa_icl.json"
    plain = tmp_path / "rows.json"
    plain.write_text("[]")
    assert resolve_data_path(str(plain)) == plain
    with pytest.raises(MissingFileError, match="'nope' is no data-path scheme either"):
        resolve_data_path("nope:rows.json")
