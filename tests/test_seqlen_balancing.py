"""trainer.balance_batch: the release's reordering of each step's responses before the updates (Karmarkar-Karp
equal-size partitions by token count), the micro-batches it makes, and GRPO advantages that travel with their rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl import core_algos
from verl.protocol import DataProto
from verl.trainer.ray_trainer import balance_batch
from verl.trainer.seqlen_balancing import balanced_order, balanced_partitions

# 4 prompts x n=2 samples, interleaved as the trainer repeats them: rows 2i and 2i+1 share prompt i
LENGTHS = [10, 3, 7, 7, 2, 9, 4, 6]
UIDS = ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]


def test_partitions_by_hand():
    """By hand, as the release computes them. Sorted (length, row): (2,4) (3,1) (4,6) (6,7) (7,2) (7,3) (9,5) (10,0);
    pairs of consecutive ones start 4 two-set solutions, each set order descending:
      A = [{1:3}, {4:2}] spread 1, B = [{7:6}, {6:4}] spread 2, C = [{3:7}, {2:7}] spread 0 (equal sums: the larger
      item list first), D = [{0:10}, {5:9}] spread 1.
    Largest spread first (ties: the larger first set): B, D, A, C.
      B+D: {7,5}=15, {6,0}=14 (spread 1); then it and A (spread 1, first set 15 > 3): {7,5,4}=17, {6,0,1}=17;
      then with C: {7,5,4,2}=24, {6,0,1,3}=24 -> partitions [2,4,5,7], [0,1,3,6]."""
    assert balanced_partitions(LENGTHS, 2) == [[2, 4, 5, 7], [0, 1, 3, 6]]
    assert balanced_order(LENGTHS, 2) == [2, 4, 5, 7, 0, 1, 3, 6]
    assert balanced_partitions(LENGTHS, 1) == [list(range(8))]  # one worker: the release's order is unchanged
    assert sorted(sum(balanced_partitions(LENGTHS, 4), [])) == list(range(8))
    with pytest.raises(ValueError, match="equal size"):
        balanced_partitions(LENGTHS, 3)


def _batch() -> DataProto:
    mask = torch.zeros(8, 12, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.3, 0.9, 0.0, 0.0])
    rewards = torch.zeros(8, 4)
    rewards[:, -1] = scores
    rmask = torch.ones(8, 4)
    data = DataProto.from_dict({"attention_mask": mask, "token_level_rewards": rewards, "response_mask": rmask,
                                "row": torch.arange(8)},
                               non_tensors={"uid": np.array(UIDS, dtype=object)})
    adv, _ = core_algos.compute_advantage("grpo", rewards, rmask, index=data.non_tensor_batch["uid"])
    data.batch["advantages"] = adv
    return data


def test_micro_batches_mix_prompts_and_advantages_travel_with_their_rows():
    data = _batch()
    out = balance_batch(data, 2)
    assert out.batch["row"].tolist() == [2, 4, 5, 7, 0, 1, 3, 6]
    # worker 0 gets the first partition; its micro-batches of 2 mix prompts (unbalanced: one prompt per micro-batch)
    micro = [list(out.non_tensor_batch["uid"][i:i + 2]) for i in range(0, 8, 2)]
    assert micro == [["p1", "p2"], ["p2", "p3"], ["p0", "p0"], ["p1", "p3"]]
    assert [list(data.non_tensor_batch["uid"][i:i + 2]) for i in range(0, 8, 2)] == [["p0", "p0"], ["p1", "p1"],
                                                                                    ["p2", "p2"], ["p3", "p3"]]
    # every column moved with its row; GRPO on the reordered rows gives the same advantages
    torch.testing.assert_close(out.batch["advantages"], data.batch["advantages"][out.batch["row"]])
    again, _ = core_algos.compute_advantage("grpo", out.batch["token_level_rewards"], out.batch["response_mask"],
                                            index=out.non_tensor_batch["uid"])
    torch.testing.assert_close(again, out.batch["advantages"])
    sums = out.batch["attention_mask"].sum(-1)
    assert int(sums[:4].sum()) == int(sums[4:].sum()) == 24


def test_trainer_updates_on_the_balanced_order(tiny_model_path, tmp_path, shared_data):
    """One step with trainer.balance_batch (2 partitions on one worker): the reference log-probs see the rollout
    order, the actor update the release's order of the same rows, with their advantages."""
    from tests.test_trainer_loop import REWARD_SRC, tiny_overrides
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer

    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    ov = tiny_overrides(tiny_model_path, tmp_path / "run", f"{reward}:letter_e",
                        **{"trainer.total_steps": 1, "trainer.balance_batch": "true",
                           "trainer.balance_batch_partitions": 2, "worker.rollout.n": 4})
    trainer = RayPPOTrainer(load_config(None, ov))
    seen = {}
    wg = trainer.wg
    try:
        for name in ("compute_ref_log_probs", "update_actor"):
            def spy(data, *args, _name=name, _real=getattr(wg, name)):
                seen[_name] = data
                return _real(data, *args)
            setattr(wg, name, spy)
        trainer.fit()
    finally:
        trainer.close()
    rollout, update = seen["compute_ref_log_probs"], seen["update_actor"]
    order = balanced_order(rollout.batch["attention_mask"].sum(-1).tolist(), 2)
    assert list(update.non_tensor_batch["uid"]) == list(rollout.non_tensor_batch["uid"][order])
    assert torch.equal(update.batch["input_ids"], rollout.batch["input_ids"][order])
    adv, _ = core_algos.compute_advantage("grpo", update.batch["token_level_rewards"], update.batch["response_mask"],
                                          index=update.non_tensor_batch["uid"])
    torch.testing.assert_close(update.batch["advantages"], adv)


def test_partition_count_is_checked_at_load():
    from verl.config import load_config
    from verl.utils.cli import ConfigError

    base = ["data.rollout_batch_size=4", "worker.actor.global_batch_size=4", "worker.rollout.n=2",
            "trainer.balance_batch=true"]
    assert load_config(None, base).trainer.balance_batch_partitions == 0  # 0: one per worker, as the release
    assert load_config(None, base + ["trainer.balance_batch_partitions=4"]).trainer.balance_batch_partitions == 4
    with pytest.raises(ConfigError, match="balance_batch_partitions=3 must be a multiple"):
        load_config(None, base + ["trainer.balance_batch_partitions=3"])
