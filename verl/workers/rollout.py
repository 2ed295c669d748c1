"""Rollout engines: Hugging Face ``generate`` (on the actor's FSDP module) and vLLM (colocated, CPU or GPU).

Both take a left-padded prompt batch and return the verl layout, responses right-padded to ``max_new_tokens``:
``prompts [B, P]``, ``responses [B, T]``, ``input_ids``/``attention_mask``/``position_ids [B, P+T]`` and
``response_mask [B, T]`` (1 up to and including the first EOS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from verl.config import RolloutConfig
from verl.models.embedded import resolve_model_path
from verl.protocol import DataProto
from verl.utils import vllm_engine
from verl.utils.vllm_engine import cpu_bind, require_vllm, shutdown_engine, start_engine
from verl.workers import fsdp_utils

logger = logging.getLogger("verl.rollout")

Weights = Mapping[str, torch.Tensor] | Iterable[list[tuple[str, torch.Tensor]]]
"""What a weight sync loads: a dict of HF-named tensors, or groups of them (one FSDP unit each) as they are gathered."""
SYNC_OK, SYNC_HELD, SYNC_FAILED = 0, 1, 2  # a reload's outcome on one rank; the ranks agree on the worst


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
    out = []
    for f in sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                numel = 1
                for d in h.get_slice(k).get_shape():
                    numel *= int(d)
                out.append((k, numel * dtype.itemsize))
    return out


def stream_chunks(groups: Iterable[list[tuple[str, torch.Tensor]]], chunk_bytes: int,
                  nbytes: Callable[[torch.Tensor], int]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``vllm_engine.plan_chunks`` over a stream: groups joined into chunks of at most ``chunk_bytes`` (``nbytes``
    per tensor), a group never split, a larger group a chunk of its own. A group is read only once the chunk before
    it is full, so the caller holds one chunk and one group, not the stream."""
    current: list[tuple[str, torch.Tensor]] = []
    used = 0
    for group in groups:
        n = sum(nbytes(t) for _, t in group)
        if current and used + n > chunk_bytes:
            yield current
            current, used = [], 0
        current.extend(group)
        used += n
    if current:
        yield current


_LAYER = re.compile(r"^(.*\.layers\.\d+)\.")


def layer_groups(group: list[tuple[str, torch.Tensor]]) -> list[list[tuple[str, torch.Tensor]]]:
    """``group`` split as ``vllm_engine.plan_chunks`` groups tensors: a decoder layer's together (vLLM processes a
    layer once all its weights are in), every other tensor alone (the root unit's embeddings and head need not
    share a chunk, so the transfer buffer stays the size of the largest layer or tensor)."""
    layers: dict[str, list[tuple[str, torch.Tensor]]] = {}
    rest = []
    for name, t in group:
        m = _LAYER.match(name)
        if m:
            layers.setdefault(m.group(1), []).append((name, t))
        else:
            rest.append([(name, t)])
    return [*layers.values(), *rest]


def with_tied_head(group: list[tuple[str, torch.Tensor]], tied: bool) -> list[tuple[str, torch.Tensor]]:
    """``group`` plus ``lm_head.weight`` = the input embeddings when the model ties them and the group lacks the head
    (vLLM would keep its old head otherwise)."""
    names = {n for n, _ in group}
    if tied and "model.embed_tokens.weight" in names and "lm_head.weight" not in names:
        return [*group, ("lm_head.weight", dict(group)["model.embed_tokens.weight"])]
    return group


def agree(status: int, device: torch.device) -> int:
    """The worst ``status`` over the ranks of the default process group (this rank's alone without one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return status
    t = torch.tensor([status], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


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
    ``WeightBuffer`` (no file left on disk; its size is checked against free space before the engine starts). The
    worker streams them one FSDP unit at a time (``Actor.rollout_weights``), so a sync holds one unit and one chunk
    per rank, never a full copy of the model.
    """

    def __init__(self, model_path: str, tokenizer, cfg: RolloutConfig, max_model_len: int, actor_dtype: str,
                 device: torch.device, seed: int = 0, world_size: int = 1, generation_config=None):
        require_vllm("worker.rollout.name=vllm")

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
        self.buffer_hint = 0  # the transfer buffer's size, from the model's tensors (0: grown by the chunks)
        if not self.in_process:  # fail before the engine starts, not at the first sync
            sizes = checkpoint_tensor_bytes(path, self.dtype)
            if sizes:
                self.buffer_hint = vllm_engine.buffer_bytes(sizes, self.chunk_bytes)
                vllm_engine.buffer_dir(self.buffer_hint)
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

    def ready(self, weights_fn: Callable[[], Weights], tie_word_embeddings: bool = False) -> None:
        """Awake, with the actor's current weights. ``weights_fn`` (a collective under FSDP: every rank calls
        ``ready`` at the same point) is called only when a sync is due; it returns the weights as a dict or as
        groups streamed one FSDP unit at a time (``Actor.rollout_weights``), which are gathered while the engine's
        weights are awake and its KV cache still asleep."""
        if not self.weights_current:
            self.sync_weights(weights_fn, tie_word_embeddings)
        self._wake(["kv_cache"])

    # ------------------------------------------------------------------ weights
    def sync_weights(self, weights: Weights | Callable[[], Weights], tie_word_embeddings: bool = False) -> float:
        """Load the actor's full (HF-named) weights into the engine, in place; returns the seconds it took.

        ``weights``: a dict, an iterable of groups of ``(name, tensor)`` (a decoder layer's tensors in one group), or
        a callable returning either, called once per load (a reload calls it again: a stream is consumed once).
        The trainer's CUDA cache is emptied, the weights' memory woken (level 2: uninitialised until loaded), then
        the weights stream in chunk by chunk. A tied ``lm_head.weight`` is passed explicitly (vLLM would keep the
        old head), and the prefix cache is reset so no KV block computed with the old weights is reused.
        """
        t0 = time.time()
        source = weights if callable(weights) else (lambda: weights)
        if "weights" in self.sleeping:
            self._wake(["weights"])  # empties the cache first
        else:
            empty_device_cache(self.device)
        self.weights_current = False  # until every chunk is in
        self._stream(lambda: self._chunks(source(), tie_word_embeddings))
        self.llm.reset_prefix_cache()
        self.weights_current = True
        self.syncs += 1
        self.sync_seconds = time.time() - t0
        return self.sync_seconds

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.dtype) if t.is_floating_point() else t.detach()

    def _nbytes(self, t: torch.Tensor) -> int:
        """A tensor's bytes in the engine dtype, aligned as the transfer buffer places it."""
        return vllm_engine._aligned(t.numel() * (self.dtype.itemsize if t.is_floating_point() else t.element_size()))

    def _chunks(self, weights: Weights, tied: bool) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Chunks of ``(name, tensor)`` of at most ``chunk_bytes`` (engine dtype), a group (a decoder layer) never
        split, a group larger than a chunk alone: a dict as ``vllm_engine.plan_chunks`` orders it, a stream of
        groups in its own order, each group read only when the previous chunk is out (``stream_chunks``)."""
        if isinstance(weights, Mapping):
            sd = dict(weights)
            if tied and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
                sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
            sizes = [(k, self._nbytes(v)) for k, v in sd.items()]
            for names in vllm_engine.plan_chunks(sizes, self.chunk_bytes):
                yield [(n, sd[n]) for n in names]
            return
        groups = (part for g in weights for part in layer_groups(with_tied_head(g, tied)))
        yield from stream_chunks(groups, self.chunk_bytes, self._nbytes)

    def _stream(self, chunks_fn: Callable[[], Iterable[list[tuple[str, torch.Tensor]]]]) -> None:
        """begin -> one call per chunk -> finish, on the engine's worker (``vllm_engine.WeightSyncExtension``).
        Should vLLM keep views into the buffer past a chunk (a layer split over chunks) on any rank, every rank redoes
        the sync with each chunk copied out of the buffer first, and so do later syncs."""
        if not self._load(chunks_fn, self.copy_chunks):
            logger.info("vLLM holds weights of an incomplete layer across chunks: reloading with each chunk copied "
                        "out of the transfer buffer (from now on)")
            self.copy_chunks = True
            self._load(chunks_fn, True)

    def _load(self, chunks_fn, copy: bool) -> bool:
        """One reload; False when the engine of some rank still held views into the buffer after a chunk.

        Every chunk is drawn from ``chunks_fn()`` even after a held view or a failed engine call (drawing a chunk
        gathers FSDP units: a collective every rank must complete), then the ranks agree on the outcome, so a
        failure on one rank stops every rank here instead of leaving the others in a later collective."""
        rpc = self.llm.collective_rpc
        rpc("rule_begin_reload")
        status, error = SYNC_OK, None
        try:
            for chunk in chunks_fn():
                if status != SYNC_OK:
                    continue
                try:
                    if self._send(chunk, copy):
                        status = SYNC_HELD
                except Exception as exc:  # noqa: BLE001 - re-raised below, once every rank has drawn its chunks
                    status, error = SYNC_FAILED, exc
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                rpc("rule_finish_reload")
            raise
        if error is None:
            rpc("rule_finish_reload")
        else:
            with contextlib.suppress(Exception):
                rpc("rule_finish_reload")
        status = agree(status, self.device)
        if error is not None:
            raise error
        if status == SYNC_FAILED:
            raise RuntimeError("the vLLM weight sync failed on another rank (its log has the error)")
        return status == SYNC_OK

    def _send(self, chunk: list[tuple[str, torch.Tensor]], copy: bool) -> bool:
        """One chunk to the engine; True when the engine still holds views into the buffer afterwards."""
        if self.in_process:
            self.llm.collective_rpc("rule_load_weights", args=([(n, self._cast(t)) for n, t in chunk],))
            return False
        need = sum(self._nbytes(t) for _, t in chunk)
        buf = self._ensure_buffer(max(need, self.buffer_hint))
        held = self.llm.collective_rpc("rule_load_buffer", args=(buf.pack(chunk, self.dtype), copy))
        return any(h is not False for h in held)

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
        from vllm import SamplingParams  # optional heavy dependency: vllm

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
