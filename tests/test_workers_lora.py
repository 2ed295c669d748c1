"""LoRA ReBO (worker.actor.lora.rank > 0): two GRPO steps train the adapters only, the reference is the frozen base
(the actor's own module with the adapters off), the rollout engine and the checkpoint get peft's merged weights, the
HF rollout samples with the adapters on, and a resumed LoRA run matches a straight one."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.test_trainer_loop import fit, tiny_overrides
from tests.test_workers_forward import _rollout_batch
from verl.config import load_config
from verl.trainer.ray_trainer import RayPPOTrainer
from verl.utils.checkpoint import CheckpointManager
from verl.workers import fsdp_utils
from verl.workers.actor import batched_log_probs

REWARD = '''
def vowels(response, prompt, solution, **extra):
    return {"score": sum(c in "aeiou" for c in response) / max(1, len(response))}
'''
LORA = {"worker.actor.lora.rank": 4, "worker.actor.lora.alpha": 8, "worker.actor.optim.lr": 1e-2}


@pytest.fixture(scope="module")
def reward(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lora_reward") / "reward.py"
    path.write_text(REWARD)
    return f"{path}:vowels"


def _hf_name(peft_module_name: str) -> str:
    return peft_module_name.replace("_fsdp_wrapped_module.", "").removeprefix("base_model.model.") + ".weight"


def test_lora_grpo_trains_adapters_against_the_frozen_base(tiny_model_path, tmp_path, reward, shared_data):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    trainer = RayPPOTrainer(load_config(None, tiny_overrides(tiny_model_path, run, reward, **LORA)))
    try:
        worker = trainer.wg.worker
        actor = worker.actor
        assert worker.ref.module is actor.module  # the reference is not a second copy
        assert {n for n, p in actor.module.named_parameters() if p.requires_grad} and \
            all("lora_" in n for n, p in actor.module.named_parameters() if p.requires_grad)
        before = {k: v.clone() for k, v in fsdp_utils.full_state_dict(actor.module).items()}
        history = trainer.fit()
        after = fsdp_utils.full_state_dict(actor.module)

        # only the adapters moved (B starts at 0, so the first step's KL to the base is 0)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all("lora_" in k for k in changed) and any("lora_B" in k for k in changed)
        assert history[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-7) and history[1]["actor/kl_loss"] > 0

        # the reference's log-probs are the frozen base model's; the actor's (adapters on) are not
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        data = _rollout_batch(base.config.vocab_size)
        mask = data.batch["response_mask"].bool()
        expected = batched_log_probs(base, data, 4, torch.device("cpu"), 1.0)
        ref_lp = worker.ref.compute_log_probs(data)
        torch.testing.assert_close(ref_lp[mask], expected[mask], rtol=1e-5, atol=1e-5)
        actor_lp = actor.compute_log_probs(data)
        assert (actor_lp[mask] - expected[mask]).abs().max() > 1e-3

        # what reaches the engine: HF names, base + peft's delta for every adapted layer, the rest the base's
        merged = actor.rollout_state_dict("float32")
        base_sd = base.state_dict()
        assert set(merged) == set(base_sd)
        layers = {n: m for n, m in actor.inner.named_modules() if isinstance(m, LoraLayer)}
        assert len(layers) == 2 * 7  # all-linear: q, k, v, o, gate, up, down in each of the 2 layers
        with torch.no_grad():
            for name, layer in layers.items():
                key = _hf_name(name)
                torch.testing.assert_close(merged[key], base_sd[key] + layer.get_delta_weight("default"),
                                           rtol=0, atol=1e-6)
        for key in set(base_sd) - {_hf_name(n) for n in layers}:
            assert torch.equal(merged[key], base_sd[key]), key
        bf16 = actor.rollout_state_dict("bfloat16")
        assert all(v.dtype == torch.bfloat16 and torch.equal(v, merged[k].bfloat16()) for k, v in bf16.items())
        assert actor.rollout_state_dict()["lm_head.weight"].dtype == torch.float32  # auto = worker.actor.dtype

        # the HF rollout samples from the adapted policy: greedy tokens equal those of a plain model holding the
        # merged weights
        prompts = trainer.train_ds.batch([0, 1], trainer.tokenizer.pad_token_id)
        prompts.meta_info = {"do_sample": False, "max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0}
        out = trainer.wg.generate_sequences(prompts)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        plain.load_state_dict(merged)
        with torch.no_grad():
            gen = plain.generate(input_ids=prompts.batch["input_ids"], attention_mask=prompts.batch["attention_mask"],
                                 max_new_tokens=6, do_sample=False, pad_token_id=trainer.tokenizer.pad_token_id,
                                 eos_token_id=worker.rollout.eos)
        new = gen[:, prompts.batch["input_ids"].shape[1]:]
        n = new.shape[1]
        assert torch.equal(out.batch["responses"][:, :n][out.batch["response_mask"][:, :n].bool()],
                           new[out.batch["response_mask"][:, :n].bool()])
    finally:
        trainer.close()

    # the checkpoint: the merged HF model for the evaluator, and peft's adapter folder
    ckpt = CheckpointManager(run).latest()
    exported = AutoModelForCausalLM.from_pretrained(ckpt / "actor", dtype=torch.float32).state_dict()
    for key, value in merged.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                                        ckpt / "actor_adapter").merge_and_unload().state_dict()
    for key, value in merged.items():
        torch.testing.assert_close(adapted[key], value, rtol=0, atol=1e-6)


def test_lora_resume_matches_a_straight_run(tiny_model_path, tmp_path, reward, shared_data):
    """In bf16 compute (FSDP mixed precision: the adapters' inputs are cast back to bf16 after peft's cast)."""
    lora = {**LORA, "worker.actor.dtype": "bfloat16"}
    straight, _ = fit(tiny_overrides(tiny_model_path, tmp_path / "a", reward, **lora))
    run = tmp_path / "b"
    first, _ = fit(tiny_overrides(tiny_model_path, run, reward, **{**lora, "trainer.total_steps": 1,
                                                                   "trainer.keep_resume_state": "true"}))
    assert not (run / "checkpoints" / "global_step_1" / "actor_master").exists()  # the fp32 adapter suffices
    second, trainer = fit(tiny_overrides(tiny_model_path, run, reward, **lora))
    assert trainer.global_step == 2 and [m["step"] for m in second] == [2]
    for key in ("actor/loss", "actor/kl_loss", "actor/grad_norm", "reward/mean"):
        for s, r in zip(straight, first + second):
            assert r[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (key, s["step"])
    assert straight[1]["actor/kl_loss"] > 0


def test_reference_shares_the_actor_only_for_the_same_start_model(tiny_model_path, tmp_path):
    """A LoRA actor's reference is its own base only when worker.ref.model_path names the actor's start weights (a
    path spelled differently counts); the ablation's other reference is loaded as its own model."""
    from verl.workers.ref import same_model

    link = tmp_path / "link"
    link.symlink_to(tiny_model_path)
    assert same_model(tiny_model_path, tiny_model_path) and same_model(str(link), tiny_model_path + "/")
    other = tmp_path / "other"
    shutil.copytree(tiny_model_path, other)  # equal weights, another model folder: loaded as its own reference
    assert not same_model(tiny_model_path, str(other)) and not same_model(None, tiny_model_path)
    cfg = load_config(None, tiny_overrides(tiny_model_path, tmp_path / "r", "forget", **LORA))
    assert cfg.worker.actor.lora.rank == 4 and cfg.worker.actor.lora.target_modules == "all-linear"
    assert same_model(cfg.worker.ref.model_path, cfg.worker.actor.model_path)  # ref defaults to the start path
