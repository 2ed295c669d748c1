"""Trainer configuration (values checked at load), data loading and checkpoint bookkeeping (no model needed)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from verl.config import load_config, redact
from verl.trainer.dataset import RLDataset, StatefulSampler
from verl.trainer.main import parse_args
from verl.utils.checkpoint import CheckpointManager
from verl.utils.cli import ConfigError


def test_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, ["trainer.total_stepz=3"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("worker:\n  actor:\n    lrr: 1.0\n")
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(str(cfg_file))


def test_examples_load_and_defaults_resolve():
    cfg = load_config("examples/grpo_rj_rl.yaml")
    assert cfg.worker.rollout.n == 8 and cfg.data.rollout_batch_size == 32 and cfg.worker.actor.optim.lr == 2e-6
    assert cfg.worker.ref.model_path == cfg.worker.actor.model_path  # reference = the RS start checkpoint
    assert cfg.algorithm.kl_penalty == "low_var_kl" and cfg.worker.reward.reward_fn == "forget_two_stage_abs_target"
    assert load_config("examples/ppo_rj_rl.yaml").use_critic
    assert load_config("examples/rpp_rj_rl.yaml").algorithm.adv_estimator == "reinforce_plus_plus"
    assert load_config("examples/grpo_rj_rl_muse.yaml").worker.reward.reward_fn == "forget_two_stage_abs"
    cpu = load_config("examples/grpo_rj_rl_cpu.yaml", ["worker.ref.model_path=/orig"])
    assert cpu.trainer.backend == "local" and cpu.worker.ref.model_path == "/orig"
    with pytest.raises(ValueError, match="divisible"):
        load_config("examples/grpo_rj_rl_cpu.yaml", ["trainer.n_workers=3"])
    assert parse_args(["config=x.yaml", "a.b=1"]) == ("x.yaml", ["a.b=1"])


def test_redact_keeps_ordinary_keys():
    out = redact({"prompt_key": "prompt", "wandb_api_key": "s3cret", "nested": [{"hf_token": "t"}]})
    assert out == {"prompt_key": "prompt", "wandb_api_key": "<redacted>", "nested": [{"hf_token": "<redacted>"}]}


def test_dataset_filters_long_prompts_and_keeps_extras(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = [{"prompt": "Who wrote Carrie?", "solution": ["<reject>", "I'm not sure.", "Stephen King"], "mode": "qa"},
            {"prompt": "word " * 300, "solution": ["<normal>", "x"], "mode": "fb"},
            {"prompt": "Who directed Jaws?", "solution": ["<normal>", "Steven Spielberg"], "mode": "qa"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = RLDataset(str(path), tok, max_prompt_length=64)
    assert len(ds) == 2 and ds.n_filtered == 1
    batch = ds.batch([0, 1], tok.pad_token_id)
    assert batch.batch["input_ids"].shape[0] == 2
    assert batch.batch["attention_mask"][:, -1].all()  # left padding
    assert list(batch.non_tensor_batch["label"]) == ["<reject>", "<normal>"]
    assert list(batch.non_tensor_batch["extra.mode"]) == ["qa", "qa"]
    with pytest.raises(ValueError, match="no rows left"):
        RLDataset(str(path), tok, max_prompt_length=2)


def test_sampler_resumes_exactly():
    a = StatefulSampler(10, 4, shuffle=True, seed=3)
    seq = [a.next_indices() for _ in range(5)]
    b = StatefulSampler(10, 4, shuffle=True, seed=3)
    b.next_indices()
    b.next_indices()
    c = StatefulSampler(10, 4, shuffle=True, seed=3)
    c.load_state_dict(b.state_dict())
    assert [c.next_indices() for _ in range(3)] == seq[2:]


def test_stratified_sampler_keeps_the_label_share_in_every_batch():
    labels = ["<reject>"] * 6 + ["<normal>"] * 6
    s = StatefulSampler(12, 4, shuffle=True, seed=1, labels=labels)
    epoch = [s.next_indices() for _ in range(3)]
    assert all(sum(labels[i] == "<reject>" for i in b) == 2 for b in epoch)  # 2 + 2 of 4, every batch
    assert sorted(i for b in epoch for i in b) == list(range(12))  # each row once an epoch
    assert s.next_indices() != epoch[0]  # the next epoch reshuffles within each label
    resumed = StatefulSampler(12, 4, shuffle=True, seed=1, labels=labels)
    resumed.load_state_dict({"epoch": 0, "pos": 4})
    assert [resumed.next_indices() for _ in range(2)] == epoch[1:]
    # 3 of 10 rows are "a": a batch of 5 holds 1 or 2 of them (1.5 expected), never 0 or 3+
    uneven = ["a"] * 3 + ["b"] * 7
    u = StatefulSampler(10, 5, shuffle=True, seed=0, labels=uneven)
    assert all(sum(uneven[i] == "a" for i in u.next_indices()) in (1, 2) for _ in range(6))
    # without labels the order is the plain seeded permutation
    plain = list(np.random.default_rng(3).permutation(10)[:4])
    assert StatefulSampler(10, 4, shuffle=True, seed=3).next_indices() == plain
    with pytest.raises(ValueError, match="3 labels for 10 rows"):
        StatefulSampler(10, 4, shuffle=True, seed=0, labels=["a"] * 3)


def test_checkpoint_manager_ignores_incomplete(tmp_path):
    mgr = CheckpointManager(tmp_path, save_limit=2)
    for step in (1, 2, 3):
        mgr.commit(mgr.begin(step), step, {"step": step})
    assert [s for s, _ in mgr.complete()] == [2, 3]  # save limit
    (mgr.root / "global_step_4").mkdir()  # killed before the marker
    (mgr.root / ".tmp-global_step_5").mkdir()
    assert mgr.latest().name == "global_step_3"
    assert mgr.load_state(mgr.latest())["step"] == 3
    with pytest.raises(FileNotFoundError):
        mgr.load_state(mgr.root / "global_step_4")
    mgr.begin(6)
    assert not (mgr.root / "global_step_4").exists() and not (mgr.root / ".tmp-global_step_5").exists()


def test_reward_kwargs_from_yaml_and_dotlist(tmp_path):
    cfg = load_config(None, ["worker.reward.kwargs.refusal_mode=official", "worker.reward.kwargs.tau=0.4"])
    assert cfg.worker.reward.kwargs == {"refusal_mode": "official", "tau": 0.4}
    f = tmp_path / "r.yaml"
    f.write_text("worker:\n  reward:\n    reward_fn: forget_abs\n    kwargs: {refusal_mode: official}\n")
    assert load_config(str(f)).worker.reward.kwargs == {"refusal_mode": "official"}
    with pytest.raises(ValueError, match="refusal_mdoe"):
        load_config(None, ["worker.reward.kwargs.refusal_mdoe=official"])
    with pytest.raises(ValueError, match="tau"):  # forget_abs has no tau
        load_config(str(f), ["worker.reward.kwargs.tau=0.3"])


def test_paper_configs_select_the_release_reward():
    for f in ("grpo_rj_rl", "grpo_rj_rl_muse", "ppo_rj_rl", "rpp_rj_rl"):
        cfg = load_config(f"examples/{f}.yaml")
        assert cfg.worker.reward.kwargs.get("refusal_mode") == "official", f
        assert cfg.worker.actor.micro_batch_size_per_device_for_update == 8, f


def test_newline_stop_ids_cut_the_response_mask(tiny_model_path):
    import torch
    from transformers import AutoTokenizer

    from verl.config import RolloutConfig
    from verl.workers.rollout import eos_ids, response_mask_from, stop_ids

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert stop_ids(tok, RolloutConfig()) == eos_ids(tok)  # off by default
    ids = stop_ids(tok, RolloutConfig(stop_at_newline=True))
    nl = tok("a\nb", add_special_tokens=False)["input_ids"]
    nl_id = next(i for i in nl if "\n" in tok.decode([i]))
    assert nl_id in ids and set(eos_ids(tok)) <= set(ids)
    word = tok("Harry", add_special_tokens=False)["input_ids"][0]
    mask = response_mask_from(torch.tensor([[word, nl_id, word, word]]), ids)
    assert mask.tolist() == [[1, 1, 0, 0]]  # up to and including the newline
    assert load_config("examples/grpo_rj_rl_muse.yaml").worker.rollout.stop_at_newline


@pytest.mark.parametrize("override, key", [
    ("data.rollout_batch_size=-2", "data.rollout_batch_size=-2"),
    ("data.rollout_batch_size=0", "data.rollout_batch_size=0"),
    ("worker.actor.micro_batch_size_per_device_for_update=0", "micro_batch_size_per_device_for_update=0"),
    ("worker.actor.global_batch_size=0", "worker.actor.global_batch_size=0"),
    ("trainer.n_workers=0", "trainer.n_workers=0"),
    ("trainer.total_steps=-1", "trainer.total_steps=-1"),
    ("data.max_response_length=0", "data.max_response_length=0"),
    ("worker.rollout.temperature=0", "worker.rollout.temperature=0.0"),
])
def test_config_values_are_checked(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must be"):
        load_config(None, [override])


def test_grpo_with_one_rollout_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="verl.config"):
        load_config(None, ["worker.rollout.n=1", "worker.actor.micro_batch_size_per_device_for_update=1"])
    assert "worker.rollout.n=1 with algorithm.adv_estimator=grpo" in caplog.text
