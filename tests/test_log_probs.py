"""Chunked log-probs: the fp32 log-softmax computed a block of tokens at a time equals the whole-tensor computation
(values, entropy, gradients) and does not hold fp32 copies of the whole logits."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from verl.workers import forward
from verl.workers.actor import response_log_probs


def reference(logits: torch.Tensor, labels: torch.Tensor, temperature: float):
    """The whole-tensor computation: an fp32 copy of the logits, its log-softmax and entropy."""
    z = logits.float() / temperature
    lp = torch.log_softmax(z, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    p = torch.softmax(z, dim=-1)
    return lp, torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def _grads(fn, logits, labels, temperature, w_lp, w_ent):
    x = logits.detach().clone().requires_grad_(True)
    lp, ent = fn(x, labels, temperature)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    return lp.detach(), ent.detach(), x.grad


@pytest.mark.parametrize("chunk", [0, 1, 3, 7, 10, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_whole_tensor_values_and_gradients(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    B, t, V = 3, 7, 50
    logits = torch.randn(B, t, V, generator=g) * 3
    labels = torch.randint(0, V, (B, t), generator=g)
    w_lp, w_ent = torch.randn(B, t, generator=g), torch.randn(B, t, generator=g)

    def chunked(x, y, temp):
        return forward.token_log_probs(x, y, temp, chunk, with_entropy=True)

    lp0, e0, g0 = _grads(reference, logits, labels, temperature, w_lp, w_ent)
    lp1, e1, g1 = _grads(chunked, logits, labels, temperature, w_lp, w_ent)
    torch.testing.assert_close(lp1, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)


def test_bf16_logits_are_scored_in_fp32_and_get_a_bf16_gradient():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 40, generator=g) * 4).bfloat16()
    labels = torch.randint(0, 40, (2, 5), generator=g)
    x = logits.clone().requires_grad_(True)
    lp, ent = forward.token_log_probs(x, labels, 1.0, 3, with_entropy=True)
    lp0, e0 = reference(logits, labels, 1.0)  # fp32 from the same bf16 values
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, e0, rtol=1e-5, atol=1e-5)
    lp.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    ref = (torch.nn.functional.one_hot(labels, 40) - torch.softmax(logits.float(), -1)).bfloat16()
    torch.testing.assert_close(x.grad, ref, rtol=1e-2, atol=1e-2)


def test_entropy_without_graph_and_log_probs_only():
    logits = torch.randn(2, 4, 30, requires_grad=True)
    labels = torch.randint(0, 30, (2, 4))
    lp, ent = forward.token_log_probs(logits, labels, 1.0, 3, with_entropy=True, entropy_grad=False)
    assert lp.requires_grad and not ent.requires_grad
    lp.sum().backward()  # only the log-prob term reaches the logits
    expected = torch.nn.functional.one_hot(labels, 30) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)
    lp2, ent2 = forward.token_log_probs(logits, labels, 1.0, 3)
    assert ent2 is None and torch.equal(lp2, lp)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)


def test_response_log_probs_chunked_equal_whole_with_model_gradients(tiny):
    from tests.test_workers_forward import _rollout_batch

    data = _rollout_batch(tiny.config.vocab_size)
    mask = data.batch["response_mask"].bool()
    tiny.train()
    out = []
    for chunk in (0, 5):
        tiny.zero_grad(set_to_none=True)
        lp, ent = response_log_probs(tiny, data, temperature=0.9, with_entropy=True, chunk_tokens=chunk)
        (-(lp * mask).sum() / mask.sum() - 0.1 * (ent * mask).sum() / mask.sum()).backward()
        out.append((lp.detach(), ent.detach(), {k: p.grad.clone() for k, p in tiny.named_parameters()}))
    tiny.zero_grad(set_to_none=True)
    (lp0, e0, g0), (lp1, e1, g1) = out
    torch.testing.assert_close(lp1, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)


PEAK_SCRIPT = textwrap.dedent('''
    import sys, torch
    from verl.workers import forward

    def hwm_kib():
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0])

    torch.set_num_threads(1)
    mode = sys.argv[1]
    B, t, V = 1, 256, 128256  # 131 MB of fp32 logits
    logits = torch.randn(B, t, V).requires_grad_(True)
    labels = torch.randint(0, V, (B, t))
    weights = torch.randn(B, t)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM) to the current RSS
        f.write("5")
    before = hwm_kib()
    if mode == "whole":
        z = logits.float()
        lp = torch.log_softmax(z, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        p = torch.softmax(z, -1)
        ent = torch.logsumexp(z, -1) - (p * z).sum(-1)
    else:
        lp, ent = forward.token_log_probs(logits, labels, 1.0, 32, with_entropy=True)
    ((lp * weights).sum() + ent.sum()).backward()
    print((hwm_kib() - before) / 1024)  # MiB
''')


def _peak_mib(mode: str) -> float:
    """Peak RSS growth of the pass; glibc serves every block over 64 KiB with mmap, so freed blocks leave the peak
    and the figure counts tensors alive together, not memory the allocator kept after a free."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode], capture_output=True, text=True, check=True,
                         env=env)
    return float(out.stdout.strip().splitlines()[-1])


def test_chunked_pass_does_not_hold_fp32_copies_of_the_logits():
    """Forward + backward over 131 MB of logits: the whole-tensor pass adds several logits-sized tensors (log-softmax,
    softmax, their product, the gradient); the chunked pass adds the gradient and blocks of 32 tokens."""
    whole, chunked = _peak_mib("whole"), _peak_mib("chunked")
    logits_mib = 256 * 128256 * 4 / 2**20
    assert whole > 3 * logits_mib, whole
    assert chunked < 1.6 * logits_mib, (whole, chunked)
