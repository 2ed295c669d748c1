"""Rollout engines: Hugging Face ``generate`` (CPU/GPU, on the actor's FSDP module) and vLLM (colocated, GPU).

Both take a left-padded prompt batch and return the verl layout, responses right-padded to ``max_new_tokens``:
``prompts [B, P]``, ``responses [B, T]``, ``input_ids``/``attention_mask``/``position_ids [B, P+T]`` and
``response_mask [B, T]`` (1 up to and including the first EOS).
"""

from __future__ import annotations

import torch

from verl.config import RolloutConfig
from verl.protocol import DataProto
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
        self.eos = eos_ids(tokenizer, getattr(inner, "generation_config", None))

    def generate(self, prompts: DataProto) -> DataProto:
        meta = prompts.meta_info
        max_new = int(meta["max_new_tokens"])
        do_sample = bool(meta.get("do_sample", True))
        kwargs = dict(max_new_tokens=max_new, do_sample=do_sample, eos_token_id=self.eos,
                      pad_token_id=self.tokenizer.pad_token_id, synced_gpus=self.world_size > 1, use_cache=True)
        if do_sample:
            kwargs.update(temperature=float(meta.get("temperature", 1.0)), top_p=float(meta.get("top_p", 1.0)),
                          top_k=int(meta.get("top_k", 0)) or None)
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


class VLLMRollout:
    """vLLM engine colocated with FSDP training; the actor's full weights are pushed into it before each
    generation (``sync_weights``). GPU only; vLLM is imported here, never at package import.

    Written against vLLM >= 0.7's offline ``LLM`` API; it was not exercised on this project's CPU machines.
    """

    def __init__(self, model_path: str, tokenizer, cfg: RolloutConfig, max_model_len: int, dtype: str):
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - GPU extra
            raise ImportError("worker.rollout.name=vllm needs `pip install -e .[gpu]` (vllm)") from exc
        from verl.models.embedded import resolve_model_path

        self.tokenizer, self.cfg = tokenizer, cfg
        self.llm = LLM(model=resolve_model_path(model_path), tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                       max_model_len=max_model_len, dtype=dtype, enable_sleep_mode=False)
        self.eos = eos_ids(tokenizer)

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:  # pragma: no cover - GPU only
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        if executor is not None and hasattr(executor, "driver_worker"):
            model = executor.driver_worker.worker.model_runner.model
            model.load_weights(state_dict.items())
        else:  # V1 engine: ship the weights to the workers
            self.llm.collective_rpc(lambda self, sd=state_dict: self.model_runner.model.load_weights(sd.items()))

    def generate(self, prompts: DataProto) -> DataProto:  # pragma: no cover - GPU only
        from vllm import SamplingParams

        meta = prompts.meta_info
        max_new = int(meta["max_new_tokens"])
        do_sample = bool(meta.get("do_sample", True))
        params = SamplingParams(
            n=1, max_tokens=max_new, temperature=float(meta.get("temperature", 1.0)) if do_sample else 0.0,
            top_p=float(meta.get("top_p", 1.0)) if do_sample else 1.0, top_k=int(meta.get("top_k", 0)) or -1,
            seed=int(meta["seed"]) if "seed" in meta else None, stop_token_ids=self.eos, detokenize=False,
        )
        ids, mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]
        token_prompts = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
        outputs = self.llm.generate(token_prompts, params, use_tqdm=False)
        pad = self.tokenizer.pad_token_id
        responses = torch.full((len(outputs), max_new), pad, dtype=torch.long)
        for i, out in enumerate(outputs):
            toks = list(out.outputs[0].token_ids)[:max_new]
            responses[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return assemble(prompts, responses, self.eos, pad)
