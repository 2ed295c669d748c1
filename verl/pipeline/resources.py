"""Memory and disk plans of a pipeline run, composed from the settings and each stage's resolved configuration.

For every GPU stage the planner asks ``Resources`` for a per-GPU memory plan (``verl.utils.memory``): the plan as
configured, and when that does not fit, the least invasive knobs that make it fit (offload the optimizer, then the
reference and the parameters, then LoRA), never overriding a key the user set. ReBO stages also get vLLM's
``gpu_memory_utilization`` sized from the plan. The disk plan adds up the checkpoints and outputs of the stages
still to run against the free space under LOG_DIR.

Model shapes come from the model's ``config.json`` (a local folder, the embedded model, the Hugging Face cache) or
a table of the paper's models for hub ids, with the parameters counted exactly on the meta device (no download).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

from RS.args import batch_plan
from verl.models.embedded import EMBEDDED_ALIASES, EMBEDDED_MODEL, embedded_model_dir
from verl.utils import memory as mem
from verl.utils.checkpoint import run_checkpoint_bytes
from verl.utils.memory import GB, Choice, Knob, MemoryPlan, ModelShape

DEFAULT_GPU_GB = 80.0  # the paper's cards, for plans made on a machine without GPUs
LORA_RANK = 64  # the rank the plan chooses when only LoRA fits
CHUNK_TOKENS = 512  # log-prob chunk the plan chooses when the key exists and is off (the trainer's default)
EVAL_OUTPUT_BYTES = 20 * 10**6  # one evaluation's result JSON (generations included) and log, an upper estimate
RS_OFFLOAD_CONFIG = "RS/configs/accelerate_fsdp_offload.yaml"
UNCUT_ROW_TOKENS = 1024
"""Tokens per row an RS.train plan assumes with ``cutoff_len 0`` (no cutoff; RS.train allows it for the MUSE data
only): a bound of the MUSE RS rows (the forget few-shot prefix, a question and its refusal, or a completion row): the
longest is 549 SmolLM2 tokens (~2,300 characters; tests/test_resources.py measures it), and Llama-2's tokenizer (the
MUSE target model's) needs fewer than 1.5x as many tokens as SmolLM2's for English text."""

_LLAMA3_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False}
# config.json fields of the paper's models, for hub ids that are neither local nor in the Hugging Face cache
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B-Instruct": {**_LLAMA3_8B, "max_position_embeddings": 131072},
    "meta-llama/Meta-Llama-3.1-8B-Instruct": {**_LLAMA3_8B, "max_position_embeddings": 131072},
    "Qwen/Qwen2.5-3B-Instruct": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 2048,
                                 "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                                 "num_key_value_heads": 2, "max_position_embeddings": 32768,
                                 "tie_word_embeddings": True},
    "Qwen/Qwen2.5-7B-Instruct": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
                                 "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                                 "num_key_value_heads": 4, "max_position_embeddings": 32768,
                                 "tie_word_embeddings": False},
    # MUSE-Books' target model is a Llama-2-7B fine-tune
    "muse-bench/MUSE-Books_target": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                                     "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                                     "num_key_value_heads": 32, "max_position_embeddings": 4096,
                                     "tie_word_embeddings": False},
    "smollm2-135m-instruct": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                              "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                              "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
                              "tie_word_embeddings": True},
}


# ------------------------------------------------------------------------------------------------ model shapes
def meta_param_count(cfg: dict) -> int:
    """Exact parameter count of a config's causal LM, built on the meta device (no weights allocated or read)."""
    import torch  # start-up cost: torch; the pipeline's --help and plans without GPUs stay fast
    from transformers import AutoConfig, AutoModelForCausalLM  # start-up cost (as torch)

    skip = ("architectures", "transformers_version")
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in skip}
    config = AutoConfig.for_model(**kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # a tied head is counted once


def _config_of(model: str) -> tuple[dict, str] | None:
    """(config.json dict, where it was read) of a model name, offline."""
    if model in EMBEDDED_ALIASES:
        cfg_file = embedded_model_dir() / "config.json"
        if cfg_file.is_file():
            return json.loads(cfg_file.read_text()), "the embedded model's config.json"
        return KNOWN_CONFIGS[EMBEDDED_MODEL], "table of known models"
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), str(path / "config.json")
    known = {k.lower(): v for k, v in KNOWN_CONFIGS.items()}
    if model.lower() in known:
        return known[model.lower()], "table of known models"
    try:
        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id or cache: no shapes, no plan
        cached = None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), "the Hugging Face cache"
    return None


@functools.lru_cache(maxsize=16)
def model_shape(model: str, exact: bool = True) -> ModelShape | None:
    """The model's shapes and parameter count, offline; None when its config cannot be found here. ``exact``:
    counted on the meta device (imports transformers, a few seconds), else by the Llama-layout formula (equal for
    the models of the table; enough for a disk estimate)."""
    found = _config_of(model)
    if found is None:
        return None
    cfg, source = found
    cfg = cfg.get("text_config", cfg)
    n, how = None, "Llama-layout formula"
    if exact:
        try:
            n, how = meta_param_count(cfg), "meta-device count"
        except Exception:  # noqa: BLE001 - an architecture transformers cannot build: the formula
            pass
    return mem.shape_from_config(cfg, n, Path(model).name if Path(model).is_dir() else model, f"{source}, {how}")


# ------------------------------------------------------------------------------------------------ config helpers
def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (the user's settings, to lock them)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(cfg: dict, key: str, default=None):
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _has(cfg: dict, key: str) -> bool:
    return _get(cfg, key, _MISSING) is not _MISSING


_MISSING = object()


def apply(cfg: dict, values: dict[str, Any]) -> dict:
    """A copy of a nested config with dotted ``values`` set."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _fmt_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def knob_text(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in values.items())


# ------------------------------------------------------------------------------------------------ ReBO
def rebo_memory(cfg: dict, world: int, engine: str, size_vllm: bool) -> mem.ReboMemory:
    """``ReboMemory`` from a resolved ReBO config dict (``verl.config.PPOConfig.to_dict()``). Keys another version
    may lack (LoRA, log-prob chunking) count as off."""
    d, w, a = cfg["data"], cfg["worker"], cfg["algorithm"]
    actor, ref, critic, ro = w["actor"], w["ref"], w["critic"], w["rollout"]
    val_rows = d.get("val_batch_size", 0) if d.get("val_files") else 0
    lora = actor.get("lora") or {}
    return mem.ReboMemory(
        world=world, prompt_len=d["max_prompt_length"], response_len=d["max_response_length"],
        gen_rows=max(d["rollout_batch_size"] * ro["n"], val_rows),
        micro_experience=actor["micro_batch_size_per_device_for_experience"],
        actor=mem.RoleMemory(True, actor["offload_params"], actor["offload_optimizer"],
                             actor["micro_batch_size_per_device_for_update"], actor["gradient_checkpointing"]),
        ref=mem.RoleMemory(bool(a["use_kl_loss"] or a["kl_coef"] > 0), ref["offload_params"]),
        critic=mem.RoleMemory(a["adv_estimator"] == "gae", critic["offload_params"], critic["offload_optimizer"],
                              critic["micro_batch_size_per_device_for_update"], critic["gradient_checkpointing"]),
        lora_rank=int(lora.get("rank") or 0), lora_targets=lora.get("target_modules") or "all-linear",
        chunk_tokens=actor.get("logprob_chunk_tokens") or None,
        ref_chunk_tokens=ref.get("logprob_chunk_tokens") or None,
        optimized_forward=actor.get("optimized_forward", True),
        engine=engine, max_num_seqs=ro["max_num_seqs"], kv_cache_bytes=ro.get("kv_cache_bytes"),
        gpu_memory_utilization=ro["gpu_memory_utilization"], size_vllm=size_vllm and engine == "vllm",
        hf_micro_batch=ro.get("micro_batch_size", 64),
        sync_chunk_bytes=int(float(ro.get("sync_chunk_mb") or 512) * 2**20),
        engine_processes=world > 1 or int(ro.get("tensor_parallel_size") or 1) > 1,
    )


def _chunk_off(cfg: dict) -> dict[str, int]:
    """The log-prob chunk keys this trainer has and the config turns off (0), set to CHUNK_TOKENS."""
    keys = [f"worker.{r}.logprob_chunk_tokens" for r in ("actor", "ref")]
    return {k: CHUNK_TOKENS for k in keys if _has(cfg, k) and not _get(cfg, k)}


def rebo_candidates(cfg: dict) -> list[list[Knob]]:
    """Knob sets, least invasive first; keys the config does not have (an older or newer trainer) are left out."""
    critic = cfg["algorithm"]["adv_estimator"] == "gae"
    roles = ("actor", "critic") if critic else ("actor",)
    opt = Knob("offload optimizer", {f"worker.{r}.offload_optimizer": True for r in roles},
               "AdamW state on the host between steps: the same updates, a host copy each step")
    ref = Knob("offload reference", {"worker.ref.offload_params": True},
               "reference weights on the host: the same log-probs, a slower reference pass")
    params = Knob("offload parameters", {f"worker.{r}.offload_params": True for r in roles},
                  "FSDP CPU offload: weights, gradients and the optimizer step on the host: the same updates, slower "
                  "steps")
    lora = Knob("LoRA", {"worker.actor.lora.rank": LORA_RANK, "worker.actor.lora.alpha": 2 * LORA_RANK},
                "LoRA adapters instead of full fine-tuning (not the paper's method); the reference is the base with "
                "the adapters off")
    chunks = _chunk_off(cfg)
    chunk = Knob("chunked log-probs", chunks, "the same log-probs, the fp32 log-softmax computed a chunk of tokens "
                 "at a time")
    has_lora = _has(cfg, "worker.actor.lora.rank")
    first = [chunk] if chunks else []
    sets = [[opt], [opt, ref], [params, ref]] + ([[lora], [lora, params]] if has_lora else [])
    return ([first] if first else []) + [first + s for s in sets]


# ------------------------------------------------------------------------------------------------ RS.train
def sft_memory(cfg: dict, world: int, fsdp: bool, offload: bool) -> mem.SftMemory:
    """``SftMemory`` from RS.train's resolved arguments (``RS.args.args_to_dict``)."""
    from RS.stages import get_stage  # start-up cost: RS.stages imports torch (the RS losses)

    stage = get_stage(cfg["stage"])
    rows, _ = batch_plan(cfg["total_batch_size"], cfg["per_device_train_batch_size"], world,
                         cfg["gradient_accumulation_steps"])
    dpo = stage.forget_loss == "dpo"
    lora = cfg["finetuning_type"] == "lora"
    return mem.SftMemory(
        world=world, rows=rows, tokens=row_tokens(cfg), bf16=cfg["bf16"], fsdp=fsdp, offload=offload,
        lora_rank=cfg["lora_rank"] if lora else 0, lora_targets="all-linear" if cfg["lora_target"] == "all"
        else cfg["lora_target"], gradient_checkpointing=bool(cfg.get("gradient_checkpointing", False)),
        needs_ref=stage.needs_ref, policy_passes=1 + (stage.retain is not None) + dpo,
        ref_passes=(2 if dpo else 1 if stage.forget_loss == "npo" else 0) + (stage.retain == "kl"),
    )


def row_tokens(cfg: dict) -> int:
    """Tokens per row of an RS.train stage: its ``cutoff_len``, or ``UNCUT_ROW_TOKENS`` without a cutoff (0)."""
    return cfg["cutoff_len"] if cfg["cutoff_len"] > 0 else UNCUT_ROW_TOKENS


def sft_candidates(cfg: dict, repo: Path) -> list[list[Knob]]:
    gc = [Knob("gradient checkpointing", {"gradient_checkpointing": True},
               "activations recomputed in the backward: the same updates, ~30% more compute")] \
        if "gradient_checkpointing" in cfg and not cfg["gradient_checkpointing"] else []
    offload = [Knob("offload (FSDP)", {"accelerate_config": RS_OFFLOAD_CONFIG},
                    "FSDP CPU offload of weights, gradients and the optimizer step: the same updates, slower")] \
        if (repo / RS_OFFLOAD_CONFIG).is_file() else []
    lora = [Knob("LoRA", {"finetuning_type": "lora"}, "LoRA adapters instead of full fine-tuning (not the paper's "
                                                       "method)")]
    sets = [gc, gc + offload, gc + lora, gc + lora + offload]  # offload: only once its accelerate config exists
    out: list[list[Knob]] = []
    for s in sets:
        if s and s not in out:
            out.append(s)
    return out


# ------------------------------------------------------------------------------------------------ results
@dataclass
class StageMemory:
    """One stage's memory decision, for the plan's table and messages."""

    name: str  # step name (rs, rule_grpo, ...)
    title: str
    kind: str  # rs | inject | baseline | rebo
    configured: MemoryPlan  # today's settings as they are (vLLM at its configured share)
    choice: Choice  # the plan the run uses (knobs and sized vLLM share)
    overrides: dict[str, Any] = field(default_factory=dict)  # keys the pipeline sets on the stage
    message: str = ""  # why it does not fit and what would (empty when it fits)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.choice.fits


def _gb(n: float) -> str:
    return f"{n / GB:.1f}"


class Resources:
    """Memory plans of a pipeline's GPU stages (one per stage, the same for every target): ``n_gpus`` ranks of
    ``gpu_bytes`` each (``gpu_source`` says where that number came from); ``engine_available``: vLLM importable where
    the run happens (``worker.rollout.name=auto`` falls back to HF generate without it)."""

    def __init__(self, model: str, n_gpus: int, gpu_bytes: int, gpu_source: str, repo: Path,
                 engine_available: bool = True):
        self.model, self.n_gpus, self.gpu_bytes, self.gpu_source, self.repo = model, n_gpus, gpu_bytes, gpu_source, repo
        self.engine_available = engine_available
        self.shape = model_shape(model)

    # ---- ReBO
    def rebo_engine(self, cfg: dict) -> str:
        name = cfg["worker"]["rollout"]["name"]
        return "hf" if name == "hf" or (name == "auto" and not self.engine_available) else "vllm"

    def _rebo_builder(self, cfg: dict, world: int, gpu_bytes: int, size_vllm: bool):
        engine = self.rebo_engine(cfg)
        shape = self.shape

        def build(values: dict[str, Any]) -> MemoryPlan:
            return mem.rebo_plan(shape, rebo_memory(apply(cfg, values), world, engine, size_vllm), gpu_bytes)

        return build

    def fit_rebo(self, name: str, cfg: dict, user: dict[str, Any]) -> StageMemory | None:
        """Plan a ReBO stage; ``user``: the dotted keys the user set for it (budget, overlays, variables)."""
        if self.shape is None or self.n_gpus < 1:
            return None
        title = f"{name} (ReBO)"
        ro = cfg["worker"]["rollout"]
        size = not any(k in user for k in ("worker.rollout.gpu_memory_utilization", "worker.rollout.kv_cache_bytes")) \
            and ro.get("kv_cache_bytes") is None
        configured = self._rebo_builder(cfg, self.n_gpus, self.gpu_bytes, False)({})
        choice = mem.choose(self._rebo_builder(cfg, self.n_gpus, self.gpu_bytes, size), rebo_candidates(cfg), user)
        sm = StageMemory(name, title, "rebo", configured, choice)
        if choice.fits:
            sm.overrides = dict(mem.knob_values(choice.knobs))
            if choice.plan.vllm is not None and choice.plan.vllm.sized:
                sm.overrides["worker.rollout.gpu_memory_utilization"] = choice.plan.vllm.utilization
        else:
            sm.message = self._cannot_fit(sm, lambda w, g: self._rebo_builder(cfg, w, g, size),
                                          rebo_candidates(cfg), user, self._rebo_extras(cfg))
        return sm

    def _rebo_extras(self, cfg: dict) -> list[Knob]:
        """Settings beyond the automatic ones that shrink a plan (they change speed or batch composition)."""
        roles = ["actor"] + (["critic"] if cfg["algorithm"]["adv_estimator"] == "gae" else [])
        micro = {f"worker.{r}.micro_batch_size_per_device_for_update": 1 for r in roles}
        micro["worker.actor.micro_batch_size_per_device_for_experience"] = 1
        out = [Knob("micro-batches of 1", micro, "smaller logits and activation peaks, slower passes")]
        chunks = _chunk_off(cfg)
        if chunks:
            out.insert(0, Knob("chunked log-probs", chunks, "exact"))
        return out

    # ---- RS.train
    def _sft_builder(self, cfg: dict, world: int, gpu_bytes: int):
        shape = self.shape

        def build(values: dict[str, Any]) -> MemoryPlan:
            c = apply(cfg, {k: v for k, v in values.items() if k != "accelerate_config"})
            offload = "accelerate_config" in values
            return mem.sft_plan(shape, sft_memory(c, world, fsdp=world > 1 or offload, offload=offload), gpu_bytes)

        return build

    def fit_sft(self, name: str, kind: str, cfg: dict, user: dict[str, Any]) -> StageMemory | None:
        """Plan an RS.train stage; ``user``: the flags the user set for it. The chosen ``overrides`` are RS.train
        flags and ``accelerate_config`` (the FSDP offload config)."""
        if self.shape is None or self.n_gpus < 1:
            return None
        title = f"{name} (RS.train)"
        build = self._sft_builder(cfg, self.n_gpus, self.gpu_bytes)
        configured = build({})
        choice = mem.choose(build, sft_candidates(cfg, self.repo), user)
        sm = StageMemory(name, title, kind, configured, choice)
        if cfg["cutoff_len"] <= 0:
            sm.notes.append(f"cutoff_len 0 (no cutoff): rows planned at {UNCUT_ROW_TOKENS:,} tokens, a bound of the "
                            "MUSE RS rows (the longest: 549 SmolLM2 tokens)")
        if choice.fits:
            sm.overrides = dict(mem.knob_values(choice.knobs))
        else:
            sm.message = self._cannot_fit(sm, lambda w, g: self._sft_builder(cfg, w, g), sft_candidates(cfg, self.repo),
                                          user, [])
            if not (self.repo / RS_OFFLOAD_CONFIG).is_file():
                sm.message += f" (RS.train's FSDP CPU offload config, {RS_OFFLOAD_CONFIG}, is not in this checkout)"
        return sm

    # ---- when nothing fits
    def _cannot_fit(self, sm: StageMemory, builder, candidates, user, extras: list[Knob]) -> str:
        """Why a stage cannot fit and which settings would make it fit."""
        plan = sm.choice.plan
        head = (f"{sm.title} does not fit {self.n_gpus} x {_gb(self.gpu_bytes)} GB GPU(s) ({_gb(plan.usable)} GB "
                f"usable after the {mem.MARGIN:.0%} margin): as configured {sm.choice.base.why_not()}")
        if sm.choice.knobs:
            head += f"; even with {knob_text(mem.knob_values(sm.choice.knobs))}: {plan.why_not()}"
        ways = []
        for cand, clash in sm.choice.blocked:
            test = mem.choose(builder(self.n_gpus, self.gpu_bytes), [cand], {})
            if test.fits:
                ways.append(f"{knob_text(mem.knob_values(cand))} (you set {knob_text(clash)})")
        values = mem.knob_values(sm.choice.knobs)
        for i in range(len(extras) + 1):  # the chosen knobs plus ever more of the extra settings
            extra = {**values, **mem.knob_values(extras[:i])}
            if i and builder(self.n_gpus, self.gpu_bytes)(extra).fits:
                ways.append(knob_text(extra))
                break
            seqs = self._max_num_seqs_that_fit(builder, extra)
            if seqs:
                ways.append(knob_text({**extra, "worker.rollout.max_num_seqs": seqs}) +
                            " (fewer sequences decoded together: slower rollouts)")
                break
        for w in (2, 4, 8):
            if w > self.n_gpus and mem.choose(builder(w, self.gpu_bytes), candidates, user).fits:
                ways.append(f"GPUS with {w} GPUs of this size")
                break
        need = self._gpu_bytes_that_fit(builder, candidates, user)
        if need:
            ways.append(f"GPUs of >= {need / GB:.0f} GB (--gpu-memory / GPU_MEMORY when planning elsewhere)")
        return head + ". Would fit with: " + ("; or ".join(ways) if ways else "no setting the plan knows")

    def _max_num_seqs_that_fit(self, builder, values: dict[str, Any]) -> int:
        for seqs in (128, 64, 32, 16, 8, 4, 2, 1):
            plan = builder(self.n_gpus, self.gpu_bytes)({**values, "worker.rollout.max_num_seqs": seqs})
            if plan.vllm is None:
                return 0
            if plan.fits:
                return seqs
        return 0

    def _gpu_bytes_that_fit(self, builder, candidates, user) -> int | None:
        lo, hi = self.gpu_bytes, 1024 * GB
        if not mem.choose(builder(self.n_gpus, hi), candidates, user).fits:
            return None
        while hi - lo > GB:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if mem.choose(builder(self.n_gpus, mid), candidates, user).fits else (mid, hi)
        return hi

    # ---- printing
    def header(self) -> str:
        s = self.shape
        return (f"memory plan per GPU (GB = 1e9 bytes): {self.n_gpus} x {_gb(self.gpu_bytes)} GB ({self.gpu_source}), "
                f"{mem.MARGIN:.0%} margin -> {_gb(self.gpu_bytes * (1 - mem.MARGIN))} GB usable; {s.name}: "
                f"{s.n_params:,} parameters ({s.source}), {s.n_layers} layers, hidden {s.hidden}, vocab {s.vocab}")


COLUMN_TITLES = ("weights", "grads", "optim", "ref", "critic", "logits", "activ", "gather", "ctx", "vLLM")


def table_rows(sm: StageMemory) -> list[str]:
    """The stage's rows: as configured, and as planned when that differs (each column at its largest phase)."""
    rows = [("configured", sm.configured)]
    if sm.choice.knobs or sm.choice.plan.vllm is not None:
        rows.append(("planned" if sm.fits else "best tried", sm.choice.plan))
    out = []
    for label, plan in rows:
        cols = "".join(f"{_gb(plan.column(c)):>7}" for c in mem.COLUMNS)
        verdict = "yes" if plan.fits else "NO"
        out.append(f"  {sm.name:<11}{label:<11}{plan.world:>3}{cols}{_gb(plan.peak):>7} {plan.peak_phase:<15}{verdict}")
    return out


def table_header() -> str:
    return f"  {'stage':<11}{'plan':<11}{'W':>3}" + "".join(f"{t:>7}" for t in COLUMN_TITLES) + \
        f"{'peak':>7} {'peak phase':<15}fits"


def detail_lines(sm: StageMemory) -> list[str]:
    """Which knobs the plan chose and why, the phases, the vLLM budget, host memory."""
    out = []
    plan = sm.choice.plan
    if sm.choice.knobs and sm.fits:
        out.append(f"    {sm.name}: without offload or LoRA {sm.choice.base.why_not()} -> chose "
                   + "; ".join(f"{k.name} ({knob_text(k.values)}: {k.why})" for k in sm.choice.knobs))
        saved = sm.choice.base.resident() - plan.resident()
        if saved > 0:
            out.append(f"    {sm.name}: offload/LoRA removes {_gb(saved)} GB per GPU of state held through every phase")
    out.append(f"    {sm.name}: phases (GB): " + ", ".join(f"{p} {_gb(b)}" for p, b in plan.phase_bytes().items()))
    v = plan.vllm
    if v is not None:
        kv_tokens = v.kv_available // max(1, v.kv_min // v.seq_tokens)
        share = f"worker.rollout.gpu_memory_utilization={v.utilization:.2f}" + (
            " (sized from the plan; configured " f"{sm.configured.vllm.utilization:.2f})" if v.sized else " (as set)")
        out.append(f"    {sm.name}: vLLM {share}: {_gb(v.budget)} GB = weights {_gb(v.weights)} + work {_gb(v.work)} + "
                   f"KV {_gb(v.kv_available)} ({kv_tokens:,} tokens; {v.seqs} sequences x {v.seq_tokens} need "
                   f"{_gb(v.kv_needed)})")
    if plan.host_bytes:
        out.append(f"    {sm.name}: {host_line(plan)}")
    out += [f"    {sm.name}: note: {n}" for n in sm.notes]
    return out


def host_line(plan: MemoryPlan) -> str:
    """The plan's host memory per node in words (ReBO: offload plus the larger of the weight sync and the save)."""
    p = plan.host_parts
    if not p:
        return f"host memory per node for offload: {_gb(plan.host_bytes)} GB"
    sync = p.get("weight sync", 0)
    how = (f"{plan.world} rank(s) x {_gb(sync / plan.world)}: one FSDP unit's copies and a transfer buffer each, "
           "never a full copy of the weights" if sync else "no vLLM engine")
    return (f"host memory per node: {_gb(plan.host_bytes)} GB at most = offload {_gb(p.get('offload', 0))} + the "
            f"larger of the weight sync {_gb(sync)} ({how}) and a checkpoint save {_gb(p.get('checkpoint save', 0))} "
            "(rank 0 gathers the fp32 weights for the HF export)")


def memory_report(res: Resources | None, steps: list) -> list[str]:
    """The memory plan's lines: the table (one row per stage, the same for every target) and each stage's choices."""
    seen: dict[str, StageMemory] = {}
    for st in steps:
        if st.memory is not None and st.name not in seen:
            seen[st.name] = st.memory
    if res is None or not seen:
        return []
    lines = [res.header(), table_header()]
    for sm in seen.values():
        lines += table_rows(sm)
    for sm in seen.values():
        lines += detail_lines(sm)
        if not sm.fits:
            lines.append(f"    {sm.name}: DOES NOT FIT: {sm.message}")
    return lines


# ------------------------------------------------------------------------------------------------ disk
@dataclass(frozen=True)
class StageDisk:
    """One stage's disk use: ``after`` stays once it has ended, ``peak`` is its largest while it runs (checkpoints
    written beside the kept ones, resume state not yet dropped)."""

    peak: int
    after: int
    what: str

    @property
    def transient(self) -> int:
        return self.peak - self.after


def sft_disk(cfg: dict, shape: ModelShape) -> StageDisk:
    """An RS.train run's folder as ``RS.checkpoint`` keeps it: the epoch checkpoints (``--save_strategy epoch`` when
    epochs decide the length; ``--save_total_limit`` and ``--save_keep_epochs``) and the final model, each in the
    save dtype (``--save_dtype``: the training precision), LoRA runs with their adapter. With ``--max_steps`` the run
    is taken to end before its first epoch checkpoint."""
    from RS import checkpoint as rs_ckpt  # start-up cost: RS.checkpoint imports torch

    epochs = math.ceil(cfg["num_train_epochs"]) if cfg.get("save_strategy") == "epoch" and cfg["max_steps"] <= 0 else 0
    dtype = cfg.get("save_dtype", "auto")
    dtype = dtype if dtype != "auto" else ("bfloat16" if cfg["bf16"] else "float32")
    lora = shape.lora_params(cfg["lora_rank"], "all-linear" if cfg["lora_target"] == "all" else cfg["lora_target"]) \
        if cfg["finetuning_type"] == "lora" else 0
    limit = cfg.get("save_total_limit", 0)
    keep = {int(e) for e in str(cfg.get("save_keep_epochs", "")).split(",") if e.strip().isdigit()}
    each = rs_ckpt.checkpoint_bytes(shape.n_params, dtype, lora)
    if not epochs:
        return StageDisk(each, each, f"final model in {dtype}")
    kept = ",".join(map(str, sorted(keep))) or "none"
    return StageDisk(rs_ckpt.run_disk_bytes(shape.n_params, dtype, epochs, limit, keep, lora),
                     rs_ckpt.run_disk_after_bytes(shape.n_params, dtype, epochs, limit, keep, lora),
                     f"{epochs} epochs, save_total_limit {limit}, save_keep_epochs {kept}, {_gb(each)} GB each in "
                     f"{dtype}")


def rebo_disk(cfg: dict, shape: ModelShape) -> StageDisk:
    """A ReBO run's checkpoints as ``verl.utils.checkpoint`` keeps them (``run_checkpoint_bytes``):
    ``trainer.save_limit`` kept; while the run goes on the latest (and the previous one while a new one is written)
    holds the resume state (optimizer, fp32 master weights, critic); the last step's checkpoint is written without it
    unless ``trainer.keep_resume_state``."""
    t, actor = cfg["trainer"], cfg["worker"]["actor"]
    total, freq, limit = t["total_steps"], t["save_freq"], t["save_limit"]
    if t.get("total_epochs"):  # steps counted from the data at start: a save beyond the kept ones bounds the peak
        saves = limit + 1 if limit > 0 else total
    else:
        saves = (total // freq + (1 if total % freq else 0)) if freq > 0 else 1
    kept = saves if limit <= 0 else min(saves, limit)
    lora = actor.get("lora") or {}
    rank = int(lora.get("rank") or 0)
    kw = dict(n_params=shape.n_params, dtype=actor["dtype"],
              lora_params=shape.lora_params(rank, lora.get("target_modules") or "all-linear") if rank else 0,
              critic_params=shape.critic_params if cfg["algorithm"]["adv_estimator"] == "gae" else 0)
    state, keep_final = t.get("resume_state", "latest"), bool(t.get("keep_resume_state", False))
    peak, after = run_checkpoint_bytes(saves, kept, state, keep_final, **kw)
    return StageDisk(peak, after, f"{kept} kept of {saves} saves, resume state in the {state}"
                     + (", kept at the last step" if keep_final else ", dropped at the last step"))


@dataclass
class DiskPlan:
    lines: list[str]
    need: int
    free: int
    where: str

    @property
    def fits(self) -> bool:
        return self.need <= self.free

    def refusal(self, log_dir: str) -> str:
        return (f"disk: the stages still to run write {_gb(self.need)} GB under LOG_DIR={log_dir} but {self.where} has "
                f"{_gb(self.free)} GB free: free space, set LOG_DIR on a larger disk, run fewer TARGETS or METHODS at "
                "once, or keep fewer checkpoints (trainer.save_limit of ReBO; RS.train --save_total_limit or "
                "--save_strategy no)")

    def report(self, log_dir: str) -> list[str]:
        return [f"disk plan (GB = 1e9 bytes) under LOG_DIR={log_dir} ({self.where}: {_gb(self.free)} GB free): "
                f"{_gb(self.need)} GB needed for the stages still to run: {'fits' if self.fits else 'DOES NOT FIT'}",
                *self.lines]


def free_bytes(log_dir: str | Path) -> tuple[int, str]:
    """Free bytes on the file system that holds (or will hold) ``log_dir``."""
    p = Path(log_dir).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free, str(p)


def stage_disk(st, shape: ModelShape | None) -> StageDisk | None:
    """A step's disk use (None: it writes nothing counted here, or the model's shapes are unknown)."""
    if st.kind == "eval":
        return StageDisk(EVAL_OUTPUT_BYTES, EVAL_OUTPUT_BYTES, "results")
    if shape is None or st.kind == "data":
        return None
    return rebo_disk(st.config, shape) if st.kind == "rebo" else sft_disk(st.config, shape)


def _stage_line(name: str, d: StageDisk) -> str:
    if d.transient:
        return f"{name} {_gb(d.after)} GB stays, {_gb(d.peak)} GB at its peak ({d.what})"
    return f"{name} {_gb(d.after)} GB ({d.what})"


def disk_plan(targets: list[tuple[str, list]], shape: ModelShape | None, log_dir: str) -> DiskPlan:
    """Disk need of the stages still to run (``targets``: (name, steps) with ``kind``, ``name``, ``done`` and
    ``config`` on each step), against the free space under ``log_dir``: what every stage leaves behind, summed over
    the targets, plus the largest transient of any one stage (stages run one at a time, so one stage's resume state
    and checkpoints written beside the kept ones are on disk at once, on top of what the stages before it left)."""
    free, where = free_bytes(log_dir)
    lines: list[str] = []
    after, worst, worst_at = 0, 0, ""
    for target, steps in targets:
        parts, sub, n_eval = [], 0, 0
        for st in steps:
            d = None if st.done else stage_disk(st, shape)
            if d is None:
                continue
            sub += d.after
            if d.transient > worst:
                worst, worst_at = d.transient, f"{st.name} of {target}"
            if st.kind == "eval":
                n_eval += 1
            else:
                parts.append(_stage_line(st.name, d))
        if n_eval:
            parts.append(f"{n_eval} evaluation(s) {_gb(n_eval * EVAL_OUTPUT_BYTES)} GB")
        after += sub
        if not lines or len(targets) == 1:
            lines.append(f"  {target}: {_gb(sub)} GB stays" + ("" if parts else ": nothing left to run"))
            lines += [f"    {p}" for p in parts]
        else:
            lines.append(f"  {target}: {_gb(sub)} GB stays")
    lines.append(f"  total: {_gb(after)} GB that stays + {_gb(worst)} GB the largest transient"
                 + (f" ({worst_at}: checkpoints beside the kept ones, resume state)" if worst else ""))
    return DiskPlan(lines, after + worst, free, where)


__all__ = ["DiskPlan", "KNOWN_CONFIGS", "Resources", "StageDisk", "StageMemory", "detail_lines", "disk_plan", "flat",
           "memory_report", "meta_param_count", "model_shape", "rebo_memory", "sft_memory", "table_header",
           "table_rows"]
