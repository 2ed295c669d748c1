"""verl/utils/memory.py: byte counts by hand for Llama-3-8B's shapes, phases, the vLLM share, choosing knobs."""

import pytest

from verl.utils import memory as mem

N = 8_030_261_248  # Meta-Llama-3-8B(-Instruct)
LLAMA3_8B = mem.ModelShape("llama3-8b", N, n_layers=32, hidden=4096, intermediate=14336, vocab=128256, n_heads=32,
                           n_kv_heads=8, head_dim=128, tied=False)
CTX = 1 << 30


def test_llama3_8b_parameter_count_by_formula_and_shapes():
    assert mem.decoder_param_count(128256, 4096, 14336, 32, 32, 8) == N
    # embeddings + LM head + final norm; one decoder layer: q/o 4096x4096, k/v 4096x1024, 3 MLP 4096x14336, 2 norms
    assert LLAMA3_8B.root_params == 2 * 128256 * 4096 + 4096 == 1_050_677_248
    assert LLAMA3_8B.layer_params == 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096 == 218_112_000
    assert LLAMA3_8B.critic_params == N - 128256 * 4096 + 4096 + 1
    assert LLAMA3_8B.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    # LoRA r=64 on the 7 linear modules: 64 x (in + out) summed = 64 x 81,920 per layer
    assert LLAMA3_8B.lora_params(64) == 32 * 64 * 81_920 == 167_772_160
    assert LLAMA3_8B.lora_params(8, "q_proj,v_proj") == 32 * 8 * (8192 + 5120)
    with pytest.raises(ValueError, match="lm_head"):
        LLAMA3_8B.lora_params(8, "lm_head")


def test_shape_from_config_reads_hf_keys():
    cfg = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
    s = mem.shape_from_config(cfg, name="x")
    assert (s.n_params, s.head_dim, s.tied) == (N, 128, False)
    qwen3b = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
              "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True}
    assert mem.shape_from_config({"text_config": qwen3b}).n_params == 3_085_938_688  # q/k/v biases, tied head


def test_building_blocks_by_hand():
    tokens = 8 * 1024
    # bf16 logits + 3 fp32 copies (upcast, log-softmax, its gradient) over the micro-batch, or over a 512-token chunk
    assert mem.logits_bytes(8, 1024, 128256, grad=True) == tokens * 128256 * (2 + 12) == 14_709_424_128
    assert mem.logits_bytes(8, 1024, 128256, 512, grad=True) == tokens * 128256 * 2 + 512 * 128256 * 12
    assert mem.logits_bytes(16, 1024, 128256) == 16 * 1024 * 128256 * (2 + 8)
    # checkpointed: every layer's bf16 input + one layer recomputed (34 bytes per token x hidden)
    assert mem.activation_bytes(LLAMA3_8B, 8, 1536, True) == 32 * 8 * 1536 * 4096 * 2 + 34 * 8 * 1536 * 4096
    assert mem.activation_bytes(LLAMA3_8B, 2, 512, False) == 32 * 34 * 2 * 512 * 4096
    assert mem.gathered_bytes(LLAMA3_8B, backward=False) == (1_050_677_248 + 2 * 218_112_000) * 2 == 2_973_802_496
    assert mem.gathered_bytes(LLAMA3_8B, backward=True) == 2 * 2_973_802_496
    assert mem.kv_cache_bytes(LLAMA3_8B, 64, 1536) == 64 * 1536 * 131_072 == 12_884_901_888
    assert mem.vllm_work_bytes(LLAMA3_8B, 256) == 8192 * (2 * 14336 + 4 * 4096) * 2 + 256 * 128256 * 8 + CTX


def _grpo(world: int, **kw) -> mem.ReboMemory:
    """examples/grpo_rj_rl.yaml: 32 prompts x 8, lengths 512 + 1024, micro 8 (update) / 16 (log-probs), chunk 512."""
    base = dict(world=world, prompt_len=512, response_len=1024, gen_rows=256, micro_experience=16,
                actor=mem.RoleMemory(True, micro_update=8), ref=mem.RoleMemory(True), critic=mem.RoleMemory(False),
                chunk_tokens=512, ref_chunk_tokens=512)
    base.update(kw)
    return mem.ReboMemory(**base)


def test_fsdp_state_per_gpu_on_four_ranks():
    items = {i.name: i for i in mem.rebo_items(LLAMA3_8B, _grpo(4))}
    assert items["actor weights"].nbytes == 4 * N // 4 == 8_030_261_248  # fp32 master shard
    assert items["actor grads"].nbytes == 8_030_261_248
    assert items["actor optimizer"].nbytes == 8 * N // 4 == 16_060_522_496  # AdamW moments
    assert items["actor step work"].nbytes == 8_030_261_248  # foreach temporary
    assert items["reference"].nbytes == 2 * N // 4 == 4_015_130_624  # bf16 shard
    assert mem.trainer_awake_bytes(list(items.values())) == 8_030_261_248 + 16_060_522_496 + 4_015_130_624 + CTX


def test_weight_sync_streams_one_unit_on_the_gpu_and_the_host():
    root = 1_050_677_248  # the largest FSDP unit: embeddings + LM head + final norm
    items = {i.name: i for i in mem.rebo_items(LLAMA3_8B, _grpo(4))}
    assert items["gathered fp32 unit (weight sync)"].nbytes == 4 * root and \
        items["gathered fp32 unit (weight sync)"].phases == (mem.SYNC,)
    assert items["vLLM weights (weight sync)"].nbytes == 2 * N  # awake while the units stream in
    # per rank on the host: one unit in fp32 and its bf16 copy, and the transfer buffer: the larger of a 512 MiB
    # chunk and the largest group a chunk never splits (the embeddings in bf16, a layer is 0.44 GB)
    buffer = 128256 * 4096 * 2
    assert mem.sync_buffer_bytes(LLAMA3_8B) == buffer == 1_050_673_152
    host = mem.rebo_host(LLAMA3_8B, _grpo(4))
    assert host == {"offload": 0, "weight sync": 4 * (6 * root + buffer), "checkpoint save": 6 * N}
    assert host["weight sync"] == 29_418_946_560  # a full fp32 + bf16 copy per rank would be 4 x 6 x N = 192.7 GB
    plan = mem.rebo_plan(LLAMA3_8B, _grpo(4), 80 * mem.GB)
    assert plan.host_bytes == 6 * N == 48_181_567_488  # the save on rank 0 is the larger moment
    one = mem.rebo_host(LLAMA3_8B, _grpo(1, engine_processes=False))  # engine in the trainer's process: no buffer
    assert one["weight sync"] == 6 * root
    assert mem.rebo_host(LLAMA3_8B, _grpo(4, engine="hf"))["weight sync"] == 0


def test_offload_and_lora_remove_state():
    off = {i.name: i for i in mem.rebo_items(LLAMA3_8B, _grpo(4, actor=mem.RoleMemory(True, offload_optimizer=True,
                                                                                        micro_update=8)))}
    assert off["actor optimizer"].phases == (mem.ACTOR_STEP,)  # on the GPU for the step only
    params = {i.name: i for i in mem.rebo_items(LLAMA3_8B, _grpo(4, actor=mem.RoleMemory(True, offload_params=True),
                                                                 ref=mem.RoleMemory(True, offload_params=True)))}
    assert params["actor weights"].nbytes == 0 and "actor optimizer" not in params and params["reference"].nbytes == 0
    lora = {i.name: i for i in mem.rebo_items(LLAMA3_8B, _grpo(4, lora_rank=64))}
    assert lora["actor weights"].nbytes == 4 * (N + 167_772_160) // 4  # frozen fp32 base + adapters
    assert lora["actor optimizer"].nbytes == 8 * 167_772_160 // 4
    assert "reference" not in lora  # the base with the adapters off


def test_vllm_share_sized_from_the_trainer_state():
    awake = 8_030_261_248 + 16_060_522_496 + 4_015_130_624 + CTX  # 29.18 GB
    assert mem.sized_utilization(80 * mem.GB, awake) == 0.53  # (72 - 29.18) / 80 = 0.535, rounded down
    plan = mem.rebo_plan(LLAMA3_8B, _grpo(4), 80 * mem.GB)
    v = plan.vllm
    assert v.sized and v.utilization == 0.53 and v.budget == int(0.53 * 80 * mem.GB)
    assert v.kv_needed == 12_884_901_888  # 256 rows / 4 ranks = 64 sequences x 1536 tokens
    assert plan.phase_bytes()[mem.ROLLOUT] == awake + v.budget
    assert plan.fits and plan.peak <= plan.usable
    fixed = mem.rebo_plan(LLAMA3_8B, _grpo(4, size_vllm=False), 80 * mem.GB)
    assert fixed.vllm.utilization == 0.5 and fixed.phase_bytes()[mem.ROLLOUT] == awake + 40 * mem.GB


def _build(world: int, gpu_gb: float, critic: bool = False):
    def build(values: dict) -> mem.MemoryPlan:
        role = lambda name: mem.RoleMemory(True, bool(values.get(f"{name}.offload_params")),  # noqa: E731
                                           bool(values.get(f"{name}.offload_optimizer")), micro_update=8)
        m = _grpo(world, actor=role("actor"), critic=role("critic") if critic else mem.RoleMemory(False),
                  ref=mem.RoleMemory(True, bool(values.get("ref.offload_params"))))
        return mem.rebo_plan(LLAMA3_8B, m, int(gpu_gb * mem.GB))
    return build


LADDER = [[mem.Knob("opt", {"actor.offload_optimizer": True, "critic.offload_optimizer": True}, "")],
          [mem.Knob("opt", {"actor.offload_optimizer": True, "critic.offload_optimizer": True}, ""),
           mem.Knob("ref", {"ref.offload_params": True}, "")],
          [mem.Knob("params", {"actor.offload_params": True, "critic.offload_params": True}, ""),
           mem.Knob("ref", {"ref.offload_params": True}, "")]]


def test_plan_chooses_the_least_invasive_offload():
    grpo4 = mem.choose(_build(4, 80), LADDER, {})
    assert grpo4.fits and grpo4.knobs == []  # the paper's GRPO on 4 x 80 GB as configured
    ppo4 = mem.choose(_build(4, 80, critic=True), LADDER, {})
    assert ppo4.fits and [k.name for k in ppo4.knobs] == ["opt"] and not ppo4.base.fits
    grpo2 = mem.choose(_build(2, 80), LADDER, {})  # optimizer offload still brings AdamW back for the step
    assert grpo2.fits and [k.name for k in grpo2.knobs] == ["params", "ref"]


def test_plan_refuses_and_a_user_setting_wins():
    ppo24 = mem.choose(_build(1, 24, critic=True), LADDER, {})
    assert not ppo24.fits and "vLLM" in ppo24.plan.why_not()
    locked = mem.choose(_build(2, 80), LADDER, {"actor.offload_params": False})
    assert not locked.fits and locked.blocked and locked.blocked[0][1] == {"actor.offload_params": False}


def test_sft_process_by_hand():
    m = mem.SftMemory(world=4, rows=2, tokens=512, needs_ref=True, policy_passes=1, ref_passes=1)
    items = {i.name: i.nbytes for i in mem.sft_items(LLAMA3_8B, m)}
    assert items["weights"] == N and items["grads"] == N and items["optimizer"] == 2 * N
    assert items["reference (full copy)"] == 2 * N  # unsharded bf16 copy per process
    assert items["logits"] == 2 * 512 * 128256 * (14 + 10)
    one = mem.sft_items(LLAMA3_8B, mem.SftMemory(world=1, rows=2, tokens=512, fsdp=False))
    assert {i.name: i.nbytes for i in one}["autocast weight cache"] == 2 * N
    offload = mem.sft_plan(LLAMA3_8B, mem.SftMemory(world=1, rows=2, tokens=512, offload=True), 80 * mem.GB)
    assert offload.resident() == 0 and offload.host_bytes == 16 * N
