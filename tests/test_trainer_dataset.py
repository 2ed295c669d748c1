"""ReBO rows (verl/trainer/dataset.py): RL files validated naming the file, record and key; the row order
(StatefulSampler): the project's numpy order and the release's torch order."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from tests.conftest import REPO
from verl.trainer.dataset import StatefulSampler, release_order
from verl.utils.cli import UserError
from verl.utils.records import DataValidationError

RELEASE_FIRST = [342, 184, 916, 169, 710, 35, 520, 339]  # torch.randperm(1200) under manual_seed(42), by hand


def _release_batches(n: int, batch: int, seed: int, epochs: int) -> list[list[int]]:
    """The release's dataloader: RandomSampler with a torch.Generator seeded once, BatchSampler with drop_last."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    batches = BatchSampler(RandomSampler(range(n), generator=gen), batch, drop_last=True)
    return [b for _ in range(epochs) for b in batches]


def test_release_sampler_draws_the_releases_batches_over_epochs():
    s = StatefulSampler(1200, 32, True, 42, sampler="release")
    assert s.batches_per_epoch == 37  # 1,184 of 1,200 rows: the tail is dropped
    ours = [s.next_indices() for _ in range(2 * 37)]
    assert ours == _release_batches(1200, 32, 42, 2)
    assert ours[0][:8] == RELEASE_FIRST and release_order(1200, 42, 0)[:8].tolist() == RELEASE_FIRST
    # the paper's 20 steps see these 640 prompts; the project's order (trainer.seed 1) another subset
    project = StatefulSampler(1200, 32, True, 1)
    assert {i for _ in range(20) for i in project.next_indices()} != {i for b in ours[:20] for i in b}


def test_release_sampler_resumes_mid_epoch():
    s = StatefulSampler(100, 8, True, 42, sampler="release")
    for _ in range(15):  # into the second epoch (12 batches each)
        s.next_indices()
    resumed = StatefulSampler(100, 8, True, 42, sampler="release")
    resumed.load_state_dict(s.state_dict())
    assert resumed.next_indices() == s.next_indices() == _release_batches(100, 8, 42, 2)[15]


def test_release_sampler_refuses_stratified_batches():
    with pytest.raises(ValueError, match="cannot stratify"):
        StatefulSampler(8, 4, True, 42, labels=["<reject>", "<normal>"] * 4, sampler="release")
    with pytest.raises(ValueError, match="sampler"):
        StatefulSampler(8, 4, True, 42, sampler="torch")


def test_paper_configs_ask_for_the_releases_order_and_cpu_configs_keep_theirs():
    from verl.config import load_config
    from verl.utils.cli import ConfigError

    for name in ("grpo_rj_rl", "ppo_rj_rl", "rpp_rj_rl", "grpo_rj_rl_muse"):
        d = load_config(str(REPO / f"examples/{name}.yaml")).data
        assert (d.sampler, d.seed) == ("release", 42), name
    for name in ("grpo_rj_rl", "ppo_rj_rl", "rpp_rj_rl"):
        d = load_config(str(REPO / f"examples/{name}.yaml")).data
        assert d.user_turn == "verbatim", name
        cpu = load_config(str(REPO / f"examples/{name}_cpu.yaml"))
        assert (cpu.data.sampler, cpu.data.seed, cpu.data.user_turn) == ("project", None, "template"), name
        assert cpu.trainer.total_epochs is None
    muse = load_config(str(REPO / "examples/grpo_rj_rl_muse.yaml"))
    assert muse.trainer.total_epochs == 1  # the release's MUSE run: one pass over the rows
    with pytest.raises(ConfigError, match="stratify_labels"):
        load_config(str(REPO / "examples/grpo_rj_rl.yaml"), ["data.stratify_labels=true"])


def test_trainer_epoch_budget_and_release_order(tiny_model_path, tmp_path):
    """trainer.total_epochs sets the step budget from the rows read; data.sampler/seed pick the first batch."""
    import json

    from tests.test_trainer_loop import tiny_overrides
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer

    rows = [{"prompt": f"Question {i}?", "solution": ["<normal>", "answer"]} for i in range(7)]
    (tmp_path / "rl.json").write_text(json.dumps(rows))
    ov = tiny_overrides(tiny_model_path, tmp_path / "run", "forget_two_stage_abs",
                        **{"data.train_files": str(tmp_path / "rl.json"), "trainer.total_epochs": 2,
                           "data.sampler": "release", "data.seed": 42})
    trainer = RayPPOTrainer(load_config(None, ov))
    try:
        assert trainer.config.trainer.total_steps == 6  # 2 epochs x 3 whole batches of 2 (7 rows, tail dropped)
        assert trainer.sampler.next_indices() == _release_batches(7, 2, 42, 1)[0]
    finally:
        trainer.close()


def _rl_file(tmp_path, rows, name="rows.json", raw: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(raw if raw is not None else json.dumps(rows), encoding="utf-8")
    return path


GOOD = {"prompt": "Who wrote Carrie?", "solution": ["<reject>", "I am not sure.", "Stephen King"]}


@pytest.mark.parametrize("rows, raw, expected", [
    ([GOOD, {"prompt": "Q?"}], None, r"record 1: missing key 'solution'"),
    ([GOOD, {"prompt": 17, "solution": ["<normal>", "a"]}], None,
     r"record 1: key 'prompt' should be a non-empty string, got int"),
    ([GOOD, {"prompt": "Q?", "solution": ["<maybe>", "a"]}], None, r"record 1: key 'solution' must start with"),
    (None, json.dumps([GOOD, GOOD])[:-20], r"invalid JSON at line 1"),
    ([], None, r"has no records"),
])
def test_rl_dataset_names_file_record_and_key(tmp_path, rows, raw, expected):
    from verl.trainer.dataset import RLDataset

    path = _rl_file(tmp_path, rows, raw=raw)
    with pytest.raises(DataValidationError, match=expected) as info:
        RLDataset(str(path), tokenizer=None, max_prompt_length=64)  # fails before any tokenization
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)


def test_rl_dataset_jsonl_bad_line_names_the_line(tmp_path):
    from verl.trainer.dataset import RLDataset

    path = _rl_file(tmp_path, None, "rows.jsonl", raw=json.dumps(GOOD) + "\n{\"prompt\": \"Q\n")
    with pytest.raises(DataValidationError, match=r"rows.jsonl: invalid JSON at line 2"):
        RLDataset(str(path), tokenizer=None, max_prompt_length=64)
