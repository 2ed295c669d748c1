"""The optimized log-prob forward (trimmed padding, response-only logits, one pass per distinct prompt, length
order) gives the plain forward's log-probs, losses and gradients; bf16 autocast stays close to fp32."""

import pytest
import torch

from verl.protocol import DataProto
from verl.workers import forward
from verl.workers.actor import batched_log_probs, response_log_probs
from verl.workers.critic import response_values


def _rollout_batch(vocab: int, n: int = 3, P: int = 12, T: int = 7, seed: int = 0) -> DataProto:
    """Prompts of different lengths (left-padded), each repeated n times, responses of different lengths."""
    from verl.workers.rollout import assemble

    g = torch.Generator().manual_seed(seed)
    plens = [5, 9, 7, 12]  # no prompt fills the width, so every micro-batch has common left padding
    plens[-1] = P - 1
    ids = torch.zeros(len(plens), P, dtype=torch.long)
    mask = torch.zeros(len(plens), P, dtype=torch.long)
    for i, pl in enumerate(plens):
        ids[i, P - pl:] = torch.randint(3, vocab, (pl,), generator=g)
        mask[i, P - pl:] = 1
    prompts = DataProto.from_dict({"input_ids": ids, "attention_mask": mask}).repeat(n, interleave=True)
    B = len(prompts)
    responses = torch.randint(3, vocab, (B, T), generator=g)
    eos = 2
    rlens = torch.randint(1, T - 1, (B,), generator=g)  # responses end before T: trailing padding to trim
    for i, rl in enumerate(rlens.tolist()):
        responses[i, rl - 1] = eos
    return assemble(prompts, responses, [eos], pad_token_id=0)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)


def test_prompt_groups_and_trim_bounds():
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [0, 5, 6]])
    mask = (ids != 0).long()
    firsts, group = forward.prompt_groups(ids, mask)
    assert firsts.tolist() == [0, 2] and group.tolist() == [0, 0, 1, 0]
    # prompt columns 0-1 are padding in every row, responses end after column 1 of 3
    am = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 0, 0]])
    assert forward.trim_bounds(am, 3) == (2, 2)


def test_length_order_keeps_groups_together():
    data = _rollout_batch(100, n=2)
    order = forward.length_order(data.batch)
    plen = data.batch["attention_mask"][:, :-7].sum(-1)[order].tolist()
    assert plen == sorted(plen)
    assert sorted(order.tolist()) == list(range(len(data)))
    firsts = data.batch["prompts"][order]
    assert all(torch.equal(firsts[2 * k], firsts[2 * k + 1]) for k in range(len(data) // 2))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_optimized_log_probs_loss_and_gradients_equal_plain(tiny, checkpointing):
    data = _rollout_batch(tiny.config.vocab_size)
    mask = data.batch["response_mask"].bool()
    if checkpointing:
        tiny.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tiny.train()
    results = []
    try:
        for optimized in (False, True):
            tiny.zero_grad(set_to_none=True)
            lp, ent = response_log_probs(tiny, data, temperature=0.7, with_entropy=True, optimized=optimized)
            loss = -(lp * mask).sum() / mask.sum() - 0.01 * (ent * mask).sum() / mask.sum()
            loss.backward()
            grads = {k: p.grad.clone() for k, p in tiny.named_parameters() if p.grad is not None}
            results.append((lp.detach(), ent.detach(), loss.item(), grads))
    finally:
        if checkpointing:
            tiny.gradient_checkpointing_disable()
        tiny.zero_grad(set_to_none=True)
    (lp0, e0, l0, g0), (lp1, e1, l1, g1) = results
    torch.testing.assert_close(lp1[mask], lp0[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e1[mask], e0[mask], rtol=1e-5, atol=1e-5)
    longest = int(mask.sum(-1).max())
    assert longest < mask.shape[1] and (lp1[:, longest:] == 0).all()  # after the longest response: zeros
    assert l1 == pytest.approx(l0, rel=1e-6, abs=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)


def test_batched_log_probs_sorted_micro_batches_in_input_order(tiny):
    data = _rollout_batch(tiny.config.vocab_size, n=2)
    mask = data.batch["response_mask"].bool()
    plain = batched_log_probs(tiny, data, 3, torch.device("cpu"), 1.0, optimized=False)
    fast = batched_log_probs(tiny, data, 3, torch.device("cpu"), 1.0, optimized=True)
    torch.testing.assert_close(fast[mask], plain[mask], rtol=1e-5, atol=1e-5)


def test_critic_values_trimmed_equal_plain(tiny_model_path):
    from verl.workers.fsdp_utils import load_module

    model = load_module(tiny_model_path, "critic", torch.float32)
    torch.nn.init.normal_(model.value_head.weight)
    data = _rollout_batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(response_values(model, data, optimized=True),
                                   response_values(model, data, optimized=False), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_and_stays_close_to_fp32(tiny):
    data = _rollout_batch(tiny.config.vocab_size)
    mask = data.batch["response_mask"].bool()
    tiny.eval()
    with torch.no_grad():
        lp32, _ = response_log_probs(tiny, data)
        lp16, _ = response_log_probs(tiny, data, autocast="bf16")
    assert lp16.dtype == torch.float32 and next(tiny.parameters()).dtype == torch.float32  # fp32 master weights
    assert not torch.equal(lp16, lp32)  # the matmuls did run in bf16
    loss32, loss16 = -(lp32[mask]).mean(), -(lp16[mask]).mean()
    assert float(loss16) == pytest.approx(float(loss32), rel=2e-2)
    assert (lp16[mask] - lp32[mask]).abs().max() < 0.1
    with pytest.raises(ValueError, match="autocast='fp8'"):
        forward.autocast_context(torch.device("cpu"), "fp8")

