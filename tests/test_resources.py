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

    return args_to_dict(parse_args(["--config", str(REPO / f"RS/configs/llama3_8b/{stage}.yaml"), "--target", "1",
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


def _peak_after(d: R.StageDisk) -> tuple[int, int]:
    return d.peak, d.after


def test_disk_plan_by_hand(monkeypatch):
    from RS.checkpoint import METADATA_BYTES

    shape = R.model_shape(LLAMA3, exact=False)
    rs = _rs_cfg(4)  # 3 epochs, --bf16: each epoch checkpoint and the final model in bf16, all kept
    grpo = _rebo_cfg("grpo", 4)  # 20 steps, save_freq 5, save_limit 4: 4 saves, 4 kept
    full, trimmed = 2 * N + 4 * N + 8 * N, 2 * N  # bf16 export + fp32 master + Adam moments; the export alone
    # saves 1-3 with resume state: while save 3 is written, save 1 (trimmed) and save 2 (full) are on disk; save 4
    # (the last) is written without it; after the run four trimmed checkpoints stay
    assert _peak_after(R.rebo_disk(grpo, shape)) == (trimmed + 2 * full, 4 * trimmed)
    steps = [_step("rs", "rs", rs), _step("rule_grpo", "rebo", grpo), _step("eval:rs", "eval", {}),
             _step("ga", "baseline", rs, done=True)]
    monkeypatch.setattr(R, "free_bytes", lambda _: (4 * 10**11, "/data"))
    plan = R.disk_plan([("1_Stephen_King", steps), ("2_Confucius", steps)], shape, "log")
    stays = 4 * (2 * N + METADATA_BYTES) + 4 * trimmed + R.EVAL_OUTPUT_BYTES
    assert plan.need == 2 * stays + (trimmed + 2 * full - 4 * trimmed) and not plan.fits
    refusal = plan.refusal("log")
    assert refusal.startswith("disk: the stages still to run write") and "/data has 400.0 GB free" in refusal
    assert plan.lines[1].strip() == "rs 64.4 GB (3 epochs, save_total_limit 0, save_keep_epochs 2, 16.1 GB each in " \
                                    "bfloat16)"
    assert plan.lines[-1].startswith("  total: ") and "rule_grpo of 1_Stephen_King" in plan.lines[-1]


def test_disk_plan_of_the_paper_budget_keeps_what_the_pipeline_reads(monkeypatch):
    """RS: the epoch ReBO starts from (2) and the newest (3) beside the final model; ReBO: one checkpoint, its
    resume state dropped at the last step; on 10 targets run one after another only one transient is on disk."""
    from RS.args import args_to_dict, parse_args
    from RS.checkpoint import METADATA_BYTES

    shape = R.model_shape(LLAMA3, exact=False)
    rs = args_to_dict(parse_args(["--config", str(REPO / "RS/configs/llama3_8b/rs.yaml"), "--target", "1",
                                  "--output_dir", "/tmp/unused", "--save_total_limit", "1"]))
    grpo = _rebo_cfg("grpo", 4, "trainer.save_limit=1")
    each = 2 * N + METADATA_BYTES
    assert _peak_after(R.sft_disk(rs, shape)) == (3 * each, 3 * each)  # epoch 1 removed once epoch 2 is written
    full, trimmed = 14 * N, 2 * N
    assert _peak_after(R.rebo_disk(grpo, shape)) == (2 * full, trimmed)
    steps = [_step("rs", "rs", rs), _step("rule_grpo", "rebo", grpo), _step("eval", "eval", {})]
    monkeypatch.setattr(R, "free_bytes", lambda _: (10**12, "/data"))
    plan = R.disk_plan([(f"t{i}", steps) for i in range(10)], shape, "log")
    assert plan.need == 10 * (3 * each + trimmed + R.EVAL_OUTPUT_BYTES) + (2 * full - trimmed)
    assert round(plan.need / mem.GB, 1) == 852.4
    kept = _rebo_cfg("grpo", 4, "trainer.save_limit=1", "trainer.keep_resume_state=true")
    assert _peak_after(R.rebo_disk(kept, shape)) == (2 * full, full)


def test_rs_without_a_cutoff_is_planned_at_the_muse_row_bound():
    """cutoff_len 0 (the release's MUSE RS) taken as tokens per row would plan no logits and no activations."""
    from RS.args import args_to_dict, parse_args

    muse = args_to_dict(parse_args(["--config", str(REPO / "RS/configs/muse_books/rs.yaml"), "--output_dir", "/tmp/x"]))
    assert muse["cutoff_len"] == 0
    m = R.sft_memory(muse, 4, fsdp=True, offload=False)
    assert m.tokens == R.UNCUT_ROW_TOKENS == 1024
    res = R.Resources("muse-bench/MUSE-Books_target", 4, 80 * mem.GB, "test", REPO)
    sm = res.fit_sft("rs", "rs", muse, {})
    assert sm.configured.column("logits") > 0 and sm.configured.column("activ") > 0
    assert any("cutoff_len 0" in n for n in sm.notes)
    cut = R.sft_memory({**muse, "cutoff_len": 640}, 4, fsdp=True, offload=False)
    assert cut.tokens == 640


def test_the_muse_rs_rows_fit_the_bound(tiny_model_path, shared_data, tmp_path):
    """The longest MUSE RS row in SmolLM2 tokens (the tiny model's tokenizer is the embedded model's), with room for
    a tokenizer that needs 1.5x as many tokens (Llama-2's, the MUSE target model's)."""
    from transformers import AutoTokenizer

    from RS.args import TrainArgs, validate_args
    from RS.datasets import build_data
    from RS.stages import STAGES

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.chat_template = None  # the MUSE target is a base model
    args = TrainArgs(dataset="muse_reject", data_dir=str(shared_data), output_dir=str(tmp_path), max_samples=0,
                     muse_icl="knowmem/forget_qa_icl", cutoff_len=0)
    validate_args(args)
    bundle = build_data(args, tok, STAGES["rt"], root=str(shared_data))
    longest = max(len(ex["input_ids"]) for ex in [*bundle.train, *(bundle.val or [])])
    assert 400 < longest <= 549 and 1.5 * longest < R.UNCUT_ROW_TOKENS
