"""Rollout engines: Hugging Face ``generate`` (on the actor's FSDP module) and vLLM (colocated, CPU or GPU).

Both take a left-padded prompt batch and return the verl layout, responses right-padded to ``max_new_tokens``:
``prompts [B, P]``, ``responses [B, T]``, ``input_ids``/``attention_mask``/``position_ids [B, P+T]`` and
``response_mask [B, T]`` (1 up to and including the first EOS).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import torch

from verl.config import RolloutConfig
from verl.protocol import DataProto
from verl.utils.vllm_engine import cpu_bind, require_vllm, shutdown_engine, start_engine
from verl.workers import fsdp_utils


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
    """``generate`` on the actor's module (root FSDP params gathered; ``synced_gpus`` keeps ranks in step)."""

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
        with torch.no_grad(), fsdp_utils.unsharded_params(self.module):
            for mb in prompts.split(self.cfg.micro_batch_size):
                ids = mb.batch["input_ids"].to(self.device)
                gen = self.module.generate(input_ids=ids, attention_mask=mb.batch["attention_mask"].to(self.device),
                                           **kwargs)
                outs.append(pad_right(gen[:, ids.shape[1]:].cpu(), max_new, self.tokenizer.pad_token_id))
        return assemble(prompts, torch.cat(outs), self.eos, self.tokenizer.pad_token_id)


def engine_settings(cfg: RolloutConfig, device_type: str, actor_dtype: str, max_model_len: int, seed: int,
                    world_size: int = 1) -> tuple[dict, dict]:
    """``(LLM kwargs, environment)`` for a colocated engine; pure, so the choices are unit-tested without vLLM.

    One worker runs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: starts in seconds and takes
    the weights as tensors); several FSDP ranks each run a private engine process (vLLM would otherwise join the
    trainer's process group).
    """
    cpu = device_type != "cuda"
    kwargs = dict(
        dtype=actor_dtype if cfg.dtype == "auto" else cfg.dtype, max_model_len=max_model_len, seed=seed,
        tensor_parallel_size=cfg.tensor_parallel_size, max_num_seqs=cfg.max_num_seqs,
        enforce_eager=cpu if cfg.enforce_eager is None else cfg.enforce_eager,
        enable_prefix_caching=True,  # the n copies of a prompt share its KV blocks
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


class VLLMRollout:
    """A vLLM engine colocated with the actor (CPU or GPU). ``sync_weights`` pushes the actor's full weights into it
    (once per training step: the worker tracks staleness); on GPU with ``free_cache_engine`` the engine sleeps
    (KV cache freed, weights offloaded) between generations so FSDP gets the memory back.
    vLLM is imported here only, never at package import.
    """

    def __init__(self, model_path: str, tokenizer, cfg: RolloutConfig, max_model_len: int, actor_dtype: str,
                 device: torch.device, seed: int = 0, world_size: int = 1, generation_config=None):
        require_vllm("worker.rollout.name=vllm")
        from verl.models.embedded import resolve_model_path

        self.tokenizer, self.cfg, self.device = tokenizer, cfg, device
        kwargs, env = engine_settings(cfg, device.type, actor_dtype, max_model_len, seed, world_size)
        self.in_process = env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        self.sleeps = bool(kwargs.get("enable_sleep_mode"))
        self.llm, self.start_seconds = start_engine(resolve_model_path(model_path), env, **kwargs)
        self.eos = stop_ids(tokenizer, cfg, generation_config)
        self.asleep = False
        self.sync_seconds = 0.0
        self._shm: str | None = None

    # ------------------------------------------------------------------ memory (GPU sleep mode)
    def sleep(self) -> None:
        """Free the KV cache and offload the weights (GPU sleep mode); no-op on CPU or without free_cache_engine."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self, tags: list[str] | None = None) -> None:
        if self.asleep:
            self.llm.wake_up(tags=tags)
            if tags is None or "kv_cache" in tags:
                self.asleep = False

    # ------------------------------------------------------------------ weights
    def sync_weights(self, state_dict: dict[str, torch.Tensor], tie_word_embeddings: bool = False) -> float:
        """Load the actor's full (HF-named) weights into the engine; returns the seconds it took.

        vLLM's workers ``reload_weights`` (in place, checkpoint format). A tied ``lm_head.weight`` is passed
        explicitly (vLLM would keep the old head), and the prefix cache is reset so no KV block computed with the
        old weights is reused.
        """
        t0 = time.time()
        sd = dict(state_dict)
        if tie_word_embeddings and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        self.wake(["weights"])
        if self.in_process:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(sd.items()),
                                                              "is_checkpoint_format": True})
        else:  # a separate engine process: hand the weights over as a safetensors folder in shared memory
            from safetensors.torch import save_file

            if self._shm is None:
                root = "/dev/shm" if os.path.isdir("/dev/shm") else None
                self._shm = tempfile.mkdtemp(prefix="rule_vllm_sync_", dir=root)
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()},
                      os.path.join(self._shm, "model.safetensors"))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self._shm,
                                                              "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.sync_seconds = time.time() - t0
        return self.sync_seconds

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: DataProto) -> DataProto:
        from vllm import SamplingParams

        self.wake()
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
        """Shut the engine down and drop vLLM's process-group state (a later engine in this process starts clean)."""
        llm, self.llm = getattr(self, "llm", None), None
        shutdown_engine(llm)
        if self._shm:
            shutil.rmtree(self._shm, ignore_errors=True)
            self._shm = None
