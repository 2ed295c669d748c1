"""Rollout engines: Hugging Face ``generate`` (on the actor's FSDP module) and vLLM (colocated, CPU or GPU).

Both take a left-padded prompt batch and return the verl layout, responses right-padded to ``max_new_tokens``:
``prompts [B, P]``, ``responses [B, T]``, ``input_ids``/``attention_mask``/``position_ids [B, P+T]`` and
``response_mask [B, T]`` (1 up to and including the first EOS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from verl.config import RolloutConfig
from verl.protocol import DataProto
from verl.utils import vllm_engine
from verl.utils.vllm_engine import cpu_bind, require_vllm, shutdown_engine, start_engine
from verl.workers import fsdp_utils

logger = logging.getLogger("verl.rollout")


def eos_ids(tokenizer, generation_config=None) -> list[int]:
    ids = set()
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def newline_token_ids(tokenizer) -> list[int]:
    """Every vocabulary id whose text contains a newline (byte-level BPE has many: "\n", "\n\n", ".\n", ...;
    SentencePiece Llama-2 has the byte token <0x0A>). ``worker.rollout.stop_at_newline`` stops rollouts at them."""
    out = []
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False):
            out.append(i)
    return out


def stop_ids(tokenizer, cfg, generation_config=None) -> list[int]:
    """EOS ids, plus the newline tokens when ``cfg.stop_at_newline`` (the response mask ends at the first of any)."""
    ids = eos_ids(tokenizer, generation_config)
    if getattr(cfg, "stop_at_newline", False):
        ids = sorted(set(ids) | set(newline_token_ids(tokenizer)))
    return ids


def response_mask_from(responses: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """``[B, T]`` mask: 1 for tokens up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(responses, torch.tensor(eos, device=responses.device))
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0  # an EOS strictly before this position
    return (~after).long()


def assemble(prompts: DataProto, responses: torch.Tensor, eos: list[int], pad_token_id: int) -> DataProto:
    """Join prompt batch and generated tokens into the trainer layout (see the module doc)."""
    p_ids, p_mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]
    mask = response_mask_from(responses, eos)
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, pad_token_id))
    p_pos = prompts.batch.get("position_ids")
    if p_pos is None:
        p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
    r_pos = p_pos[:, -1:] + torch.arange(1, responses.shape[1] + 1, device=p_pos.device)
    return DataProto.from_dict(tensors={
        "prompts": p_ids,
        "responses": responses,
        "input_ids": torch.cat([p_ids, responses], dim=1),
        "attention_mask": torch.cat([p_mask, mask], dim=1),
        "position_ids": torch.cat([p_pos, r_pos], dim=1),
        "response_mask": mask,
    })


def pad_right(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if t.shape[1] >= width:
        return t[:, :width]
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)], 1)


class HFRollout:
    """``generate`` on the actor's module, run inside its root FSDP forward (``fsdp_utils.generate``: the numerics
    of a training forward, bf16 included); ``synced_gpus`` keeps ranks in step."""

    def __init__(self, module, tokenizer, cfg: RolloutConfig, device: torch.device, world_size: int):
        self.module, self.tokenizer, self.cfg, self.device, self.world_size = module, tokenizer, cfg, device, world_size
        inner = getattr(module, "module", module)
        self.eos = stop_ids(tokenizer, cfg, getattr(inner, "generation_config", None))

    def generate(self, prompts: DataProto) -> DataProto:
        meta = prompts.meta_info
        max_new = int(meta["max_new_tokens"])
        do_sample = bool(meta.get("do_sample", True))
        kwargs = dict(max_new_tokens=max_new, do_sample=do_sample, eos_token_id=self.eos,
                      pad_token_id=self.tokenizer.pad_token_id, synced_gpus=self.world_size > 1, use_cache=True)
        if do_sample:
            # top_k=0 passed as 0: None would mean transformers' default top-k of 50, not "off"
            kwargs.update(temperature=float(meta.get("temperature", 1.0)), top_p=float(meta.get("top_p", 1.0)),
                          top_k=int(meta.get("top_k", 0) or 0))
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if "seed" in meta:  # reproducible sampling (also across resume): seed per step and rank
            torch.manual_seed(int(meta["seed"]))
        outs = []
        self.module.eval()
        with torch.no_grad():
            for mb in prompts.split(self.cfg.micro_batch_size):
                ids = mb.batch["input_ids"].to(self.device)
                gen = fsdp_utils.generate(self.module, input_ids=ids,
                                          attention_mask=mb.batch["attention_mask"].to(self.device), **kwargs)
                outs.append(pad_right(gen[:, ids.shape[1]:].cpu(), max_new, self.tokenizer.pad_token_id))
        return assemble(prompts, torch.cat(outs), self.eos, self.tokenizer.pad_token_id)


def engine_settings(cfg: RolloutConfig, device_type: str, actor_dtype: str, max_model_len: int, seed: int,
                    world_size: int = 1) -> tuple[dict, dict]:
    """``(LLM kwargs, environment)`` for a colocated engine; pure, so the choices are unit-tested without vLLM.

    One worker runs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: starts in seconds and takes
    the weights as tensors); several FSDP ranks each run a private engine process (vLLM would otherwise join the
    trainer's process group), fed through a shared-memory buffer. Either way the weights arrive through
    ``vllm_engine.WeightSyncExtension``, added to vLLM's worker.
    """
    cpu = device_type != "cuda"
    kwargs = dict(
        dtype=actor_dtype if cfg.dtype == "auto" else cfg.dtype, max_model_len=max_model_len, seed=seed,
        tensor_parallel_size=cfg.tensor_parallel_size, max_num_seqs=cfg.max_num_seqs,
        enforce_eager=cpu if cfg.enforce_eager is None else cfg.enforce_eager,
        enable_prefix_caching=True,  # the n copies of a prompt share its KV blocks
        worker_extension_cls=vllm_engine.EXTENSION,
    )
    if cfg.kv_cache_bytes is not None or cpu:
        kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_bytes or (1 << 30))
    if cpu:
        # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a seeded request's prompt is split
        # over scheduler steps (chunked prefill), as happens at the paper batch: schedule whole prompts instead.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(max_model_len, 8192)
    if not cpu:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = cfg.free_cache_engine  # raises on CPU
    in_process = world_size == 1 and cfg.tensor_parallel_size == 1
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_process else "1"}
    if cpu:
        env["VLLM_CPU_OMP_THREADS_BIND"] = (cfg.cpu_threads_bind or os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
                                            or cpu_bind(world_size))
    return kwargs, env


def row_seeds(base: int, n_rows: int) -> list[int]:
    """One sampling seed per row: distinct within a batch (the n copies of a prompt sample differently) and a
    function of the step seed only, so a rerun or a resume reproduces the rollouts."""
    return [(int(base) * 1_000_003 + i) % (2**63 - 1) for i in range(n_rows)]


def sampling_kwargs(meta: dict, eos: list[int]) -> dict:
    """vLLM ``SamplingParams`` fields with HF ``generate``'s meaning (no seed): greedy is temperature 0; top_k 0 is
    off; every EOS id stops; min_tokens/penalties stay at the neutral values HF uses here."""
    max_new = int(meta["max_new_tokens"])
    if not bool(meta.get("do_sample", True)):
        return dict(n=1, max_tokens=max_new, temperature=0.0, top_p=1.0, top_k=0, stop_token_ids=eos,
                    detokenize=False)
    return dict(n=1, max_tokens=max_new, temperature=float(meta.get("temperature", 1.0)),
                top_p=float(meta.get("top_p", 1.0)), top_k=int(meta.get("top_k", 0) or 0), stop_token_ids=eos,
                detokenize=False)


def checkpoint_tensor_bytes(model_path: str, dtype: torch.dtype) -> list[tuple[str, int]]:
    """``(name, bytes in dtype)`` of every tensor in a folder's safetensors files, from their headers only (no
    weights read); empty when the folder has none."""
    from safetensors import safe_open

    out = []
    for f in sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                numel = 1
                for d in h.get_slice(k).get_shape():
                    numel *= int(d)
                out.append((k, numel * dtype.itemsize))
    return out


def empty_device_cache(device: torch.device) -> None:
    """Give the trainer's cached CUDA blocks back to the driver, so the engine can wake into them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class VLLMRollout:
    """A vLLM engine colocated with the actor (CPU or GPU), held to the actor's current weights.

    State: ``weights_current`` (False once the actor updates, or after a sleep discarded them) and ``sleeping`` (the
    memory tags vLLM has released). The worker calls ``ready`` before generating (syncs only when the weights are
    not current, so validation chunks after one update share one sync and no sleep/wake) and ``release`` before its
    own GPU work. On GPU with ``free_cache_engine`` a release is a level-2 sleep: KV cache and weights are dropped,
    not copied to host, since the next generation reloads the weights anyway (level 1 would copy them out and back
    only to be overwritten, or restore stale ones). vLLM is imported here only, never at package import.

    Weights travel as chunks of at most ``worker.rollout.sync_chunk_mb`` in the engine dtype through
    ``vllm_engine.WeightSyncExtension``: as tensors to an engine in this process, else through one reusable
    ``WeightBuffer`` (no file left on disk; its size is checked against free space before the engine starts).
    """

    def __init__(self, model_path: str, tokenizer, cfg: RolloutConfig, max_model_len: int, actor_dtype: str,
                 device: torch.device, seed: int = 0, world_size: int = 1, generation_config=None):
        require_vllm("worker.rollout.name=vllm")
        from verl.models.embedded import resolve_model_path

        self.tokenizer, self.cfg, self.device = tokenizer, cfg, device
        self._buffer: vllm_engine.WeightBuffer | None = None
        self.llm = None
        path = resolve_model_path(model_path)
        kwargs, env = engine_settings(cfg, device.type, actor_dtype, max_model_len, seed, world_size)
        self.in_process = env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        self.sleeps = bool(kwargs.get("enable_sleep_mode"))
        env.update(vllm_engine.sleep_mode_env(os.environ, self.sleeps, self.in_process,
                                              vllm_engine.vllm_handles_expandable_segments()))
        self.dtype = fsdp_utils.to_dtype(kwargs["dtype"])
        chunk_mb = getattr(cfg, "sync_chunk_mb", 512)
        if not chunk_mb or chunk_mb <= 0:
            raise ValueError(f"worker.rollout.sync_chunk_mb={chunk_mb}: must be a positive number of MiB")
        self.chunk_bytes = int(chunk_mb * 2**20)
        self.copy_chunks = False  # engine in its own process: copy each chunk out of the buffer before loading
        if not self.in_process:  # fail before the engine starts, not at the first sync
            sizes = checkpoint_tensor_bytes(path, self.dtype)
            if sizes:
                vllm_engine.buffer_dir(vllm_engine.buffer_bytes(sizes, self.chunk_bytes))
        self.llm, self.start_seconds = start_engine(path, env, **kwargs)
        if not self.in_process:
            try:
                self.llm.collective_rpc("rule_watch_trainer", args=(list(vllm_engine.process_identity(os.getpid())),))
            except BaseException:
                self.close()
                raise
        self.eos = stop_ids(tokenizer, cfg, generation_config)
        self.sleeping: set[str] = set()
        self.weights_current = True  # started from the actor's start weights
        self.syncs = 0
        self.sync_seconds = 0.0

    # ------------------------------------------------------------------ state
    @property
    def needs_sync(self) -> bool:
        return not self.weights_current

    def mark_stale(self) -> None:
        """The actor's weights changed: reload before the next generation."""
        self.weights_current = False

    def release(self) -> None:
        """Before the trainer's own GPU work: level-2 sleep (no-op on CPU or without free_cache_engine)."""
        if self.sleeps and not self.sleeping:
            self.llm.sleep(level=2)
            self.sleeping = {"weights", "kv_cache"}
            self.weights_current = False  # discarded: the next ``ready`` reloads them

    def _wake(self, tags: list[str]) -> None:
        tags = [t for t in tags if t in self.sleeping]
        if tags:
            empty_device_cache(self.device)
            self.llm.wake_up(tags=tags)
            self.sleeping -= set(tags)

    def ready(self, state_dict_fn: Callable[[], dict[str, torch.Tensor]], tie_word_embeddings: bool = False) -> None:
        """Awake, with the actor's current weights. ``state_dict_fn`` (a collective under FSDP: every rank calls
        ``ready`` at the same point) is called only when a sync is due, before the engine wakes, so the gather
        does not compete with the engine's memory."""
        if not self.weights_current:
            self.sync_weights(state_dict_fn(), tie_word_embeddings)
        self._wake(["kv_cache"])

    # ------------------------------------------------------------------ weights
    def sync_weights(self, state_dict: dict[str, torch.Tensor], tie_word_embeddings: bool = False) -> float:
        """Load the actor's full (HF-named) weights into the engine, in place; returns the seconds it took.

        The trainer's CUDA cache is emptied, the weights' memory woken (level 2: uninitialised until loaded), then
        the weights stream in chunk by chunk. A tied ``lm_head.weight`` is passed explicitly (vLLM would keep the
        old head), and the prefix cache is reset so no KV block computed with the old weights is reused.
        """
        t0 = time.time()
        sd = dict(state_dict)
        if tie_word_embeddings and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        if "weights" in self.sleeping:
            self._wake(["weights"])  # empties the cache first
        else:
            empty_device_cache(self.device)
        self.weights_current = False  # until every chunk is in
        self._stream(sd)
        self.llm.reset_prefix_cache()
        self.weights_current = True
        self.syncs += 1
        self.sync_seconds = time.time() - t0
        return self.sync_seconds

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.dtype) if t.is_floating_point() else t.detach()

    def _stream(self, sd: dict[str, torch.Tensor]) -> None:
        """begin -> one call per chunk -> finish, on the engine's worker (``vllm_engine.WeightSyncExtension``).
        Should vLLM keep views into the buffer past a chunk (a layer split over chunks), the sync is redone with
        each chunk copied out of the buffer first, and so are later syncs."""
        sizes = [(k, v.numel() * (self.dtype.itemsize if v.is_floating_point() else v.element_size()))
                 for k, v in sd.items()]
        chunks = vllm_engine.plan_chunks(sizes, self.chunk_bytes)
        buf = None if self.in_process else self._ensure_buffer(vllm_engine.buffer_bytes(sizes, self.chunk_bytes))
        if not self._load(sd, chunks, buf, self.copy_chunks):
            logger.info("vLLM holds weights of an incomplete layer across chunks: reloading with each chunk copied "
                        "out of the transfer buffer (from now on)")
            self.copy_chunks = True
            self._load(sd, chunks, buf, True)

    def _load(self, sd, chunks: list[list[str]], buf, copy: bool) -> bool:
        """One reload; False when it stopped because the engine still held views into the buffer."""
        rpc = self.llm.collective_rpc
        rpc("rule_begin_reload")
        complete = True
        try:
            for names in chunks:
                if buf is None:
                    rpc("rule_load_weights", args=([(n, self._cast(sd[n])) for n in names],))
                    continue
                held = rpc("rule_load_buffer", args=(buf.pack([(n, sd[n]) for n in names], self.dtype), copy))
                if any(h is not False for h in held):
                    complete = False
                    break
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                rpc("rule_finish_reload")
            raise
        rpc("rule_finish_reload")
        return complete

    def _ensure_buffer(self, nbytes: int) -> vllm_engine.WeightBuffer:
        """The transfer buffer, (re)made when a chunk needs more room; unlinked as soon as the engine mapped it."""
        if self._buffer is not None and self._buffer.nbytes >= nbytes:
            return self._buffer
        if self._buffer is not None:
            self.llm.collective_rpc("rule_detach_buffer")
            self._buffer.close()
            self._buffer = None
        buf = vllm_engine.WeightBuffer(nbytes)
        try:
            self.llm.collective_rpc("rule_attach_buffer", args=(buf.path, nbytes))
        except BaseException:
            buf.close()
            raise
        buf.unlink()
        self._buffer = buf
        return buf

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: DataProto) -> DataProto:
        from vllm import SamplingParams

        if self.sleeping or not self.weights_current:
            raise RuntimeError("the vLLM engine is asleep or holds stale weights: call ready() before generate()")
        meta = prompts.meta_info
        max_new = int(meta["max_new_tokens"])
        base = sampling_kwargs(meta, self.eos)
        ids, mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]
        if base["temperature"] > 0 and "seed" in meta:
            params = [SamplingParams(**base, seed=s) for s in row_seeds(int(meta["seed"]), len(ids))]
        else:
            params = SamplingParams(**base)
        token_prompts = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
        outputs = self.llm.generate(token_prompts, params, use_tqdm=False)
        pad = self.tokenizer.pad_token_id
        responses = torch.full((len(outputs), max_new), pad, dtype=torch.long)
        for i, out in enumerate(outputs):
            toks = list(out.outputs[0].token_ids)[:max_new]
            if toks:
                responses[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return assemble(prompts, responses, self.eos, pad)

    def close(self) -> None:
        """Shut the engine down (its processes exit) and drop vLLM's process-group state (a later engine in this
        process starts clean); then the transfer buffer goes."""
        llm, self.llm = self.llm, None
        try:
            shutdown_engine(llm)
        finally:
            buf, self._buffer = self._buffer, None
            if buf is not None:
                buf.close()
