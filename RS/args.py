"""Typed arguments of ``python -m RS.train`` (LLaMA-Factory flag names): ``OmegaConf.structured(TrainArgs)``, then
the ``--config`` YAML, then the explicit flags, each merged on top of the last.

Order of precedence: dataclass defaults < ``--config file.yaml`` < explicit flags. Unknown flags or YAML keys are
errors naming the file and key (no silent typos); values are checked against the field types.

Composition (RS/README.md, "Configs"): a config file may hold two keys besides the options:

- ``extends: FILE`` or ``extends: [FILE, ...]``: the files it builds on, paths relative to the file's folder, merged
  in order (each with its own ``extends`` first) before the file's own keys. So ``RS/configs/llama3_8b/npo.yaml``
  extends ``../model/llama3_8b.yaml`` (the keys every stage of that model shares) and adds NPO's.
- ``by_stage: {PATTERN: {option: value}}``: options for the stages matching PATTERN (a stage name or a glob such as
  ``"*_klr"``), applied right after the file's own keys. One loss family's file serves its retain variants
  (``--stage npo_gdr`` with ``npo.yaml``) and a value that only one variant takes lives here.

``bf16`` also takes ``auto`` (the command line's default), resolved once every layer is merged.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import fnmatch
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.muse import TRAIN_ICL_STEM


@dataclass
class TrainArgs:
    # --- what to train
    stage: str = "rt"
    """training stage: rt, inject, ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr, simnpo, simnpo_gdr, simnpo_klr, idkdpo"""
    model_name_or_path: str = "smollm2-135m-instruct"
    """HF folder, hub id or the embedded model's name"""
    target: str = ""
    """RWKU target (id, folder or name); a comma list for --stage inject"""
    data_dir: str = ""
    """data root holding RWKU/Target/...; empty: $RULE_DATA_DIR, then ./data"""
    dataset: str = ""
    """forget-side data: reject_target, rwku_rt, passage, file:PATH (a JSON list of texts), inject, idk_pref,
    muse_reject (MUSE RS); empty: the stage's default"""
    retain_dataset: str = "auto"
    """retain corpus for *_gdr/*_klr: auto (other targets' passages), retain_mia, file:PATH, or targets "a,b\""""
    retain_num_targets: int = 2
    """how many other targets' passages make the auto retain corpus"""
    prompt_form: str = "chat"
    """reject_target/rwku_rt prompts: chat (the release: a bare user turn), rwku (the RWKU probe wrapper + "Answer:", FB
    wrapper for "___" rows) or both (each question in both forms; the sandbox's small model does not carry a refusal
    from one form to the other)"""
    muse_icl: str = TRAIN_ICL_STEM
    """muse_reject: MUSE file whose QA pairs are the one few-shot prefix of qa rows ("" for none)"""
    user_turn: str = "template"
    """chat prompts: template (as the model's template renders them; Llama-3 trims) or verbatim (unchanged, the
    release's LLaMA-Factory llama3 template)"""
    rt_templates: str = "project"
    """rwku_rt/idk_pref refusals: project (10 templates, one per question by hash) or release (RWKU's reject.json: its
    100 templates, row j -> template j mod 100)"""
    output_dir: str = ""
    """where checkpoints, logs and the final model go"""
    config: str = ""
    """YAML file with defaults for any of these fields; it may build on others (extends:, by_stage:; RS/README.md)"""
    # --- model / fine-tuning
    finetuning_type: str = "full"
    """full or lora"""
    lora_rank: int = 8
    """LoRA rank r"""
    lora_alpha: int = 16
    """LoRA alpha (scaling = alpha / r)"""
    lora_dropout: float = 0.0
    """LoRA dropout"""
    lora_target: str = "all"
    """comma list of module names, or "all" (every linear layer but lm_head)"""
    cutoff_len: int = 512
    """max tokens per example (prompt + response, or text); 0: no cutoff (muse_reject only, the release's MUSE RS)"""
    # --- optimisation
    per_device_train_batch_size: int = 8
    """examples per device per micro-step (the most, when total_batch_size is set)"""
    gradient_accumulation_steps: int = 1
    """micro-steps per optimizer step (derived when total_batch_size is set)"""
    total_batch_size: int = 0
    """effective batch per optimizer step = per-device x processes x accumulation, kept whatever the process count (0:
    off)"""
    learning_rate: float = 4e-7
    """peak learning rate (paper RS value for Llama-3-8B)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping (0 disables)"""
    num_train_epochs: float = 3.0
    """epochs over the forget-side data"""
    max_steps: int = -1
    """stop after this many optimizer steps (-1: epochs decide)"""
    lr_scheduler_type: str = "cosine"
    """cosine, linear or constant (transformers scheduler names)"""
    warmup_steps: int = 20
    """linear warm-up steps"""
    bf16: bool = False
    """bf16 mixed precision through accelerate: true, false or auto (the command line's default: true on GPUs and on
    CPUs with AMX / AVX512-BF16, false elsewhere; checkpoints then stay float32 on CPU)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory, ~30% slower); the 8B runs on 1-2 GPUs"""
    sync_each_batch: str = "auto"
    """reduce gradients on every accumulation micro-step: true, false, auto (true under FSDP, where accelerate's no_sync
    keeps a full unsharded gradient per GPU)"""
    loss_reduction: str = "micro_batch_mean"
    """NLL stages (rt, inject, ga): micro_batch_mean (token mean per micro-batch, averaged over processes and
    accumulation) or global_token_mean (summed token losses / labelled tokens of the whole effective batch: the
    release's one-process batch of 8)"""
    loss_window: bool = False
    """compute logits only from the batch's first labelled position on (the same losses to ~1e-6; injection 7-12% and RS
    ~10% faster on CPU); off by default: the rounding moves the sandbox table's outcomes"""
    seed: int = 42
    """seed for data order, splits and init"""
    # --- data selection
    max_samples: int = 0
    """keep at most this many forget-side examples (0: all)"""
    train_fraction: float = 1.0
    """train on this seeded share of the examples; the rest go to O/heldout.json"""
    val_size: float = 0.0
    """holdout for a validation loss per epoch (<1: fraction, >=1: count)"""
    refusal_stop: float = 0.0
    """stop once this share of --refusal_holdout questions, asked in the RWKU probe wrapper, is refused
    (RS/refusal_stop.py; 0: off, --max_steps stays the ceiling)"""
    refusal_holdout: int = 16
    """reject_target questions kept out of training for --refusal_stop (written to heldout.json)"""
    refusal_check_steps: int = 2
    """check --refusal_stop every N optimizer steps"""
    refusal_stop_after: int = 0
    """optimizer steps to keep training once --refusal_stop is reached (within --max_steps)"""
    # --- saving / logging
    save_strategy: str = "epoch"
    """epoch (a checkpoint per epoch) or no (final model only)"""
    save_total_limit: int = 0
    """keep only the newest N epoch checkpoints, plus --save_keep_epochs (0: keep all)"""
    save_keep_epochs: str = "2"
    """comma list of epoch checkpoints --save_total_limit never removes (ReBO starts from checkpoint-epoch-2)"""
    save_dtype: str = "auto"
    """dtype of the saved weights: auto (bfloat16 with --bf16, else float32), bfloat16 or float32"""
    logging_steps: int = 5
    """write a loss line every N optimizer steps"""
    overwrite_output_dir: bool = False
    """allow reusing a non-empty output folder"""
    plot_loss: bool = True
    """draw O/loss.png at the end"""
    # --- losses
    forget_weight: float = 1.0
    """weight of the forget-side loss"""
    retain_weight: float = 1.0
    """weight of the retain loss (GDR NLL or KLR KL)"""
    klr_reduction: str = "labelled_mean"
    """KLR's KL: labelled_mean (over the positions predicting a labelled token) or release (kl_div batchmean over all
    B*T positions, padding included, as the RULE release)"""
    npo_beta: float = 0.1
    """NPO inverse temperature beta"""
    simnpo_beta: float = 2.5
    """SimNPO beta (the paper's; loss -2/beta logsigmoid(-beta/|y| log p - gamma))"""
    simnpo_gamma: float = 0.0
    """SimNPO reward margin gamma >= 0, subtracted inside the sigmoid as published (open-unlearning's delta = gamma /
    beta)"""
    dpo_beta: float = 0.1
    """IdkDPO beta"""
    # --- knowledge injection (stage inject)
    inject_passages: bool = True
    """include the target passages as raw-text LM examples"""
    inject_qa_repeat: int = 3
    """repeat each probe QA/FB pair this many times per epoch (passages once)"""
    inject_probe_limit: int = 0
    """inject only the first N probes of each probe file (0: all); scoring uses the same N"""
    eval_probes: bool = True
    """inject: score forget/neighbor FB/QA ROUGE-L before and after"""
    inject_mode: str = "probes"
    """probes: probe pairs in the evaluation format (first sandbox); varied: passages + facts in many phrasings + chat
    replay (RS/inject_data.py)"""
    inject_paraphrases: int = 3
    """varied: chat pairs per probe in non-evaluation prompt forms"""
    inject_exact_probes: int = 1
    """varied: copies per epoch of each probe in the exact evaluation format (0: none)"""
    inject_passage_facts: bool = True
    """varied: add template wh-questions (and rewordings) mined from the passages"""
    inject_passage_tokens: int = 0
    """varied: passages are cut into windows of this many tokens (0: cutoff_len - 1)"""
    inject_replay: int = 64
    """varied: other targets' fluency instructions answered by the base model's greedy output (0: none)"""
    inject_replay_tokens: int = 96
    """varied: max new tokens of those replay answers"""
    inject_boundary: bool = False
    """also teach the boundary facts: the <normal> rows of the boundary suite and of the sandbox's ReBO pool
    (data/boundary.py), in the probe wrapper and other prompt forms"""
    inject_boundary_share: float = 0.05
    """--inject_boundary: share of the ReBO groups held out as the boundary suite (data.boundary.BOUNDARY_SHARE; must
    match the evaluator's and ReBO's)"""
    inject_boundary_pool: int = 6
    """--inject_boundary: train groups in the sandbox's ReBO pool whose <normal> facts are taught
    (data.boundary.SANDBOX_POOL; must match ReBO's filtered file)"""
    inject_boundary_variants: int = 1
    """--inject_boundary: chat pairs per boundary row in other prompt forms than the probe wrapper"""
    # --- runtime
    num_threads: int = 2
    """torch CPU threads (the shared machine has 2 cores)"""


_BOOL_TRUE = {"1", "true", "yes", "y", "on"}
_BOOL_FALSE = {"0", "false", "no", "n", "off"}


def _to_bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _BOOL_TRUE:
        return True
    if s in _BOOL_FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainArgs)
    out = {}
    for f in dataclasses.fields(TrainArgs):
        t = hints[f.name]
        if isinstance(t, types.UnionType):
            t = next(a for a in t.__args__ if a is not type(None))
        out[f.name] = t
    return out


# bool fields that also take "auto" (resolved by parse_args, which also makes it the command line's default); the
# typed config holds a bool, so "auto" is kept beside it until every layer is merged
AUTO_BOOLS = ("bf16",)


def _to_bool_or_auto(v: str | bool) -> bool | str:
    return "auto" if isinstance(v, str) and v.strip().lower() == "auto" else _to_bool(v)


def _field_docs() -> dict[str, str]:
    """The string under each TrainArgs field: the flag's --help text."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainArgs)))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            out[node.target.id] = " ".join(str(nxt.value.value).split())
    return out


def _stages_epilog() -> str:
    from RS.stages import STAGES

    rows = [f"  {s.name:<11} {s.doc} (data: {s.default_dataset})" for s in STAGES.values()]
    return "\n".join(["stages (--stage):", *rows, "",
                      "Precedence: defaults < --config YAML (its extends: files first, then its own keys and its "
                      "by_stage: keys) < flags.",
                      "Unknown flags and YAML keys are errors. Booleans take true/false (a bare flag means true)."])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m RS.train", description="Rejection Steering SFT, knowledge injection "
                                "and the SFT-style unlearning baselines (one stage per run).",
                                epilog=_stages_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # a typo must not silently match a longer flag
    docs, types_ = _field_docs(), _field_types()
    for f in dataclasses.fields(TrainArgs):
        typ = types_[f.name]
        doc = f"{docs.get(f.name, '')} (default: {f.default!r})".replace("%", "%%")
        if typ is bool:  # both "--bf16" and "--bf16 true" work, as with LLaMA-Factory
            auto = f.name in AUTO_BOOLS
            p.add_argument(f"--{f.name}", type=_to_bool_or_auto if auto else _to_bool, nargs="?", const=True,
                           default=argparse.SUPPRESS, help=doc, metavar="BOOL|auto" if auto else "BOOL")
        else:
            p.add_argument(f"--{f.name}", type=typ, default=argparse.SUPPRESS, help=doc, metavar=typ.__name__.upper())
    return p


# ---------------------------------------------------------------- config files and their composition
COMPOSE_KEYS = ("extends", "by_stage")


@dataclass
class ConfigLayer:
    """One file's share of a config: its options and its stage-specific sections (``by_stage``)."""

    source: str  # the file, named in errors
    values: dict
    by_stage: dict[str, dict]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    return data


def _check_keys(source: str, values: dict) -> None:
    known = {f.name for f in dataclasses.fields(TrainArgs)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; see `python -m RS.train --help`")


def _by_stage(path: Path, data) -> dict[str, dict]:
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: by_stage maps a stage (or a glob such as '*_klr') to a mapping of option: value")
    for pattern, values in data.items():
        _check_keys(f"{path} by_stage {pattern!r}", values)
        if "stage" in values:  # the sections are chosen by the stage, so they cannot change it
            raise ValueError(f"{path} by_stage {pattern!r}: cannot set stage")
    return data


def config_layers(path: str | Path, _chain: tuple[Path, ...] = ()) -> list[ConfigLayer]:
    """The layers of a config file: those of each file it ``extends`` (in order, recursively), then its own."""
    path = Path(path)
    if path.resolve() in _chain:
        raise ValueError(f"{path}: extends itself through {' -> '.join(str(p) for p in _chain)}")
    data = _read_yaml(path)
    parents = data.pop("extends", None) or []
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ValueError(f"{path}: extends takes a file or a list of files (relative to {path.parent})")
    by_stage = _by_stage(path, data.pop("by_stage", None) or {})
    _check_keys(str(path), data)
    layers = []
    for parent in parents:
        layers += config_layers(path.parent / parent, (*_chain, path.resolve()))
    return [*layers, ConfigLayer(str(path), data, by_stage)]


def _stage_of(layers: list[ConfigLayer], flags: dict) -> str:
    """The run's stage, which picks the ``by_stage`` sections: the flag, else the last file that sets it."""
    for values in [flags, *(layer.values for layer in reversed(layers))]:
        if "stage" in values:
            return str(values["stage"])
    return TrainArgs.stage


def _sources(layers: list[ConfigLayer], stage: str) -> list[tuple[str, dict]]:
    """(source, options) in merge order: each file's own keys, then its sections matching ``stage``."""
    out = []
    for layer in layers:
        out.append((layer.source, layer.values))
        out += [(f"{layer.source} by_stage {pattern!r}", values) for pattern, values in layer.by_stage.items()
                if fnmatch.fnmatchcase(stage, pattern)]
    return out


def _typed_config():
    cfg = OmegaConf.structured(TrainArgs)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _merge(cfg, source: str, values: dict, bf16: bool | str) -> tuple[object, bool | str]:
    """``cfg`` with ``values`` merged on top (type-checked, errors naming ``source``) and the bf16 setting."""
    values = dict(values)
    if "bf16" in values:
        try:
            bf16 = _to_bool_or_auto(values.pop("bf16"))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{source}: option bf16: {exc}") from None
    try:
        return OmegaConf.merge(cfg, values), bf16
    except OmegaConfBaseException as exc:
        raise ValueError(f"{source}: option {exc.key}: {str(exc).splitlines()[0]}") from None


def compose(config: str | Path | None, flags: dict | None = None) -> tuple[TrainArgs, bool | str]:
    """``TrainArgs`` from the defaults, the config file's layers and ``flags`` (typed values), and the bf16
    setting (True, False or "auto", unresolved; the field holds False for it)."""
    flags = flags or {}
    layers = config_layers(config) if config else []
    cfg, bf16 = _typed_config(), "auto"
    for source, values in [*_sources(layers, _stage_of(layers, flags)), ("the command line", flags)]:
        cfg, bf16 = _merge(cfg, source, values, bf16)
    return OmegaConf.to_object(cfg), bf16


def load_yaml_config(path: str | Path, stage: str | None = None) -> dict:
    """The options a config file sets (its ``extends`` files included, and its ``by_stage`` sections for ``stage``,
    default the stage the files set), typed; unknown keys are an error naming the file and key."""
    layers = config_layers(path)
    stage = stage or _stage_of(layers, {})
    sources = _sources(layers, stage)
    args, bf16 = compose(path, {"stage": stage})
    out = {k: getattr(args, k) for _, values in sources for k in values}
    if "bf16" in out:
        out["bf16"] = bf16
    return out


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse flags (unknown ones exit with an error) on top of an optional ``--config`` YAML."""
    parser = build_parser()
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unknown argument(s): {' '.join(unknown)} (see --help for the accepted flags)")
    cli = vars(ns)
    args, bf16 = compose(cli.get("config"), cli)
    args.bf16, why = resolve_bf16(bf16)
    if why.startswith("auto") and args.bf16 and args.save_dtype == "auto":
        import torch

        if not torch.cuda.is_available():  # fp32 master weights: the next stage starts from them, not bf16-rounded
            args.save_dtype = "float32"
    args.precision_note = why
    validate_args(args)
    return args


def resolve_bf16(value: bool | str) -> tuple[bool, str]:
    """``(bf16?, why)``: ``auto`` follows ``verl.workers.forward.resolve_autocast`` (bf16 on GPUs and on CPUs with
    bf16 matrix units); true/false win."""
    if value != "auto":
        return bool(value), "set explicitly"
    import torch

    from verl.workers.forward import resolve_autocast

    mode, why = resolve_autocast("auto", "cuda" if torch.cuda.is_available() else "cpu")
    return mode == "bf16", why


def validate_args(args: TrainArgs) -> None:
    """Cheap sanity checks with messages that say what to do."""
    _validate_required(args)
    _validate_forms(args)
    _validate_refusal_stop(args)
    _validate_inject(args)
    _validate_sizes(args)
    _validate_memory_and_saving(args)
    _validate_reductions(args)


def _validate_required(args: TrainArgs) -> None:
    from RS.stages import STAGES

    if args.stage not in STAGES:
        raise ValueError(f"unknown --stage {args.stage!r}; choose one of {sorted(STAGES)}")
    if not args.target and args.dataset != "muse_reject":
        raise ValueError("--target is required (an RWKU target id, folder or name)")
    if not args.output_dir:
        raise ValueError("--output_dir is required")


def _validate_forms(args: TrainArgs) -> None:
    if args.finetuning_type not in ("full", "lora"):
        raise ValueError(f"--finetuning_type must be full or lora, got {args.finetuning_type!r}")
    if args.save_strategy not in ("epoch", "no"):
        raise ValueError(f"--save_strategy must be epoch or no, got {args.save_strategy!r}")
    if args.user_turn not in ("template", "verbatim"):
        raise ValueError(f"--user_turn must be template or verbatim, got {args.user_turn!r}")
    if args.rt_templates not in ("project", "release"):
        raise ValueError(f"--rt_templates must be project or release, got {args.rt_templates!r}")
    if args.cutoff_len < 0 or (args.cutoff_len == 0 and args.dataset != "muse_reject"):
        raise ValueError(f"--cutoff_len {args.cutoff_len}: must be >= 1 (0, no cutoff, only with --dataset "
                         "muse_reject)")
    if args.prompt_form not in ("chat", "rwku", "both"):
        raise ValueError(f"--prompt_form must be chat, rwku or both, got {args.prompt_form!r}")


def _validate_refusal_stop(args: TrainArgs) -> None:
    if not 0 <= args.refusal_stop <= 1:
        raise ValueError(f"--refusal_stop is a share of refused questions in [0, 1] (0: off), got {args.refusal_stop}")
    if args.refusal_stop and args.dataset not in ("reject_target", "rwku_rt"):
        raise ValueError("--refusal_stop checks held-out refusal questions: use it with --dataset reject_target or "
                         f"rwku_rt, not {args.dataset or 'the stage default'!r}")
    if args.refusal_stop and (args.refusal_holdout < 1 or args.refusal_check_steps < 1 or args.refusal_stop_after < 0):
        raise ValueError("--refusal_holdout and --refusal_check_steps must be >= 1 and --refusal_stop_after >= 0 "
                         "with --refusal_stop")


def _validate_inject(args: TrainArgs) -> None:
    if args.inject_mode not in ("probes", "varied"):
        raise ValueError(f"--inject_mode must be probes or varied, got {args.inject_mode!r}")
    if min(args.inject_paraphrases, args.inject_exact_probes, args.inject_replay, args.inject_passage_tokens) < 0:
        raise ValueError("--inject_paraphrases/--inject_exact_probes/--inject_replay/--inject_passage_tokens must be "
                         ">= 0")


def _validate_sizes(args: TrainArgs) -> None:
    if not 0 < args.train_fraction <= 1:
        raise ValueError("--train_fraction must be in (0, 1]")
    if args.per_device_train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        raise ValueError("batch size and gradient accumulation steps must be >= 1")
    if args.total_batch_size < 0:
        raise ValueError("--total_batch_size must be >= 0 (0: per-device x processes x accumulation as given)")


SAVE_DTYPES = ("auto", "bfloat16", "float32")
LOSS_REDUCTIONS = ("micro_batch_mean", "global_token_mean")
KLR_REDUCTIONS = ("labelled_mean", "release")


def _validate_memory_and_saving(args: TrainArgs) -> None:
    if args.sync_each_batch not in ("auto", "true", "false"):
        raise ValueError(f"--sync_each_batch must be auto, true or false, got {args.sync_each_batch!r}")
    if args.save_dtype not in SAVE_DTYPES:
        raise ValueError(f"--save_dtype must be one of {SAVE_DTYPES}, got {args.save_dtype!r}")
    if args.save_total_limit < 0:
        raise ValueError("--save_total_limit must be >= 0 (0: keep every epoch checkpoint)")
    keep_epochs(args.save_keep_epochs)


def _validate_reductions(args: TrainArgs) -> None:
    from RS.stages import STAGES

    if args.loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"--loss_reduction must be one of {LOSS_REDUCTIONS}, got {args.loss_reduction!r}")
    stage = STAGES[args.stage]
    one_token_loss = stage.losses()[0].level == "token" and not stage.retain  # see RS.losses.token_reduction
    if args.loss_reduction == "global_token_mean" and not one_token_loss:
        raise ValueError(f"--loss_reduction global_token_mean applies to a loss that is one token NLL (stages rt, "
                         f"inject, ga); stage {args.stage} mixes other terms: use micro_batch_mean")
    if args.klr_reduction not in KLR_REDUCTIONS:
        raise ValueError(f"--klr_reduction must be one of {KLR_REDUCTIONS}, got {args.klr_reduction!r}")


def keep_epochs(spec: str) -> set[int]:
    """The epochs of ``--save_keep_epochs`` ("2", "2,3", ""), checked."""
    out = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--save_keep_epochs takes a comma list of epoch numbers >= 1, got {spec!r}")
        out.add(int(item))
    return out


def save_dtype(args: TrainArgs):
    """The torch dtype checkpoints are written in: the training precision unless --save_dtype says otherwise."""
    import torch

    name = args.save_dtype if args.save_dtype != "auto" else ("bfloat16" if args.bf16 else "float32")
    return getattr(torch, name)


def batch_plan(total_batch_size: int, per_device_max: int, num_processes: int,
               gradient_accumulation_steps: int = 1) -> tuple[int, int]:
    """(per-device batch, accumulation steps) for ``num_processes`` processes.

    ``total_batch_size`` 0: the given per-device batch and accumulation. Otherwise the largest per-device batch
    <= ``per_device_max`` that divides ``total_batch_size / num_processes``, and the accumulation that makes
    per-device x processes x accumulation == ``total_batch_size`` (so e.g. the paper's 8 is 2 x 4 x 1 on 4 GPUs,
    2 x 1 x 4 on one). Raises if ``total_batch_size`` is not a multiple of the process count.
    """
    if total_batch_size <= 0:
        return per_device_max, gradient_accumulation_steps
    if total_batch_size % num_processes:
        raise ValueError(f"--total_batch_size {total_batch_size} is not a multiple of the {num_processes} processes; "
                         "launch a divisor of it or change --total_batch_size")
    per_process = total_batch_size // num_processes
    per_device = max(b for b in range(1, min(per_device_max, per_process) + 1) if per_process % b == 0)
    return per_device, per_process // per_device


def steps_per_epoch(n_examples: int, per_device: int, num_processes: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps in one epoch: accelerate shards ceil(n / (per_device x processes)) micro-batches to each
    process and steps every ``gradient_accumulation_steps`` of them and at the end of the epoch."""
    micro = math.ceil(n_examples / (per_device * num_processes))
    return max(1, math.ceil(micro / gradient_accumulation_steps))


def args_to_dict(args: TrainArgs) -> dict:
    return dataclasses.asdict(args)


__all__ = ["TrainArgs", "parse_args", "build_parser", "load_yaml_config", "validate_args", "args_to_dict", "batch_plan",
           "steps_per_epoch", "keep_epochs", "save_dtype"]
