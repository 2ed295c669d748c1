"""GPU memory arithmetic of a training plan: bytes from model shapes and batch settings, nothing else.

Pure functions and dataclasses (no torch, no model, no project config): callers turn their configuration into
``ModelShape``, ``ReboMemory`` and ``SftMemory`` and get per-GPU byte counts back. Every number is an estimate
of the largest allocation pattern, stated per function; units are bytes, ``GB`` is 10**9 (what a card's label
means; an "80 GB" card holds ~85e9 bytes, so planning against the label errs on the safe side).

Accounting (per GPU = per rank; FSDP FULL_SHARD over ``world`` ranks, NO_SHARD for one):
- trained weights: fp32 master shard ``4 N / W``; fp32 gradients ``4 N / W`` (alive from the first backward of a
  mini-batch to the optimizer step, freed by ``zero_grad(set_to_none=True)``); AdamW ``exp_avg`` + ``exp_avg_sq``
  ``8 N / W``, plus one fp32 temporary of the shard's size while the foreach step runs (``sqrt(exp_avg_sq)``);
- FSDP CPU offload of parameters moves master weights and gradients to the host and runs the optimizer step
  there: nothing of the three stays on the GPU; optimizer offload alone keeps the state on the host between
  steps and brings it to the GPU for the step;
- LoRA: the frozen base stays in the fp32 master dtype it is loaded in (``4 N / W``, no gradients or optimizer
  state), the adapters are trained as above, and the KL reference is the base with the adapters off (no copy);
- the frozen reference: bf16 shard ``2 N / W`` (0 when offloaded to the host, or with LoRA);
- the critic: the actor's backbone without the LM head plus a scalar head, trained like the actor;
- compute copies: the root FSDP unit (embeddings, LM head, final norm) and two decoder layers (the current one
  and the prefetched one) gathered in bf16; doubled in a backward pass (their unsharded bf16 gradients);
- logits of one micro-batch: ``B x T x V x 2`` (bf16) plus the fp32 work of the log-softmax over ``B x T`` tokens,
  or over ``chunk`` tokens at a time when the log-prob pass is chunked: two fp32 copies without gradients (the
  upcast and its log-softmax), three in an update (and the log-softmax's gradient);
- activations with gradient checkpointing: every layer's bf16 input ``L x B x S x H x 2`` plus one layer
  recomputed in full (``34 x B x S x H`` bytes: the per-layer activation size of Korthikanti et al. 2022 with
  fused attention); without checkpointing every layer's full set;
- vLLM (TP=1, one engine per rank): bf16 weights ``2 N``, the KV cache, and the engine's work (prefill
  activations at its batched-token budget, sampler logits, CUDA graphs and its context);
- the weight sync streams one FSDP unit at a time into the engine (its weights awake, its KV cache asleep): the
  largest unit gathered in fp32 on the GPU (``sync_bytes``), its copy in the engine dtype made on the host, where
  each engine in its own process also maps one transfer buffer (a chunk, at least the largest decoder layer or
  tensor); rank 0 gathers the fp32 weights on the host for a checkpoint's HF export (``rebo_host``);
- one CUDA context per process (~1 GiB) and a margin (10% of the card) that no phase may use.
A phase (rollout, log-probs, updates, optimizer steps, weight sync) sums what is alive in it; the peak is the
largest phase.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

GB = 10**9
GIB = 1 << 30
MARGIN = 0.10  # share of each card no planned phase may use (fragmentation, NCCL buffers, estimates)
CUDA_CONTEXT = GIB  # one process's CUDA context and library workspaces
VLLM_OVERHEAD = GIB  # an engine's CUDA graphs, context and non-torch allocations, beyond its activations
VLLM_BATCHED_TOKENS = 8192  # tokens of one engine forward (vLLM's default prefill budget for offline use)
LAYER_ACTIVATION_FACTOR = 34  # bytes per (token x hidden) of one decoder layer's saved activations in 16-bit
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------ model shapes
@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a decoder-only transformer (Llama / Qwen2 / SmolLM2 layout)."""

    name: str
    n_params: int  # every parameter, counted once (a tied LM head is the embedding)
    n_layers: int
    hidden: int
    intermediate: int
    vocab: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tied: bool  # LM head shares the embedding matrix
    source: str = ""  # where the shapes were read (shown in the plan)

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, LM head, final norm (FSDP's root unit)."""
        return self.embed_params + self.lm_head_params + self.hidden

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (the FSDP unit), from the exact total."""
        return (self.n_params - self.root_params) // self.n_layers

    @property
    def critic_params(self) -> int:
        """Backbone without the LM head, plus a scalar value head (weight and bias)."""
        return self.n_params - self.lm_head_params + self.hidden + 1

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Key and value of every layer for one token."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of a decoder layer."""
        q, kv, h, i = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    def lora_params(self, rank: int, targets: Iterable[str] | str = "all-linear") -> int:
        """Adapter parameters: ``rank x (in + out)`` per targeted linear module of every layer (``all-linear`` or
        ``all``: every linear module of the layers; the LM head is never targeted)."""
        if rank <= 0:
            return 0
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        names = [str(t) for t in targets]
        if not names or any(n in ("all", "all-linear") for n in names):
            names = list(LINEAR_MODULES)
        dims = self.module_dims()
        unknown = [n for n in names if n not in dims]
        if unknown:
            raise ValueError(f"LoRA target module(s) {unknown} are not linear modules of a decoder layer "
                             f"({', '.join(LINEAR_MODULES)})")
        return self.n_layers * sum(rank * sum(dims[n]) for n in names)


def decoder_param_count(vocab: int, hidden: int, intermediate: int, n_layers: int, n_heads: int, n_kv_heads: int,
                        head_dim: int | None = None, tied: bool = False, qkv_bias: bool = False) -> int:
    """Parameters of a Llama-layout decoder: embeddings, per layer q/k/v/o and gate/up/down projections and two
    RMSNorm weights (plus q/k/v biases for Qwen2), a final norm and an LM head unless tied."""
    hd = head_dim or hidden // n_heads
    q, kv = n_heads * hd, n_kv_heads * hd
    attn = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if qkv_bias else 0)
    layer = attn + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden + n_layers * layer + hidden + (0 if tied else vocab * hidden)


def shape_from_config(cfg: dict, n_params: int | None = None, name: str = "", source: str = "") -> ModelShape:
    """``ModelShape`` from a Hugging Face ``config.json`` dict (a ``text_config`` inside is used when present).
    ``n_params`` (an exact count, e.g. from a meta-device build) wins over the Llama-layout formula."""
    cfg = cfg.get("text_config", cfg)
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    tied = bool(cfg.get("tie_word_embeddings", False))
    vocab, inter, layers = int(cfg["vocab_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    if n_params is None:
        n_params = decoder_param_count(vocab, h, inter, layers, heads, kv, hd, tied,
                                       qkv_bias=cfg.get("model_type") == "qwen2")
    return ModelShape(name or cfg.get("_name_or_path", "model"), int(n_params), layers, h, inter, vocab, heads, kv,
                      hd, tied, source)


# ------------------------------------------------------------------------------------------------ building blocks
def logits_bytes(rows: int, tokens: int, vocab: int, chunk_tokens: int | None = None, grad: bool = False) -> int:
    """One micro-batch's logits peak: bf16 logits ``rows x tokens x vocab x 2`` and the fp32 log-softmax work over
    all its tokens, or over ``chunk_tokens`` at a time when chunked: two fp32 copies (upcast, log-softmax), three
    with ``grad`` (its gradient in the backward)."""
    n = rows * tokens
    work = min(n, chunk_tokens) if chunk_tokens else n
    return n * vocab * 2 + work * vocab * 4 * (3 if grad else 2)


def activation_bytes(shape: ModelShape, rows: int, tokens: int, checkpointing: bool) -> int:
    """Saved activations of one micro-batch's forward for the backward (module doc)."""
    per_layer_full = LAYER_ACTIVATION_FACTOR * rows * tokens * shape.hidden
    if checkpointing:
        return shape.n_layers * rows * tokens * shape.hidden * 2 + per_layer_full
    return shape.n_layers * per_layer_full


def forward_work_bytes(shape: ModelShape, rows: int, tokens: int) -> int:
    """A forward without gradients keeps one layer's activations at a time."""
    return LAYER_ACTIVATION_FACTOR * rows * tokens * shape.hidden


def gathered_bytes(shape: ModelShape, backward: bool, dtype_bytes: int = 2) -> int:
    """Transient full copies of FSDP units in the compute dtype: the root unit and two decoder layers (current +
    prefetched); a backward also holds their unsharded gradients."""
    units = (shape.root_params + 2 * shape.layer_params) * dtype_bytes
    return units * (2 if backward else 1)


def kv_cache_bytes(shape: ModelShape, seqs: int, tokens: int, dtype_bytes: int = 2) -> int:
    """KV cache for ``seqs`` sequences of ``tokens`` tokens each."""
    return seqs * tokens * shape.kv_bytes_per_token(dtype_bytes)


def vllm_work_bytes(shape: ModelShape, max_num_seqs: int, batched_tokens: int = VLLM_BATCHED_TOKENS) -> int:
    """An engine's memory beyond weights and KV cache: a prefill forward's activations at its batched-token budget
    (the gate/up projections and four hidden-size buffers, bf16), fp32 sampler logits and probabilities for its
    running sequences, and ``VLLM_OVERHEAD`` (CUDA graphs, context)."""
    act = batched_tokens * (2 * shape.intermediate + 4 * shape.hidden) * 2
    sampler = max_num_seqs * shape.vocab * 4 * 2
    return act + sampler + VLLM_OVERHEAD


def vllm_weight_bytes(shape: ModelShape, dtype_bytes: int = 2) -> int:
    return shape.n_params * dtype_bytes


SYNC_CHUNK_BYTES = 512 * 2**20  # worker.rollout.sync_chunk_mb's default


def sync_group_bytes(shape: ModelShape, dtype_bytes: int = 2) -> int:
    """The largest group a chunk of the weight sync never splits, in the engine dtype: a decoder layer, or the
    largest tensor outside the layers (the embeddings, the LM head)."""
    return max(shape.layer_params, shape.embed_params) * dtype_bytes


def sync_unit_params(shape: ModelShape) -> int:
    """Parameters of the largest FSDP unit: the root (embeddings, LM head, final norm) or a decoder layer."""
    return max(shape.root_params, shape.layer_params)


def sync_bytes(shape: ModelShape) -> int:
    """GPU memory a streamed weight sync adds to the trainer's state: the largest FSDP unit gathered in fp32 (its
    copy in the engine dtype is made on the host)."""
    return 4 * sync_unit_params(shape)


def sync_buffer_bytes(shape: ModelShape, chunk_bytes: int = SYNC_CHUNK_BYTES, dtype_bytes: int = 2) -> int:
    """One engine's shared-memory transfer buffer (an engine in its own process): a chunk, or the largest group."""
    return max(chunk_bytes, sync_group_bytes(shape, dtype_bytes))


def sync_host_bytes(shape: ModelShape, chunk_bytes: int = SYNC_CHUNK_BYTES, dtype_bytes: int = 2,
                    buffer: bool = True) -> int:
    """Host memory of one rank's weight sync: the largest unit copied in fp32 and cast to the engine dtype (a bound
    of what is held at once: the unit's copies and the chunk being assembled) and, for an engine in its own
    process, the transfer buffer."""
    held = (4 + dtype_bytes) * sync_unit_params(shape)
    return held + (sync_buffer_bytes(shape, chunk_bytes, dtype_bytes) if buffer else 0)


# ------------------------------------------------------------------------------------------------ phases and items
ROLLOUT, LOGPROB, CRITIC, CRITIC_STEP, ACTOR, ACTOR_STEP, SYNC = (
    "rollout", "log-probs", "critic update", "critic step", "actor update", "actor step", "weight sync")
TRAIN, STEP = "fwd/bwd", "optimizer step"
REBO_PHASES = (ROLLOUT, SYNC, LOGPROB, CRITIC, CRITIC_STEP, ACTOR, ACTOR_STEP)
SFT_PHASES = (TRAIN, STEP)
COLUMNS = ("weights", "grads", "optim", "ref", "critic", "logits", "activ", "gather", "ctx", "vllm")


@dataclass(frozen=True)
class Item:
    """One allocation: its size per GPU, the plan column it belongs to and the phases it is alive in."""

    name: str
    column: str  # one of COLUMNS
    nbytes: int
    phases: tuple[str, ...]


@dataclass
class MemoryPlan:
    """Per-GPU plan of one stage: items, phases, the card and what the plan chose."""

    stage: str
    world: int
    gpu_bytes: int
    items: list[Item]
    phases: tuple[str, ...]
    knobs: dict[str, object] = field(default_factory=dict)  # config keys the plan set (key -> value)
    notes: list[str] = field(default_factory=list)
    vllm: VllmBudget | None = None
    host_bytes: int = 0  # host memory per node the plan needs beyond the processes themselves
    host_parts: dict[str, int] = field(default_factory=dict)  # host memory by cause (ReBO: memory.rebo_host)

    @property
    def usable(self) -> int:
        return int(self.gpu_bytes * (1 - MARGIN))

    def phase_bytes(self) -> dict[str, int]:
        return {p: sum(i.nbytes for i in self.items if p in i.phases) for p in self.phases}

    @property
    def peak_phase(self) -> str:
        pb = self.phase_bytes()
        return max(pb, key=pb.get)

    @property
    def peak(self) -> int:
        return max(self.phase_bytes().values())

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable and (self.vllm is None or self.vllm.fits)

    def column(self, name: str) -> int:
        """A column's bytes in the phase where that column is largest."""
        return max((sum(i.nbytes for i in self.items if i.column == name and p in i.phases) for p in self.phases),
                   default=0)

    def resident(self) -> int:
        """Model state held on the GPU through every phase (what offload and LoRA remove)."""
        return sum(i.nbytes for i in self.items if i.column in ("weights", "grads", "optim", "ref", "critic")
                   and set(self.phases) <= set(i.phases))

    def why_not(self) -> str:
        """What does not fit, in words (empty when the plan fits)."""
        parts = []
        if self.peak > self.usable:
            parts.append(f"the {self.peak_phase} phase needs {self.peak / GB:.1f} GB of {self.usable / GB:.1f} GB "
                         f"usable per GPU")
        if self.vllm is not None and not self.vllm.fits:
            parts.append(self.vllm.why_not())
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ vLLM budget
@dataclass(frozen=True)
class VllmBudget:
    """The colocated engine's share of the card while it is awake.

    ``utilization`` is vLLM's ``gpu_memory_utilization``: the share of the card one engine may hold (weights,
    work and KV cache), checked by vLLM against the free memory when the engine starts; the trainer's persistent
    state must fit beside it. ``sized``: the share was computed from the plan (card - trainer - margin) instead of
    taken from the config."""

    utilization: float
    gpu_bytes: int
    weights: int
    work: int
    kv_needed: int  # KV cache for the rank's sequences decoded together
    kv_min: int  # one sequence of the model's full length: below this the engine does not start
    seqs: int
    seq_tokens: int
    sized: bool
    kv_fixed: int | None = None  # worker.rollout.kv_cache_bytes when set

    @property
    def budget(self) -> int:
        if self.kv_fixed is not None:
            return self.weights + self.work + self.kv_fixed
        return int(self.utilization * self.gpu_bytes)

    @property
    def kv_available(self) -> int:
        return self.kv_fixed if self.kv_fixed is not None else max(0, self.budget - self.weights - self.work)

    @property
    def fits(self) -> bool:
        return self.kv_available >= max(self.kv_needed, self.kv_min)

    @property
    def concurrent_seqs(self) -> int:
        per_seq = self.kv_min or 1
        return self.kv_available // per_seq

    def why_not(self) -> str:
        return (f"vLLM's {self.budget / GB:.1f} GB (gpu_memory_utilization {self.utilization:.2f}) leaves "
                f"{self.kv_available / GB:.1f} GB of KV cache after {self.weights / GB:.1f} GB of weights and "
                f"{self.work / GB:.1f} GB of work; {self.seqs} sequences x {self.seq_tokens} tokens need "
                f"{self.kv_needed / GB:.1f} GB")


def sized_utilization(gpu_bytes: int, trainer_awake: int) -> float:
    """vLLM's share of the card: what the trainer's persistent state and the margin leave, rounded down to 0.01."""
    free = gpu_bytes * (1 - MARGIN) - trainer_awake
    return max(0.0, int(100 * free / gpu_bytes) / 100)


# ------------------------------------------------------------------------------------------------ ReBO
@dataclass(frozen=True)
class RoleMemory:
    """A model role's memory settings (actor, reference, critic)."""

    enabled: bool = True
    offload_params: bool = False
    offload_optimizer: bool = False
    micro_update: int = 1  # rows per forward/backward
    gradient_checkpointing: bool = True


@dataclass(frozen=True)
class ReboMemory:
    """What the ReBO trainer's memory depends on (verl.config keys, already resolved)."""

    world: int
    prompt_len: int
    response_len: int
    gen_rows: int  # rows one generation call decodes over all ranks (rollout_batch_size x n, or validation)
    micro_experience: int
    actor: RoleMemory
    ref: RoleMemory
    critic: RoleMemory
    lora_rank: int = 0
    lora_targets: str = "all-linear"
    chunk_tokens: int | None = None  # actor: fp32 log-softmax work over this many tokens at a time (None: unchunked)
    ref_chunk_tokens: int | None = None  # the reference's log-prob pass, likewise
    optimized_forward: bool = True  # logits at response positions only
    engine: str = "vllm"  # vllm | hf
    max_num_seqs: int = 256
    kv_cache_bytes: int | None = None
    gpu_memory_utilization: float = 0.5
    size_vllm: bool = True  # compute gpu_memory_utilization from the plan instead of the configured share
    hf_micro_batch: int = 64  # rows per HF generate call
    sync_chunk_bytes: int = SYNC_CHUNK_BYTES  # worker.rollout.sync_chunk_mb in bytes
    engine_processes: bool = True  # an engine per rank in its own process (several workers or TP > 1): a host buffer


def _trained(shape: ModelShape, n_train: int, n_frozen: int, role: RoleMemory, world: int, who: str,
             column: str, update: str, step: str) -> list[Item]:
    """Weights, gradients, AdamW state and step work of a trained role (module doc)."""
    if role.offload_params:
        return [Item(f"{who} weights", column, 0, REBO_PHASES)]
    opt_phases = (step,) if role.offload_optimizer else REBO_PHASES
    return [
        Item(f"{who} weights", column, 4 * (n_train + n_frozen) // world, REBO_PHASES),
        Item(f"{who} grads", "grads" if column == "weights" else column, 4 * n_train // world, (update, step)),
        Item(f"{who} optimizer", "optim" if column == "weights" else column, 8 * n_train // world, opt_phases),
        Item(f"{who} step work", "optim" if column == "weights" else column, 4 * n_train // world, (step,)),
    ]


def rebo_items(shape: ModelShape, m: ReboMemory) -> list[Item]:
    """Per-GPU allocations of one ReBO rank and the phases they are alive in (module doc)."""
    w, seq = m.world, m.prompt_len + m.response_len
    logit_tokens = m.response_len if m.optimized_forward else seq
    lora = m.lora_rank > 0
    n_train = shape.lora_params(m.lora_rank, m.lora_targets) if lora else shape.n_params
    items = _trained(shape, n_train, shape.n_params if lora else 0, m.actor, w, "actor", "weights", ACTOR, ACTOR_STEP)
    if m.ref.enabled and not lora:
        items.append(Item("reference", "ref", 0 if m.ref.offload_params else 2 * shape.n_params // w, REBO_PHASES))
    if m.critic.enabled:
        items += _trained(shape, shape.critic_params, 0, m.critic, w, "critic", "critic", CRITIC, CRITIC_STEP)
        items.append(Item("critic activations", "activ",
                          activation_bytes(shape, m.critic.micro_update, seq, m.critic.gradient_checkpointing),
                          (CRITIC,)))
    items += [
        Item("CUDA context", "ctx", CUDA_CONTEXT, REBO_PHASES),
        Item("logits (log-probs)", "logits", max(
            logits_bytes(m.micro_experience, logit_tokens, shape.vocab, m.chunk_tokens),
            logits_bytes(m.micro_experience, logit_tokens, shape.vocab, m.ref_chunk_tokens) if m.ref.enabled else 0),
            (LOGPROB,)),
        Item("logits (update)", "logits", logits_bytes(m.actor.micro_update, logit_tokens, shape.vocab,
                                                       m.chunk_tokens, grad=True), (ACTOR,)),
        Item("forward work (log-probs)", "activ", forward_work_bytes(shape, m.micro_experience, seq), (LOGPROB,)),
        Item("activations (update)", "activ",
             activation_bytes(shape, m.actor.micro_update, seq, m.actor.gradient_checkpointing), (ACTOR,)),
        Item("gathered units", "gather", gathered_bytes(shape, backward=False), (LOGPROB,)),
        Item("gathered units + grads", "gather", gathered_bytes(shape, backward=True), (ACTOR, CRITIC)),
    ]
    if m.engine == "vllm":  # the engine's weights are awake while the units stream in, its KV cache asleep
        items += [Item("gathered fp32 unit (weight sync)", "gather", sync_bytes(shape), (SYNC,)),
                  Item("vLLM weights (weight sync)", "vllm", vllm_weight_bytes(shape), (SYNC,))]
    if m.engine == "hf":  # generate on the actor's FSDP module: its units gathered, an HF KV cache per call
        rows = min(m.hf_micro_batch, -(-m.gen_rows // w))
        items += [Item("gathered units (generate)", "gather", gathered_bytes(shape, backward=False), (ROLLOUT,)),
                  Item("HF generate KV cache", "vllm", kv_cache_bytes(shape, rows, seq), (ROLLOUT,))]
    return items


def trainer_awake_bytes(items: list[Item]) -> int:
    """The trainer's memory while the engine is awake: its persistent state (the caching allocator is emptied
    before the engine wakes, so no update-time block is held)."""
    return sum(i.nbytes for i in items if i.column != "vllm" and set(REBO_PHASES) <= set(i.phases))


def vllm_budget(shape: ModelShape, m: ReboMemory, gpu_bytes: int, trainer_awake: int) -> VllmBudget:
    """The engine's budget: sized from the plan (``m.size_vllm``) or the configured share."""
    seq = m.prompt_len + m.response_len
    seqs = min(m.max_num_seqs, -(-m.gen_rows // m.world))
    util = sized_utilization(gpu_bytes, trainer_awake) if m.size_vllm else m.gpu_memory_utilization
    return VllmBudget(util, gpu_bytes, vllm_weight_bytes(shape), vllm_work_bytes(shape, m.max_num_seqs),
                      kv_cache_bytes(shape, seqs, seq), kv_cache_bytes(shape, 1, seq), seqs, seq, m.size_vllm,
                      m.kv_cache_bytes)


def rebo_plan(shape: ModelShape, m: ReboMemory, gpu_bytes: int, stage: str = "ReBO") -> MemoryPlan:
    """The per-GPU plan of a ReBO run: trainer items, the engine's budget in the rollout phase, host memory."""
    items = rebo_items(shape, m)
    budget = None
    if m.engine == "vllm":
        budget = vllm_budget(shape, m, gpu_bytes, trainer_awake_bytes(items))
        items.append(Item("vLLM (weights + work + KV cache)", "vllm", budget.budget, (ROLLOUT,)))
    phases = REBO_PHASES if m.critic.enabled else tuple(p for p in REBO_PHASES if p not in (CRITIC, CRITIC_STEP))
    plan = MemoryPlan(stage, m.world, gpu_bytes, items, phases, vllm=budget)
    plan.host_parts = rebo_host(shape, m)
    plan.host_bytes = host_peak(plan.host_parts)
    return plan


def rebo_host(shape: ModelShape, m: ReboMemory) -> dict[str, int]:
    """Host memory per node beyond the processes, by cause: ``offload`` (what offload keeps on the host throughout),
    ``weight sync`` (per rank one unit's host copies and, for an engine in its own process, its transfer buffer: the
    sync streams one FSDP unit at a time, so no rank holds a full copy of the weights) and ``checkpoint save`` (rank
    0 gathers the fp32 weights and casts them to worker.actor.dtype for the HF export: 6 bytes per parameter). The
    sync and the save never overlap (``host_peak``)."""
    sync = m.world * sync_host_bytes(shape, m.sync_chunk_bytes, buffer=m.engine_processes) if m.engine == "vllm" else 0
    return {"offload": rebo_offload_host_bytes(shape, m), "weight sync": sync, "checkpoint save": 6 * shape.n_params}


def host_peak(parts: dict[str, int]) -> int:
    """The largest moment of ``rebo_host``'s parts: offload plus the larger of the sync and the save."""
    return parts.get("offload", 0) + max(parts.get("weight sync", 0), parts.get("checkpoint save", 0))


def rebo_host_bytes(shape: ModelShape, m: ReboMemory) -> int:
    """``rebo_host`` at its largest moment."""
    return host_peak(rebo_host(shape, m))


def rebo_offload_host_bytes(shape: ModelShape, m: ReboMemory) -> int:
    """What offload keeps on the host: parameters, gradients and optimizer state of offloaded roles."""
    lora = m.lora_rank > 0
    n_train = shape.lora_params(m.lora_rank, m.lora_targets) if lora else shape.n_params
    total = 0
    if m.actor.offload_params:
        total += 16 * n_train + (4 * shape.n_params if lora else 0)
    elif m.actor.offload_optimizer:
        total += 8 * n_train
    if m.ref.enabled and m.ref.offload_params and not lora:
        total += 2 * shape.n_params
    if m.critic.enabled:
        total += 16 * shape.critic_params if m.critic.offload_params else (
            8 * shape.critic_params if m.critic.offload_optimizer else 0)
    return total


# ------------------------------------------------------------------------------------------------ SFT (RS.train)
@dataclass(frozen=True)
class SftMemory:
    """What an ``RS.train`` process's memory depends on (Rejection Steering, injection, the SFT baselines)."""

    world: int
    rows: int  # per-device batch
    tokens: int  # cutoff_len
    bf16: bool = True
    fsdp: bool = True  # accelerate FSDP (several processes, or one process with the offload config)
    offload: bool = False  # FSDP CPU offload (params, grads and the optimizer step on the host)
    lora_rank: int = 0
    lora_targets: str = "all-linear"
    gradient_checkpointing: bool = False
    needs_ref: bool = False  # NPO / DPO / KLR: a frozen full copy of the original model per process
    policy_passes: int = 1  # forward graphs alive at the backward (2 with a retain batch or DPO's pair)
    ref_passes: int = 0  # reference forwards (no graph) per step


def sft_items(shape: ModelShape, m: SftMemory) -> list[Item]:
    """Per-GPU allocations of one RS.train process. The model is loaded in fp32 (LoRA: the frozen base too) and
    bf16 runs under autocast; without FSDP the autocast cache holds a bf16 copy of every weight in fwd/bwd; the
    reference is a full, unsharded copy per process (bf16 with --bf16)."""
    w = m.world if m.fsdp else 1
    lora = m.lora_rank > 0
    n_train = shape.lora_params(m.lora_rank, m.lora_targets) if lora else shape.n_params
    n_frozen = shape.n_params if lora else 0
    phases = SFT_PHASES
    items = [Item("CUDA context", "ctx", CUDA_CONTEXT, phases)]
    if not m.offload:
        items += [Item("weights", "weights", 4 * (n_train + n_frozen) // w, phases),
                  Item("grads", "grads", 4 * n_train // w, phases),
                  Item("optimizer", "optim", 8 * n_train // w, phases),
                  Item("step work", "optim", 4 * n_train // w, (STEP,))]
    if m.needs_ref:
        items.append(Item("reference (full copy)", "ref", (2 if m.bf16 else 4) * shape.n_params, phases))
    cdt = 2 if m.bf16 else 4
    copies = gathered_bytes(shape, backward=True, dtype_bytes=cdt) if m.fsdp else (
        cdt * shape.n_params if m.bf16 else 0)
    items += [
        Item("logits", "logits", m.policy_passes * logits_bytes(m.rows, m.tokens, shape.vocab, grad=True)
             + m.ref_passes * logits_bytes(m.rows, m.tokens, shape.vocab), (TRAIN,)),
        Item("activations", "activ",
             m.policy_passes * activation_bytes(shape, m.rows, m.tokens, m.gradient_checkpointing), (TRAIN,)),
        Item("gathered units + grads" if m.fsdp else "autocast weight cache", "gather", copies, (TRAIN,)),
    ]
    return items


def sft_plan(shape: ModelShape, m: SftMemory, gpu_bytes: int, stage: str = "RS") -> MemoryPlan:
    plan = MemoryPlan(stage, m.world, gpu_bytes, sft_items(shape, m), SFT_PHASES)
    n_train = shape.lora_params(m.lora_rank, m.lora_targets) if m.lora_rank else shape.n_params
    n_frozen = shape.n_params if m.lora_rank else 0
    plan.host_bytes = (16 * n_train + 4 * n_frozen) if m.offload else 0
    return plan


# ------------------------------------------------------------------------------------------------ choosing knobs
@dataclass(frozen=True)
class Knob:
    """One memory setting a plan may turn on: the config keys it sets and why it is (or is not) harmless."""

    name: str
    values: dict[str, object]  # config key -> value
    why: str


def knob_values(knobs: Iterable[Knob]) -> dict[str, object]:
    """Config key -> value of a set of knobs (a later knob setting the same key wins)."""
    values: dict[str, object] = {}
    for k in knobs:
        values.update(k.values)
    return values


@dataclass
class Choice:
    """The outcome of choosing knobs for one stage."""

    plan: MemoryPlan  # the chosen plan (when nothing fits: the last candidate tried, or the plan as configured)
    base: MemoryPlan  # the plan as configured
    knobs: list[Knob]  # what was turned on (empty when the configuration fits as it is)
    blocked: list[tuple[list[Knob], dict[str, object]]]  # candidates skipped because the user set a key otherwise

    @property
    def fits(self) -> bool:
        return self.plan.fits


def choose(build, candidates: list[list[Knob]], locked: dict[str, object]) -> Choice:
    """The first candidate (a list of knobs, least invasive first) whose plan fits. ``build(values)`` makes a plan
    from config key -> value; a candidate that would change a key the user set (``locked``: key -> the user's
    value) is skipped, so a user's setting always wins."""
    base = build({})
    if base.fits:
        return Choice(base, base, [], [])
    blocked: list[tuple[list[Knob], dict[str, object]]] = []
    last: tuple[MemoryPlan, list[Knob]] = (base, [])
    for cand in candidates:
        values = knob_values(cand)
        clash = {k: locked[k] for k, v in values.items() if k in locked and locked[k] != v}
        if clash:
            blocked.append((cand, clash))
            continue
        plan = replace(build(values), knobs=values)
        last = (plan, cand)
        if plan.fits:
            return Choice(plan, base, cand, blocked)
    return Choice(last[0], base, last[1], blocked)


__all__ = ["GB", "GIB", "MARGIN", "Choice", "Item", "Knob", "MemoryPlan", "ModelShape", "ReboMemory", "RoleMemory",
           "SftMemory", "VllmBudget", "activation_bytes", "choose", "decoder_param_count",
           "gathered_bytes", "kv_cache_bytes", "logits_bytes", "rebo_plan",
           "knob_values", "sft_plan", "shape_from_config", "sized_utilization", "vllm_budget"]
