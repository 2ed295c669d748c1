"""Response log-probs without the redundant work of a plain full-width forward pass.

A rollout row is ``prompt (left-padded to P) + response (right-padded to T)`` and only the response's T
predictions are needed. The plain forward (``optimized=False``) runs all ``P + T`` columns through the model and
the LM head. The optimized forward computes the same numbers with less work:

- **trim**: columns that are padding in every row of the micro-batch (the common left padding of the prompts,
  the response columns after the longest response) are dropped, and so is the last input column (its output
  predicts nothing); log-probs after the longest response are returned as 0 (they are masked everywhere);
- **logits for response positions only** (``logits_to_keep``): the LM head (49k x 576 for the embedded model)
  is not applied to prompt positions;
- **one prompt pass per distinct prompt**: the n samples of a prompt share its key/value cache (computed once,
  indexed out to the n rows; gradients flow through the indexing), then only the responses run. Off when the
  model recomputes activations in training (gradient checkpointing drops the cache).

Passes without gradients also sort rows by prompt length (whole prompt groups together) so each micro-batch
holds prompts of similar length; the output is returned in the input order. The update keeps its micro-batch
composition (the ``token-mean`` loss weighs tokens within a micro-batch, so regrouping would change the loss).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger("verl.workers.forward")
_warned: list[bool] = []


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> bool | None:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX / AVX512-BF16); None where unknown. Without them
    a bf16 GEMM is far slower than fp32 (docs/performance.md, "Precision")."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags


_announced: set[tuple[str, str]] = set()


def resolve_autocast(mode: str | None, device_type: str) -> tuple[str, str]:
    """``(bf16 | none, why)`` for an autocast setting: ``auto`` is bf16 on GPUs and on CPUs with bf16 matrix units
    (AMX / AVX512-BF16, where a bf16 product runs ~2.5x fp32), none on other CPUs (bf16 is emulated there, far slower
    than fp32) and where the flags cannot be read; an explicit value wins."""
    if mode in (None, "none"):
        return "none", "set explicitly"
    if mode == "bf16":
        return "bf16", "set explicitly"
    if mode != "auto":
        raise ValueError(f"autocast={mode!r}: choose auto, bf16 or none (worker.<role>.autocast, RS.train --bf16)")
    if device_type == "cuda":
        return "bf16", "auto: GPU"
    units = cpu_bf16_units()
    if units:
        return "bf16", "auto: this CPU has bf16 matrix units (AMX / AVX512-BF16)"
    if units is False:
        return "none", "auto: this CPU has no AMX / AVX512-BF16 (bf16 would be emulated, slower than fp32)"
    return "none", "auto: this CPU's bf16 support is unknown (no /proc/cpuinfo)"


def announce_precision(what: str, mode: str, device_type: str) -> str:
    """Resolve ``mode`` and log the choice once per ``what`` and outcome (the run log says which precision ran and
    why); returns bf16 or none."""
    resolved, why = resolve_autocast(mode, device_type)
    if (what, resolved) not in _announced:
        _announced.add((what, resolved))
        logger.info("precision of %s: %s (%s)", what, "bf16 autocast over the weights' dtype" if resolved == "bf16"
                    else "no autocast, the weights' dtype", why)
    return resolved


def autocast_context(device: torch.device, mode: str):
    """``torch.autocast`` in bf16 for ``mode='bf16'`` (weights stay in their dtype: fp32 master weights), else a
    no-op; ``auto`` resolves with ``resolve_autocast``. Wraps model forward passes only: log-softmax, losses and the
    optimizer stay in fp32."""
    mode = announce_precision("model forward passes", mode, device.type)
    if mode == "bf16":
        if device.type == "cpu" and cpu_bf16_units() is False and not _warned:
            _warned.append(True)
            logger.warning("autocast=bf16 on a CPU without AMX/AVX512-BF16: bf16 matrix products are emulated and "
                           "much slower than fp32 here; use autocast=none on this machine")
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with identical prompt tokens and mask share a group: ``(first row of each group [U], group of each
    row [B])``; groups are numbered in order of first appearance."""
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    # renumber by first appearance so the result does not depend on unique's sort order
    dev = inverse.device
    first = torch.full((int(inverse.max()) + 1,), len(inverse), dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inverse, torch.arange(len(inverse), device=dev), reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(len(first), device=dev)
    return torch.sort(first).values, rank[inverse]


def trim_bounds(attention_mask: torch.Tensor, n_response: int) -> tuple[int, int]:
    """``(first prompt column any row attends to, longest response)`` for a ``[B, P+T]`` mask."""
    P = attention_mask.shape[1] - n_response
    used = attention_mask[:, :P].any(0)
    start = int(used.nonzero()[0]) if bool(used.any()) else P
    resp = attention_mask[:, P:].any(0)
    t = int(resp.nonzero()[-1]) + 1 if bool(resp.any()) else 0
    return start, t


def _inner(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def can_share_prompt(module: nn.Module) -> bool:
    """The KV cache survives the forward unless activations are recomputed (gradient checkpointing in training)."""
    inner = _inner(module)
    return not (module.training and getattr(inner, "is_gradient_checkpointing", False))


def response_logits(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    position_ids: torch.Tensor, n_response: int, share_prompt: bool = True,
                    autocast: str = "none") -> torch.Tensor:
    """Logits ``[B, t, V]`` predicting response tokens ``0..t-1``, ``t`` = the longest response (see module doc)."""
    B, L = input_ids.shape
    P = L - n_response
    start, t = trim_bounds(attention_mask, n_response)
    if t == 0:
        vocab = _inner(module).config.vocab_size
        return torch.zeros(B, 0, vocab, device=input_ids.device)
    ids, mask, pos = input_ids[:, start:P + t - 1], attention_mask[:, start:P + t - 1], position_ids[:, start:P + t - 1]
    firsts, group = prompt_groups(input_ids[:, start:P], attention_mask[:, start:P])
    p = P - start - 1  # the prompt pass stops before the last prompt token, whose logits the response pass computes
    with autocast_context(input_ids.device, autocast):
        if not (share_prompt and len(firsts) < B and p > 0 and can_share_prompt(module)):
            return module(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                          logits_to_keep=t).logits
        cache = module(input_ids=ids[firsts, :p], attention_mask=mask[firsts, :p], position_ids=pos[firsts, :p],
                       use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_select_indices(group)
        # one [B, t, V] tensor straight from the LM head (no concatenation holding two copies)
        return module(input_ids=ids[:, p:], attention_mask=mask, position_ids=pos[:, p:], past_key_values=cache,
                      use_cache=True).logits


def plain_response_logits(module: nn.Module, input_ids, attention_mask, position_ids, n_response: int,
                          autocast: str = "none") -> torch.Tensor:
    """The reference computation: the full ``[B, P+T]`` forward, logits ``[B, T, V]`` sliced afterwards."""
    with autocast_context(input_ids.device, autocast):
        logits = module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False).logits
    return logits[:, -n_response - 1:-1]


def length_order(data_batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Row order by prompt length with each prompt group kept together (stable: original order inside a group)."""
    T = data_batch["responses"].shape[1]
    P = data_batch["input_ids"].shape[1] - T
    mask = data_batch["attention_mask"]
    _, group = prompt_groups(data_batch["input_ids"][:, :P], mask[:, :P])
    plen = mask[:, :P].sum(-1).long()
    key = plen * (int(group.max()) + 1) + group
    return torch.sort(key, stable=True).indices


def _blocks(B: int, t: int, chunk_tokens: int) -> list[tuple[int, int, int, int]]:
    """``(row0, row1, col0, col1)`` blocks of a ``[B, t]`` token grid holding at most ``chunk_tokens`` tokens each
    (whole rows when a row fits, else slices of one row); ``chunk_tokens <= 0``: one block."""
    if chunk_tokens <= 0 or B * t <= chunk_tokens:
        return [(0, B, 0, t)]
    if t <= chunk_tokens:
        rows = chunk_tokens // t
        return [(r, min(r + rows, B), 0, t) for r in range(0, B, rows)]
    return [(r, r + 1, c, min(c + chunk_tokens, t)) for r in range(B) for c in range(0, t, chunk_tokens)]


def _scaled_fp32(block: torch.Tensor, temperature: float) -> torch.Tensor:
    """An fp32 copy of ``block / temperature`` (a copy even for fp32 logits: callers modify it in place)."""
    z = block.to(torch.float32, copy=True)
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """Log-prob of the label token and entropy of ``softmax(logits / temperature)``, computed block by block in fp32
    (forward and backward) so no fp32 copy of the whole logits exists; only the logits themselves are kept for the
    backward, which rebuilds each block's softmax. Gradients: d lp / dz = onehot - p, d H / dz = -p (log p + H),
    times 1 / temperature."""

    @staticmethod
    def forward(ctx, logits, labels, temperature: float, chunk_tokens: int, with_entropy: bool, entropy_grad: bool):
        B, t, _ = logits.shape
        lse = torch.empty(B, t, dtype=torch.float32, device=logits.device)
        lp = torch.empty_like(lse)
        ent = torch.empty_like(lse) if with_entropy else None
        for r0, r1, c0, c1 in _blocks(B, t, chunk_tokens):
            z = _scaled_fp32(logits[r0:r1, c0:c1], temperature)
            blk_lse = torch.logsumexp(z, dim=-1)
            lse[r0:r1, c0:c1] = blk_lse
            lp[r0:r1, c0:c1] = z.gather(-1, labels[r0:r1, c0:c1].unsqueeze(-1)).squeeze(-1) - blk_lse
            if with_entropy:  # H = logsumexp(z) - sum p z
                ent[r0:r1, c0:c1] = blk_lse - torch.softmax(z, dim=-1).mul_(z).sum(-1)
        ctx.save_for_backward(logits, labels, lse, ent if with_entropy else None)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero work
        if with_entropy and not entropy_grad:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        B, t, _ = logits.shape
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        if g_lp is None:
            g_lp = torch.zeros_like(lse)
        for r0, r1, c0, c1 in _blocks(B, t, ctx.chunk_tokens):
            blk = (slice(r0, r1), slice(c0, c1))
            logp = _scaled_fp32(logits[blk], ctx.temperature).sub_(lse[blk].unsqueeze(-1))
            p = logp.exp()
            gl = g_lp[blk].unsqueeze(-1)
            if g_ent is not None and ent is not None:  # -p * (g_lp + g_ent * (log p + H)), in logp's buffer
                g = logp.add_(ent[blk].unsqueeze(-1)).mul_(g_ent[blk].unsqueeze(-1)).add_(gl).mul_(p).neg_()
            else:
                g = p.mul_(gl).neg_()
            g.scatter_add_(-1, labels[blk].unsqueeze(-1), gl)
            if ctx.temperature != 1.0:
                g.div_(ctx.temperature)
            grad[blk] = g
        return grad, None, None, None, None, None


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_tokens: int = 0,
                    with_entropy: bool = False, entropy_grad: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(logits / temperature)`` at ``labels`` and (if asked) the entropy, both fp32 ``[B, t]``, from
    logits ``[B, t, V]`` of any dtype; differentiable (the entropy only with ``entropy_grad``).

    Equal to ``log_softmax(logits.float() / temperature).gather(labels)`` but computed ``chunk_tokens`` tokens at a
    time: the fp32 working set is a few ``chunk x V`` blocks instead of several ``[B, t, V]`` fp32 tensors (at
    micro-batch 16 x 1,024 tokens x 128,256 vocab, 8.4 GB each).
    """
    return _ChunkedTokenLogProbs.apply(logits, labels, float(temperature), int(chunk_tokens), with_entropy,
                                       entropy_grad)
