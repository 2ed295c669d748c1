"""Batched greedy generation and log-probability scoring for the evaluator (Hugging Face; vLLM optional).

Prompts arrive fully formatted (chat template and suffixes already applied). Special tokens are added at
tokenisation only when the prompt does not already start with the tokenizer's BOS token (``add_special_tokens=None``),
so chat-templated prompts never get a second BOS and raw MUSE prompts get one on Llama-style tokenizers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from verl.utils.progress import progress
from verl.utils.vllm_engine import EXTENSION, default_engine_env, start_engine
from verl.workers.rollout import eos_ids


def _want_special(tokenizer, text: str, add_special_tokens: bool | None) -> bool:
    if add_special_tokens is not None:
        return add_special_tokens
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def _encode(tokenizer, text: str, add_special_tokens: bool | None) -> list[int]:
    return tokenizer(text, add_special_tokens=_want_special(tokenizer, text, add_special_tokens))["input_ids"]


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop_strings:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def _is_vllm(model) -> bool:
    return type(model).__module__.startswith("vllm")


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    stop_strings: Sequence[str] = ("\n",),
    batch_size: int = 16,
    greedy: bool = True,
    desc: str | None = None,
    engine: str = "hf",
    add_special_tokens: bool | None = None,
    eos_ids: Sequence[int] | None = None,
    info: list | None = None,
) -> list[str]:
    """Complete each prompt; returns the new text only, cut at the first stop string (EOS always stops).

    Prompts are processed longest-first in batches (left padding) and returned in the input order.
    ``engine="vllm"`` (or a ``vllm.LLM`` as ``model``) uses vLLM, imported only then. ``eos_ids``: the token ids
    that end a generation (None: every EOS id of the tokenizer and the generation config; ``end_of_turn_ids``).
    ``info``: a list that receives, per prompt in input order, ``{"n_tokens", "eos"}``: the new tokens before the
    end (EOS not counted) and whether an EOS id ended it (not the token limit or a stop string), so a caller can
    tell an answer that ends from one cut at ``max_new_tokens``.
    """
    if not prompts:
        return []
    if engine == "vllm" or _is_vllm(model):
        ids = [_encode(tokenizer, p, add_special_tokens) for p in prompts]  # same tokens as the HF path
        return _generate_vllm(model, tokenizer, ids, max_new_tokens, stop_strings, greedy, eos_ids, info)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_encode(tokenizer, p, add_special_tokens) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    eos = list(eos_ids) if eos_ids is not None else _eos_ids(tokenizer, getattr(model, "generation_config", None))
    gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos)
    if greedy:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:  # plain sampling at T=1, as the vLLM path (top_k None would be transformers' default of 50)
        gen_kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    stops = [s for s in stop_strings if s]
    if stops:  # per-sequence stop inside generate; the decoded text is still cut below
        gen_kwargs.update(stop_strings=stops, tokenizer=tokenizer)
    ends: list = [None] * len(prompts)
    bar = progress(len(prompts), desc or "generate", leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _left_pad([encoded[i] for i in idx], pad_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        for i, text, row in zip(idx, texts, out[:, ids.shape[1] :].tolist()):
            outputs[i] = truncate_at_stop(text, stops)
            ends[i] = _end_info(row, eos, cut=len(outputs[i]) < len(text))
        bar.update(len(idx))
    bar.close()
    if info is not None:
        info.extend(ends)
    return outputs


def _end_info(row: list[int], eos: Sequence[int], cut: bool = False) -> dict:
    """``{"n_tokens", "eos"}`` of one HF generation (padded after its end): the tokens before the first EOS id, or
    all of them. ``cut``: a stop string ended it (with the pad id equal to an EOS id, what follows it looks like
    EOS)."""
    stop = next((j for j, t in enumerate(row) if t in set(eos)), None)
    return {"n_tokens": len(row) if stop is None else stop, "eos": stop is not None and not cut}


def _eos_ids(tokenizer, generation_config=None) -> list[int]:
    """Every EOS id of the generation config and the tokenizer (both engines stop at each)."""
    return eos_ids(tokenizer, generation_config)


END_OF_TURN_TOKEN = "<|eot_id|>"  # Llama-3's end of turn: the EOS LLaMA-Factory's llama3 template installs


def end_of_turn_ids(tokenizer) -> list[int]:
    """The one id the RULE release's evaluator stops at: its tokenizers came through LLaMA-Factory, whose ``llama3``
    template replaces the EOS with <|eot_id|> and whose generation passes ``eos_token_id=tokenizer.eos_token_id``, so
    Llama-3's <|end_of_text|> (128001) does not stop it. <|eot_id|> where the vocabulary has it, else the EOS."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if END_OF_TURN_TOKEN in vocab:
        return [vocab[END_OF_TURN_TOKEN]]
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _generate_vllm(llm, tokenizer, prompt_ids: list[list[int]], max_new_tokens, stop_strings, greedy,
                   eos_ids: Sequence[int] | None = None, info: list | None = None) -> list[str]:
    from vllm import SamplingParams  # optional heavy dependency: vllm

    explicit = eos_ids is not None  # only these ids end a generation: vLLM's own EOS check is switched off
    eos = list(eos_ids) if explicit else _eos_ids(tokenizer, getattr(llm, "hf_generation_config", None))
    params = SamplingParams(
        temperature=0.0 if greedy else 1.0, max_tokens=max_new_tokens, stop=[s for s in stop_strings if s] or None,
        stop_token_ids=eos, ignore_eos=explicit,
    )
    # pre-tokenised prompts: vLLM would otherwise add a second BOS in front of chat-templated text
    results = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    if info is not None:  # vLLM: finish_reason "stop" with no string stop_reason = an EOS or stop token id
        for r in results:
            out = r.outputs[0]
            toks = list(out.token_ids)
            eos_end = out.finish_reason == "stop" and not isinstance(out.stop_reason, str)
            info.append({"n_tokens": len(toks) - (1 if eos_end and toks and toks[-1] in set(eos) else 0),
                         "eos": eos_end})
    return [truncate_at_stop(r.outputs[0].text, stop_strings) for r in results]


def load_vllm(model_path: str, dtype: str = "float32", device_type: str = "cpu", kv_cache_bytes: int = 1 << 30,
              seed: int = 0, **kwargs):
    """An in-process ``vllm.LLM`` for ``engine="vllm"`` (generation only; scoring stays in the HF model).

    CPU: explicit KV cache (``kv_cache_bytes``, 1 GiB ~ 23k tokens of the 135M model), eager mode (no ~45 s
    compile), threads bound to this process's cores. GPU: 45% of the card (the HF scoring model shares it).
    ``verl.utils.vllm_engine.load_folder_weights`` swaps another folder's weights in; stop it with
    ``verl.utils.vllm_engine.shutdown_engine``.
    """
    # the weight-sync extension lets a multi-model evaluation swap the next model's weights into this engine
    settings = dict(dtype=dtype, seed=seed, enable_prefix_caching=True, worker_extension_cls=EXTENSION)
    if device_type == "cuda":
        settings.update(gpu_memory_utilization=0.45)
    else:
        settings.update(kv_cache_memory_bytes=int(kv_cache_bytes), enforce_eager=True)
    settings.update(kwargs)
    llm, seconds = start_engine(model_path, default_engine_env(device_type), **settings)
    llm.start_seconds = seconds
    try:  # its EOS ids join the tokenizer's as stop tokens, as in the HF path
        llm.hf_generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        llm.hf_generation_config = None
    return llm


def _row_logits_fn(model, ids: torch.Tensor, mask: torch.Tensor):
    """``f(row, a, b) -> logits[row, a:b]`` without materialising the full ``[B, L, vocab]`` tensor when the
    model exposes its decoder and LM head (the full logits of long MUSE texts would take gigabytes)."""
    decoder = getattr(model, "get_decoder", lambda: None)()
    head = model.get_output_embeddings() if decoder is not None else None
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if decoder is not None and head is not None and not softcap:
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return lambda row, a, b: head(hidden[row, a:b])
    logits = model(input_ids=ids, attention_mask=mask).logits
    return lambda row, a, b: logits[row, a:b]


@torch.no_grad()
def sequence_logprobs(
    model,
    tokenizer,
    items: Sequence[str] | Sequence[tuple[str, str]],
    batch_size: int = 8,
    return_stats: bool = False,
    add_special_tokens: bool | None = None,
    max_length: int | None = None,
    desc: str | None = None,
):
    """Per-token log-probabilities under ``model``.

    ``items`` are plain texts (every token after the first is scored) or ``(prompt, continuation)`` pairs
    (the tokens of ``prompt + continuation`` after the prompt's tokens are scored). Returns one 1-D float tensor
    per item; with ``return_stats`` a list of ``(logprobs, mu, var)`` where ``mu``/``var`` are the mean and
    variance of ``log p`` under the model's next-token distribution at each scored position (for Min-K%++).
    ``max_length`` truncates long texts (from the right) before scoring.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs, starts = [], []
    for it in items:
        if isinstance(it, str):
            ids = _encode(tokenizer, it, add_special_tokens)
            start = 1
        else:
            prompt, cont = it
            start = len(_encode(tokenizer, prompt, add_special_tokens))
            ids = _encode(tokenizer, prompt + cont, add_special_tokens)
        if max_length:
            ids = ids[:max_length]
        seqs.append(ids)
        starts.append(max(1, min(start, len(ids))))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    results: list = [None] * len(seqs)
    bar = progress(len(seqs), desc or "score", leave=False)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # right padding keeps position ids exact
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        row_logits = _row_logits_fn(model, ids.to(device), mask.to(device))
        for row, i in enumerate(idx):
            n, s = len(seqs[i]), starts[i]
            if n <= s:
                empty = torch.zeros(0)
                results[i] = (empty, empty, empty) if return_stats else empty
                continue
            logp = torch.log_softmax(row_logits(row, s - 1, n - 1).float(), dim=-1)
            target = torch.tensor(seqs[i][s:n], device=logp.device)
            tok = logp.gather(-1, target[:, None])[:, 0].cpu()
            if return_stats:
                p = logp.exp()
                mu = (p * logp).sum(-1)
                var = (p * logp.square()).sum(-1) - mu.square()
                results[i] = (tok, mu.cpu(), var.cpu())
            else:
                results[i] = tok
        del row_logits
        bar.update(len(idx))
    bar.close()
    return results


@torch.no_grad()
def next_token_logprobs(
    model, tokenizer, prompts: Sequence[str], candidate_ids: Sequence[int], batch_size: int = 8,
    add_special_tokens: bool | None = None, desc: str | None = None,
) -> list[list[float]]:
    """Log-probability of each candidate token id as the next token after each prompt: ``[n_prompts][n_cands]``."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_encode(tokenizer, p, add_special_tokens) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: list = [None] * len(encoded)
    cand = torch.tensor(list(candidate_ids))
    # only the last position's logits: the full [B, L, vocab] tensor of a 5-shot MMLU batch takes gigabytes
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    bar = progress(len(encoded), desc or "next token", leave=False)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        ids, mask = _left_pad([encoded[i] for i in idx], pad_id, device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # exact positions despite left padding
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **last_only).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)[:, cand.to(logits.device)].cpu()
        for row, i in enumerate(idx):
            out[i] = logp[row].tolist()
        bar.update(len(idx))
    bar.close()
    return out
