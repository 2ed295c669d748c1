"""verl/pipeline/resources.py: model shapes offline, ReBO and RS.train plans from resolved configs, the disk plan."""

import json
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from verl.pipeline import resources as R
from verl.utils import memory as mem

N = 8_030_261_248
LLAMA3 = "meta-llama/Meta-Llama-3-8B-Instruct"


def test_llama3_8b_counted_on_the_meta_device():
    shape = R.model_shape(LLAMA3)
    assert shape.n_params == N and "meta-device count" in shape.source
    assert (shape.n_layers, shape.hidden, shape.vocab, shape.n_kv_heads, shape.tied) == (32, 4096, 128256, 8, False)


@pytest.mark.parametrize("model,params", [
    ("meta-llama/Llama-3.1-8B-Instruct", N), ("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688),
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512), ("muse-bench/MUSE-Books_target", 6_738_415_616),
    ("smollm2-135m-instruct", 134_515_008),
])
def test_table_of_the_papers_models(model, params):
    assert R.model_shape(model, exact=False).n_params == params


def test_local_folder_config_and_unknown_hub_id(tmp_path, tiny_model_path):
    shape = R.model_shape(tiny_model_path)
    cfg = json.loads((tmp_path.parent / tiny_model_path / "config.json").read_text())
    assert shape.n_layers == cfg["num_hidden_layers"] and shape.hidden == cfg["hidden_size"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    assert R.model_shape("nobody/no-such-model-anywhere") is None


def _rebo_cfg(algo: str, world: int, *overrides: str) -> dict:
    from verl.config import load_config

    return load_config(str(REPO / f"examples/{algo}_rj_rl.yaml"), [f"trainer.n_workers={world}", *overrides]).to_dict()


def _res(world: int, gb: float = 80, repo=REPO) -> R.Resources:
    return R.Resources(LLAMA3, world, int(gb * mem.GB), "test", repo)


def test_rebo_memory_from_the_paper_config():
    m = R.rebo_memory(_rebo_cfg("grpo", 4), 4, "vllm", True)
    assert (m.prompt_len, m.response_len, m.gen_rows) == (512, 1024, 256)
    assert (m.micro_experience, m.actor.micro_update) == (16, 8)
    assert m.ref.enabled and not m.critic.enabled and m.chunk_tokens == 512 and m.gpu_memory_utilization == 0.5
    ppo = R.rebo_memory(_rebo_cfg("ppo", 4), 4, "vllm", True)
    assert ppo.critic.enabled and ppo.critic.micro_update == 4


def test_paper_grpo_on_four_gpus_fits_as_configured_with_a_sized_vllm_share():
    sm = _res(4).fit_rebo("rule_grpo", _rebo_cfg("grpo", 4), {})
    assert sm.fits and sm.choice.knobs == [] and sm.configured.fits
    assert sm.overrides == {"worker.rollout.gpu_memory_utilization": 0.53}
    assert sm.choice.plan.peak >= 0.89 * 80 * mem.GB  # the engine takes what the trainer and the margin leave


@pytest.mark.parametrize("algo,world,chosen", [
    ("ppo", 4, {"worker.actor.offload_optimizer": True, "worker.critic.offload_optimizer": True}),
    ("grpo", 2, {"worker.actor.offload_params": True, "worker.ref.offload_params": True}),
    ("grpo", 1, {"worker.actor.offload_params": True, "worker.ref.offload_params": True}),
    ("ppo", 2, {"worker.actor.offload_params": True, "worker.critic.offload_params": True,
                "worker.ref.offload_params": True}),
    ("rpp", 2, {"worker.actor.offload_params": True, "worker.ref.offload_params": True}),
])
def test_the_plan_chooses_offload_to_fit(algo, world, chosen):
    sm = _res(world).fit_rebo(f"rule_{algo}", _rebo_cfg(algo, world), {})
    assert sm.fits and not sm.configured.fits
    assert {k: v for k, v in sm.overrides.items() if "offload" in k} == chosen
    assert sm.choice.plan.peak <= 0.9 * 80 * mem.GB


def test_a_user_setting_wins_and_is_refused_when_it_cannot_fit():
    user = {"worker.actor.offload_params": False, "worker.ref.offload_params": False}
    sm = _res(1).fit_rebo("rule_grpo", _rebo_cfg("grpo", 1), user)
    assert not sm.fits and "worker.actor.offload_params" not in sm.overrides
    assert "(you set worker.actor.offload_params=false" in sm.message
    kept = _res(1).fit_rebo("rule_grpo", _rebo_cfg("grpo", 1, "worker.rollout.gpu_memory_utilization=0.3"),
                            {"worker.rollout.gpu_memory_utilization": 0.3})
    assert "worker.rollout.gpu_memory_utilization" not in kept.overrides  # the user's share is kept


def test_ppo_on_one_24gb_gpu_cannot_fit_and_says_what_would():
    sm = _res(1, 24).fit_rebo("rule_ppo", _rebo_cfg("ppo", 1), {})
    assert not sm.fits
    assert sm.message.startswith("rule_ppo (ReBO) does not fit 1 x 24.0 GB GPU(s) (21.6 GB usable")
    assert "worker.rollout.max_num_seqs=" in sm.message and "GPUs of >= " in sm.message


def _rs_cfg(world: int, stage="rs") -> dict:
    from RS.args import args_to_dict, parse_args

    return args_to_dict(parse_args(["--config", str(REPO / f"RS/configs/{stage}_llama3_8b.yaml"), "--target", "1",
                                    "--output_dir", "/tmp/unused"]))


def test_rs_fits_four_gpus_and_needs_offload_or_lora_on_fewer(tmp_path):
    assert _res(4).fit_sft("rs", "rs", _rs_cfg(4), {}).choice.knobs == []
    no_offload = tmp_path / "repo"
    (no_offload / "RS/configs").mkdir(parents=True)
    sm = _res(2, repo=no_offload).fit_sft("rs", "rs", _rs_cfg(2), {})
    assert sm.fits and sm.overrides.get("finetuning_type") == "lora"
    (no_offload / R.RS_OFFLOAD_CONFIG).write_text("distributed_type: FSDP\n")
    sm = _res(1, repo=no_offload).fit_sft("rs", "rs", _rs_cfg(1), {})
    assert sm.fits and sm.overrides.get("accelerate_config") == R.RS_OFFLOAD_CONFIG
    assert "finetuning_type" not in sm.overrides
    user = _res(1, repo=tmp_path).fit_sft("rs", "rs", _rs_cfg(1), {"finetuning_type": "full"})
    assert not user.fits and "is not in this checkout" in user.message


def _step(name, kind, config, done=False):
    return SimpleNamespace(name=name, kind=kind, config=config, done=done)


def test_disk_plan_by_hand(monkeypatch):
    shape = R.model_shape(LLAMA3, exact=False)
    rs = _rs_cfg(4)  # 3 epochs, --bf16: each epoch checkpoint and the final model in bf16, all kept
    grpo = _rebo_cfg("grpo", 4)  # 20 steps, save_freq 5, save_limit 4: 4 saves, 4 kept
    from verl.trainer.checkpoint import checkpoints_peak_bytes

    expect_rebo = checkpoints_peak_bytes(4, "latest", n_params=N, dtype="bfloat16", lora_params=0, critic_params=0)
    assert expect_rebo == 2 * (2 * N + 8 * N + 4 * N) + 3 * 2 * N  # two with resume state, three trimmed
    steps = [_step("rs", "rs", rs), _step("rule_grpo", "rebo", grpo), _step("eval:rs", "eval", {}),
             _step("ga", "baseline", rs, done=True)]
    monkeypatch.setattr(R, "free_bytes", lambda _: (5 * 10**11, "/data"))
    plan = R.disk_plan([("1_Stephen_King", steps), ("2_Confucius", steps)], shape, "log")
    from RS.checkpoint import METADATA_BYTES

    per_target = 4 * (2 * N + METADATA_BYTES) + expect_rebo + R.EVAL_OUTPUT_BYTES
    assert plan.need == 2 * per_target and not plan.fits
    refusal = plan.refusal("log")
    assert refusal.startswith("disk: the stages still to run write") and "/data has 500.0 GB free" in refusal
    assert plan.lines[1].strip() == "rs 64.4 GB (3 epochs, save_total_limit 0, 16.1 GB each in bfloat16)"
