"""Command line of the evaluator: score one model on RWKU (one target) or MUSE-Books and write the shared result JSON.

    python -m verl.eval --benchmark rwku --model_path smollm2-135m-instruct --target 1_Stephen_King \\
        --output log/eval/original/1_Stephen_King.json [--suites forget,neighbor,mia,utility] [--limit N]

Several models of one target in one process (one tokenizer, one HF model, one vLLM engine; weights swapped per model
when architecture and tokenizer match, else loaded afresh), each result the file a one-model run would write:

    python -m verl.eval --benchmark rwku --target 1_Stephen_King --output_dir DIR \\
        --model "Base=smollm2-135m-instruct" --model "Original=PATH" --model "rule_grpo:RULE (GRPO)=PATH" ...

``--model [NAME:]LABEL=PATH`` writes DIR/NAME.json with LABEL as its method; NAME defaults to ``slug(LABEL)`` (lower
case, other characters as "_": "RULE (GRPO)" -> rule_grpo.json). A model whose result exists (same flags, written
after its weights) is skipped unless ``--overwrite``.

Suites (``--suites``, comma separated): RWKU forget, neighbor, mia, utility, naturalness, robustness, boundary
(the held-out <normal> rows of the ReBO file, verl/eval/boundary.py) (default forget,neighbor,mia,utility); MUSE
verbmem, knowmem, privleak (or "muse" = all three, the default),
robustness (probes chosen with ``--robustness relearn,quant,logit_lens``, default all). naturalness / robustness
live in their own modules and are imported only when asked for.
The JSON (written atomically) holds benchmark, method, target, protocol, model_path, created, git_commit, config,
metrics, generations and timing (seconds per suite); see verl/eval/RESULTS.md for the layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.muse import muse_dir
from data.rwku import FORGET_FILES, NEIGHBOR_FILES, resolve_target
from verl.eval import naturalness as nat
from verl.eval.loader import ModelHolder
from verl.models.embedded import resolve_model_path
from verl.utils.cli import UserError, run_main
from verl.utils.io import atomic_write_json, json_safe
from verl.utils.records import read_json
from verl.utils.runinfo import git_commit
from verl.utils.vllm_engine import resolve_engine

logger = logging.getLogger("verl.eval")

RWKU_DEFAULT_SUITES = ("forget", "neighbor", "mia", "utility")
MUSE_DEFAULT_SUITES = ("muse",)


@dataclass
class EvalConfig:
    """The typed settings of one model's evaluation: every flag but those of the multi-model mode (``EvalCommand``).
    A result's ``config`` and its partial file's fingerprint are these fields; the flags' help is in build_parser."""

    benchmark: str = "rwku"
    model_path: str | None = None
    target: str | None = None
    data_dir: str | None = None
    output: str | None = None
    suites: str | None = None
    limit: int | None = None
    probe_bos: str = "rwku"
    user_turn: str = "template"
    stop_ids: str = "all"
    utility_bos: str = "single"
    bbh_stop: str = "question"
    fluency_tokenizer: str = "treebank"
    verbmem_prompt: str = "muse"
    utility_limit: str | None = None
    batch_size: int = 16
    long_gen_tokens: int = 256
    method: str | None = None
    protocol: str = "paper"
    engine: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 2
    judge: str = "auto"
    judge_model: str | None = None
    judge_base_url: str | None = None
    robustness: str | None = None
    boundary_share: float = 0.05


@dataclass
class EvalCommand(EvalConfig):
    """The whole command line: ``EvalConfig`` plus the flags of several models in one process."""

    model: list[str] | None = None
    output_dir: str | None = None
    overwrite: bool = False


DEFAULTS = EvalCommand()


def to_config(values: argparse.Namespace | EvalConfig) -> EvalConfig:
    """The typed config of parsed flags: ``OmegaConf.structured(EvalCommand)`` with the flags merged on top (each
    value checked against its field's type); an ``EvalConfig`` is returned as it is."""
    if isinstance(values, EvalConfig):
        return values
    cfg = OmegaConf.structured(EvalCommand)
    OmegaConf.set_struct(cfg, True)  # an unknown key is an error, not a new field
    try:
        return OmegaConf.to_object(OmegaConf.merge(cfg, vars(values)))
    except OmegaConfBaseException as exc:
        raise UserError(f"--{exc.key}: {str(exc).splitlines()[0]}") from None


def parse_config(argv: list[str] | None = None) -> EvalConfig:
    """The command line (``build_parser``'s flags) as a typed ``EvalCommand``."""
    return to_config(build_parser().parse_args(argv))


@dataclass
class EvalContext:
    """Everything a suite runner needs; runners add their results to ``metrics`` / ``generations``."""

    args: EvalConfig  # the typed settings of this model's evaluation
    model: object  # Hugging Face causal LM (scoring, and generation with --engine hf)
    tokenizer: object  # its tokenizer (left padding)
    gen_model: object | None = None  # vllm.LLM with --engine vllm, else None (use ``model``)
    metrics: dict = field(default_factory=dict)  # suite -> metrics (shared result format)
    generations: dict = field(default_factory=dict)  # file/suite -> records
    timing: dict = field(default_factory=dict)  # suite -> seconds


# ---------------------------------------------------------------- suite runners
def _run_probes(ctx: EvalContext, suite: str) -> None:
    from verl.eval import rwku  # start-up cost: torch; --help and the checks before the model loads stay fast

    files = FORGET_FILES if suite == "forget" else NEIGHBOR_FILES
    m, g = rwku.evaluate_probes(ctx.model, ctx.tokenizer, ctx.args.target, files, limit=ctx.args.limit,
                                batch_size=ctx.args.batch_size, gen_model=ctx.gen_model, data_dir=ctx.args.data_dir,
                                probe_bos=ctx.args.probe_bos, stop=ctx.args.stop_ids)
    ctx.metrics[suite] = m
    ctx.generations.update(g)


def _run_mia(ctx: EvalContext, suite: str) -> None:
    from verl.eval import rwku  # start-up cost: torch; --help and the checks before the model loads stay fast

    m, items = rwku.evaluate_mia(ctx.model, ctx.tokenizer, ctx.args.target, limit=ctx.args.limit,
                                 batch_size=max(1, ctx.args.batch_size // 4), data_dir=ctx.args.data_dir)
    ctx.metrics["mia"] = m
    ctx.generations.update(items)


def _run_utility(ctx: EvalContext, suite: str) -> None:
    from verl.eval import rwku  # start-up cost: torch; --help and the checks before the model loads stay fast

    limit = parse_utility_limit(ctx.args.utility_limit, ctx.args.limit)
    m, g, t = rwku.evaluate_utility(ctx.model, ctx.tokenizer, ctx.args.target, limit=limit,
                                    batch_size=ctx.args.batch_size, gen_model=ctx.gen_model,
                                    data_dir=ctx.args.data_dir, long_gen_tokens=ctx.args.long_gen_tokens,
                                    bos=ctx.args.utility_bos, stop=ctx.args.stop_ids,
                                    bbh_stop=ctx.args.bbh_stop, fluency_tokenizer=ctx.args.fluency_tokenizer)
    ctx.metrics["utility"] = m
    ctx.generations.update(g)
    ctx.timing.update({f"utility.{k}": v for k, v in t.items()})


def parse_utility_limit(spec: str | int | None, default: int | None) -> int | dict | None:
    """``"20"`` -> 20; ``"Gen=20,Rea=4"`` -> {"Gen": 20, "Rea": 4} (other parts use ``default``)."""
    if spec is None or spec == "":
        return default
    if isinstance(spec, int) or str(spec).isdigit():
        if int(spec) <= 0:
            raise UserError(f"--utility_limit {spec}: must be >= 1 (omit it to use every record)")
        return int(spec)
    out = {}
    for part in str(spec).split(","):
        key, _, val = part.partition("=")
        if not val.strip().isdigit() or int(val) <= 0 or key.strip() not in ("Gen", "Rea", "Tru", "Fac", "Flu"):
            raise UserError(f"bad --utility_limit entry {part!r}: use N or Part=N with N >= 1 "
                            "(Gen, Rea, Tru, Fac, Flu)")
        out[key.strip()] = int(val)
    return {k: out.get(k, default) for k in ("Gen", "Rea", "Tru", "Fac", "Flu")}


def _run_naturalness(ctx: EvalContext, suite: str) -> None:
    if FORGET_FILES[0] not in ctx.generations and "forget" not in ctx.metrics:
        _run_probes(ctx, "forget")  # naturalness judges the forget-probe responses
    records = [r for stem in FORGET_FILES for r in ctx.generations.get(stem, [])]
    kw = {"judge": ctx.args.judge}
    if ctx.args.judge_model:
        kw["model"] = ctx.args.judge_model
    if ctx.args.judge_base_url:
        kw["base_url"] = ctx.args.judge_base_url
    m, items = nat.evaluate_naturalness(records, nat.NaturalnessConfig(**kw))
    if m["n"] and not m["n_scored"]:  # the suites before it are kept (partial file): a rerun redoes only this one
        raise UserError(f"naturalness: every judge call failed ({m['failures']}); check OPENAI_API_KEY, "
                        "--judge_base_url and --judge_model, or use --judge proxy")
    ctx.metrics["naturalness"] = m
    ctx.generations["naturalness"] = items


def _run_robustness(ctx: EvalContext, suite: str) -> None:
    from verl.eval import robustness  # start-up cost: torch, for a suite run only on request

    ctx.metrics["robustness"] = robustness.evaluate_robustness(ctx.model, ctx.tokenizer, ctx.args.target,
                                                               robustness_config(ctx.args),
                                                               baseline_forget=ctx.metrics.get("forget"))


def robustness_config(cfg: EvalConfig):
    """The robustness suite's ``RobustnessConfig`` from the evaluator's settings: ``--robustness`` names its probes
    (``--suites`` names the evaluator's suites); limit, batch, model, data root and benchmark are shared."""
    from verl.eval import robustness  # start-up cost: torch, for a suite run only on request

    return robustness.config_from({"suites": cfg.robustness, "limit": cfg.limit, "batch_size": cfg.batch_size,
                                   "model_path": cfg.model_path, "data_dir": cfg.data_dir,
                                   "benchmark": cfg.benchmark})


def _run_muse(ctx: EvalContext, suite: str) -> None:
    from verl.eval import muse  # start-up cost: torch; --help and the checks before the model loads stay fast

    parts = muse.MUSE_SUITES if suite == "muse" else (suite,)
    m, g, t = muse.evaluate_muse(ctx.model, ctx.tokenizer, parts, limit=ctx.args.limit,
                                 batch_size=ctx.args.batch_size, gen_model=ctx.gen_model, data_dir=ctx.args.data_dir,
                                 corpus=ctx.args.target, verbmem_prompt=ctx.args.verbmem_prompt)
    ctx.metrics.setdefault("muse", {}).update(m)
    ctx.generations.update(g)
    ctx.timing.update({f"muse.{k}": v for k, v in t.items()})


def _run_boundary(ctx: EvalContext, suite: str) -> None:
    from verl.eval import boundary  # start-up cost: torch; --help and the checks before the model loads stay fast

    a = ctx.args
    m, g = boundary.evaluate_boundary(ctx.model, ctx.tokenizer, a.target, limit=a.limit, batch_size=a.batch_size,
                                      gen_model=ctx.gen_model, data_dir=a.data_dir, probe_bos=a.probe_bos,
                                      stop=a.stop_ids, share=a.boundary_share)
    ctx.metrics["boundary"] = m
    ctx.generations["boundary"] = g


SUITES: dict[str, dict[str, Callable[[EvalContext, str], None]]] = {
    "rwku": {"forget": _run_probes, "neighbor": _run_probes, "mia": _run_mia, "utility": _run_utility,
             "naturalness": _run_naturalness, "robustness": _run_robustness, "boundary": _run_boundary},
    "muse": {"muse": _run_muse, "verbmem": _run_muse, "knowmem": _run_muse, "privleak": _run_muse,
             "robustness": _run_robustness},
}


# ---------------------------------------------------------------- helpers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verl.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=("rwku", "muse"), default=DEFAULTS.benchmark,
                   help="which benchmark (default rwku)")
    p.add_argument("--model_path", default=DEFAULTS.model_path,
                   help="HF folder, hub id, or 'smollm2-135m-instruct' (one model)")
    p.add_argument("--model", action="append", default=DEFAULTS.model, metavar="[NAME:]LABEL=PATH",
                   help="several models in one process (repeat the flag; with --output_dir): each result goes to "
                   "DIR/NAME.json, NAME defaulting to the label in lower case with other characters as _ "
                   "('RULE (GRPO)=DIR' -> rule_grpo.json), and LABEL is its method")
    p.add_argument("--target", default=DEFAULTS.target,
                   help="RWKU target (id, folder or name); MUSE corpus (default books)")
    p.add_argument("--data_dir", default=DEFAULTS.data_dir, help="data root (default $RULE_DATA_DIR, then ./data)")
    p.add_argument("--output", default=DEFAULTS.output, help="result JSON path (one model)")
    p.add_argument("--output_dir", default=DEFAULTS.output_dir,
                   help="folder of the results of --model (DIR/NAME.json each)")
    p.add_argument("--overwrite", action="store_true", help="with --model: evaluate a model again even when its "
                   "result exists (default: skipped when written with the same flags after its weights)")
    p.add_argument("--suites", default=DEFAULTS.suites, help="comma-separated suites (see the module doc)")
    p.add_argument("--limit", type=int, default=DEFAULTS.limit, help="use only the first N records of every file")
    p.add_argument("--probe_bos", choices=("rwku", "single"), default=DEFAULTS.probe_bos,
                   help="forget/neighbor prompt BOS: rwku (as RWKU's code tokenizes: two on Llama-3) or single")
    p.add_argument("--user_turn", choices=("template", "verbatim"), default=DEFAULTS.user_turn,
                   help="chat prompts: the user text as the model's template renders it (Llama-3's trims it) or "
                   "verbatim (the release: a probe's final newline stays before <|eot_id|>)")
    p.add_argument("--stop_ids", choices=("all", "eot"), default=DEFAULTS.stop_ids,
                   help="RWKU generation ends at every EOS id of the tokenizer and generation config, or at "
                   "<|eot_id|> only (eot: the release's evaluator)")
    p.add_argument("--utility_bos", choices=("single", "rwku"), default=DEFAULTS.utility_bos,
                   help="utility prompts (MMLU, BBH, TruthfulQA, TriviaQA, fluency): the template's BOS only, or "
                   "tokenized with special tokens as RWKU's code does (rwku: two BOS on Llama-3)")
    p.add_argument("--bbh_stop", choices=("question", "none"), default=DEFAULTS.bbh_stop,
                   help="BBH generation also stops at a new \"\\nQ:\" (question) or only at EOS (none: RWKU's code)")
    p.add_argument("--fluency_tokenizer", choices=("treebank", "word_tokenize"), default=DEFAULTS.fluency_tokenizer,
                   help="fluency words: nltk's Treebank tokenizer over the whole text, or nltk.word_tokenize "
                   "(sentences split first: RWKU's code)")
    p.add_argument("--verbmem_prompt", choices=("muse", "release"), default=DEFAULTS.verbmem_prompt,
                   help="MUSE VerbMem: the raw prompt, no stop (MUSE's code), or \"Completion: {prompt}\\nAnswer: \" "
                   "stopped at a newline (release: the RULE release's evaluator)")
    p.add_argument("--utility_limit", default=DEFAULTS.utility_limit,
                   help="first N records of each utility file (overrides "
                   "--limit for utility); N or per part, e.g. Gen=20,Tru=20,Fac=20,Rea=4,Flu=4")
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size,
                   help="prompts per generation / scoring batch (default 16)")
    p.add_argument("--long_gen_tokens", type=int, default=DEFAULTS.long_gen_tokens,
                   help="new tokens for BBH and fluency (RWKU: 256; "
                   "lower only for smoke tests)")
    p.add_argument("--method", default=DEFAULTS.method,
                   help="method name stored in the result (default: model folder name)")
    p.add_argument("--protocol", choices=("paper", "sandbox"), default=DEFAULTS.protocol,
                   help="protocol recorded in the result (sandbox: knowledge-injected original; default paper)")
    p.add_argument("--engine", choices=("auto", "hf", "vllm"), default=DEFAULTS.engine,
                   help="generation engine: auto = vllm "
                   "when importable (CPU or GPU), else hf; log-prob scoring is always HF")
    p.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda, cuda:0 ...")
    p.add_argument("--dtype", default=DEFAULTS.dtype,
                   help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads, help="torch CPU threads")
    p.add_argument("--judge", default=DEFAULTS.judge, help="naturalness judge: auto, openai or proxy")
    p.add_argument("--judge_model", default=DEFAULTS.judge_model,
                   help="naturalness judge model (openai judge; default gpt-4o-mini)")
    p.add_argument("--judge_base_url", default=DEFAULTS.judge_base_url, help="OpenAI-compatible endpoint of the judge "
                   "(default $OPENAI_BASE_URL; the key is read from $OPENAI_API_KEY)")
    p.add_argument("--robustness", default=DEFAULTS.robustness,
                   help="robustness probes (suite robustness): comma-separated "
                   "relearn, quant, logit_lens (default all)")
    p.add_argument("--boundary_share", type=float, default=DEFAULTS.boundary_share,
                   help="suite boundary: share of the ReBO groups "
                   "held out as the suite (data/boundary.py BOUNDARY_SHARE; must match ReBO's filtered file)")
    return p


def _suites(args) -> list[str]:
    default = RWKU_DEFAULT_SUITES if args.benchmark == "rwku" else MUSE_DEFAULT_SUITES
    names = [s.strip() for s in (args.suites or ",".join(default)).split(",") if s.strip()]
    unknown = [s for s in names if s not in SUITES[args.benchmark]]
    if unknown:
        known = sorted(SUITES[args.benchmark])
        raise SystemExit(f"unknown suite(s) {unknown} for {args.benchmark}; choose from {known}")
    return names


# files each suite reads: all must exist before the model loads (a missing one once left "All" the mean of the rest)
RWKU_SUITE_FILES = {
    "forget": FORGET_FILES,
    "neighbor": NEIGHBOR_FILES,
    "mia": ("forget_mia", "retain_mia"),
    "utility": ("retain_mmlu", "retain_bbh", "truthful", "triviaqa", "fluency"),
    "naturalness": FORGET_FILES,
    "robustness": (*FORGET_FILES, "passage"),
    "boundary": (),  # the ReBO file is optional: without it the suite is empty and says so
}
MUSE_SUITE_FILES = {
    "verbmem": ("verbmem/forget",),
    "knowmem": ("knowmem/forget_qa", "knowmem/retain_qa", "knowmem/forget_qa_icl", "knowmem/retain_qa_icl"),
    "privleak": ("privleak/forget", "privleak/holdout"),
}
MUSE_CORPORA = ("books",)


def precheck(args: EvalConfig, suites: list[str]) -> None:
    """Everything checkable before the model loads (UserError naming the flag or file): numeric flags, the MUSE
    corpus, the output path, the judge's key, the data files of every suite."""
    for flag in ("limit", "batch_size", "long_gen_tokens", "threads"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            hint = " (omit --limit to use every record)" if flag == "limit" else ""
            raise UserError(f"--{flag} {value}: must be >= 1{hint}")
    if "utility" in suites:
        parse_utility_limit(args.utility_limit, args.limit)
    if args.benchmark == "muse" and args.target not in MUSE_CORPORA:
        raise UserError(f"--benchmark muse --target {args.target}: only {MUSE_CORPORA} is supported (the MUSE-Books "
                        "data and its retrain AUC); omit --target")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"--output {out} is a folder: give a file path such as {out / 'result.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"--output {out}: cannot write there ({exc.strerror or exc})") from None
    if "naturalness" in suites:
        if args.judge not in ("auto", "openai", "proxy"):
            raise UserError(f"--judge {args.judge!r}: choose auto, openai or proxy")
        if args.judge == "openai" and not os.environ.get("OPENAI_API_KEY"):
            raise UserError("--judge openai needs OPENAI_API_KEY in the environment (or use --judge proxy)")
    if args.benchmark == "rwku":
        tgt = resolve_target(args.target, args.data_dir)
        paths = [tgt.file(stem) for suite in suites for stem in RWKU_SUITE_FILES.get(suite, ())]
    else:
        parts = list(MUSE_SUITE_FILES) if "muse" in suites else suites
        root = muse_dir(args.data_dir)
        paths = [root / f"{stem}.json" for part in parts for stem in MUSE_SUITE_FILES.get(part, ())]
    missing = [str(p) for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        raise UserError(f"missing data file(s) for suites {suites}: {', '.join(missing)}. Restore them "
                        "(python -m data.prepare) or choose other --suites")
    for p in dict.fromkeys(paths):  # syntax only (cheap); every suite validates its records when it loads them
        read_json(p)


def _fingerprint(args: EvalConfig) -> dict:
    """What must match for a partial result to be reused: every flag that changes a number, plus the model
    folder's weight files (size and mtime), so a retrained checkpoint at the same path is evaluated afresh."""
    keep = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("output", "suites", "threads", "robustness")}
    path = Path(str(args.model_path)).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        keep["weights"] = {f.name: [f.stat().st_size, int(f.stat().st_mtime)] for f in files}
    return json_safe(keep)


def partial_path(output: str | Path) -> Path:
    """Finished suites of an unfinished evaluation (removed once the result file is written)."""
    out = Path(output)
    return out.with_name(f".{out.name}.partial.json")


def load_partial(args: EvalConfig) -> dict | None:
    path = partial_path(args.output)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("ignoring unreadable partial results %s", path)
        return None
    if saved.get("fingerprint") != _fingerprint(args):
        logger.warning("ignoring partial results %s: made with other flags or another model", path)
        return None
    return saved


def save_partial(args: EvalConfig, ctx: EvalContext, done: list[str]) -> None:
    atomic_write_json(partial_path(args.output), {"fingerprint": _fingerprint(args), "done": done,
                                                  "metrics": ctx.metrics, "generations": ctx.generations,
                                                  "timing": ctx.timing})


def prepare(args: EvalConfig) -> list[str]:
    """The suites to run, after every check that needs no model (the target resolved to its folder)."""
    suites = _suites(args)
    if "robustness" in suites:
        try:
            robustness_config(args)  # an unknown --robustness probe fails before the model loads
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.benchmark == "muse":
        args.target = args.target or "books"
    else:
        if not args.target:
            raise UserError("--target is required for RWKU (e.g. 1_Stephen_King)")
        args.target = resolve_target(args.target, args.data_dir).folder
    return suites


def _device(args: EvalConfig) -> tuple[str, str]:
    """``(device, dtype)`` with ``auto`` resolved: bfloat16 on GPU, float32 on CPU."""
    import torch  # start-up cost: --help and the checks before the model loads stay fast

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    # float32 on every CPU, bf16 units or not: a bf16 engine changed 35 of 107 greedy probe answers of a model that
    # generates to the token limit (README "Speed on a CPU")
    logger.info("precision: %s weights on %s (%s)", dtype, device,
                "--dtype auto" if args.dtype == "auto" else "--dtype")
    if device == "cpu":
        torch.set_num_threads(max(1, args.threads))
    return device, dtype


def _engine(args: EvalConfig, device: str) -> str:
    try:
        return resolve_engine(args.engine, "--engine", resolve_model_path(args.model_path), device.split(":")[0])
    except (ImportError, ValueError) as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace | EvalConfig) -> dict:
    """Check the inputs, load the model, run the suites (each finished suite saved, so a rerun of the same command
    skips it), write and return the result dict. With ``--model`` (several models): ``run_many``. ``args``: the
    typed config, or parsed flags (typed here)."""
    args = to_config(args)
    if isinstance(args, EvalCommand) and args.model:
        return run_many(args)
    if isinstance(args, EvalCommand) and args.output_dir:
        raise UserError("--output_dir goes with --model NAME=PATH (several models); one model takes --output")
    if not args.model_path or not args.output:
        raise UserError("give --model_path and --output (one model), or --model NAME=PATH ... and --output_dir")
    args = single_args(args)
    suites = prepare(args)
    precheck(args, suites)
    device, dtype = _device(args)
    engine = _engine(args, device)
    holder = ModelHolder(dtype, device, args.user_turn)
    try:
        loaded = holder.load(resolve_model_path(args.model_path), engine)
        return evaluate(args, suites, loaded, device, dtype, engine)
    finally:
        holder.close()


def evaluate(args: EvalConfig, suites: list[str], loaded, device: str, dtype: str, engine: str) -> dict:
    """Run the suites of one model on its loaded models (``loader.Loaded``), keeping finished suites in the partial
    file; write and return the result."""
    t0 = time.time() - loaded.seconds  # the total counts this model's load (or weight swap)
    ctx = EvalContext(args=args, model=loaded.model, tokenizer=loaded.tokenizer, gen_model=loaded.gen_model)
    ctx.timing["load"] = loaded.seconds
    done: list[str] = []
    saved = load_partial(args)
    if saved:
        done = [s for s in saved["done"] if s in suites]
        ctx.metrics.update(saved["metrics"])
        ctx.generations.update(saved["generations"])
        ctx.timing.update({k: v for k, v in saved["timing"].items() if k != "load"})
        logger.info("kept finished suites %s from %s", done, partial_path(args.output))
    for suite in suites:
        if suite in done:
            continue
        t = time.time()
        logger.info("suite %s ...", suite)
        SUITES[args.benchmark][suite](ctx, suite)
        ctx.timing[suite] = round(time.time() - t, 2)
        logger.info("suite %s done in %.1fs: %s", suite, ctx.timing[suite], _brief(ctx.metrics, suite))
        done.append(suite)
        save_partial(args, ctx, done)
    ctx.timing["total"] = round(time.time() - t0, 2)
    result = {
        "benchmark": args.benchmark,
        "method": args.method or Path(str(args.model_path).rstrip("/")).name,
        "target": args.target,
        "protocol": args.protocol,
        "model_path": str(args.model_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "config": dataclasses.asdict(args) | {"suites": suites, "device": device, "dtype": dtype, "engine": engine},
        "metrics": ctx.metrics,
        "generations": ctx.generations,
        "timing": ctx.timing,
    }
    atomic_write_json(args.output, result)
    partial_path(args.output).unlink(missing_ok=True)
    logger.info("wrote %s", args.output)
    return json_safe(result)


# ---------------------------------------------------------------- several models in one process
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ModelSpec:
    """One ``--model``: its result goes to ``<output_dir>/<name>.json`` with ``label`` as the method."""

    name: str
    label: str
    path: str


def slug(label: str) -> str:
    """A label as a file name: lower case, each run of characters other than a-z 0-9 . _ - made one "_", none at
    the ends (``RULE (GRPO)`` -> ``rule_grpo``, ``Original`` -> ``original``)."""
    return re.sub(r"[^a-z0-9._-]+", "_", label.lower()).strip("._-")


def parse_model_spec(spec: str) -> ModelSpec:
    """``NAME:LABEL=PATH`` or ``LABEL=PATH``: the text before the first "=" names the model, the rest is its path.
    NAME (letters, digits, . _ -) is the result's file name; without it the file name is ``slug(LABEL)``."""
    head, sep, path = spec.partition("=")
    head, path = head.strip(), path.strip()
    if not sep or not head or not path:
        raise UserError(f"--model {spec!r}: use LABEL=PATH or NAME:LABEL=PATH (e.g. 'rule_grpo:RULE (GRPO)=DIR')")
    name, colon, label = head.partition(":")
    if colon and _NAME.match(name.strip()) and label.strip():
        return ModelSpec(name.strip(), label.strip(), path)
    if not slug(head):
        raise UserError(f"--model {spec!r}: the label {head!r} gives no file name; add one: NAME:LABEL=PATH")
    return ModelSpec(slug(head), head, path)


def model_specs(values: list[str]) -> list[ModelSpec]:
    specs = [parse_model_spec(v) for v in values]
    seen: dict[str, str] = {}
    for s in specs:
        if s.name in seen:
            raise UserError(f"--model: {seen[s.name]!r} and {s.label!r} would both write {s.name}.json; give names: "
                            "NAME:LABEL=PATH")
        seen[s.name] = s.label
    return specs


def single_args(args: argparse.Namespace | EvalConfig, spec: ModelSpec | None = None,
                output_dir: str | None = None) -> EvalConfig:
    """The config a one-model run of this model has (the multi-model flags dropped), so its result, config and
    partial-file fingerprint are those of ``--model_path PATH --output DIR/NAME.json --method LABEL``."""
    values = {f.name: getattr(to_config(args), f.name) for f in dataclasses.fields(EvalConfig)}
    if spec is not None:
        values.update(model_path=spec.path, output=str(Path(output_dir) / f"{spec.name}.json"), method=spec.label)
    return EvalConfig(**values)


def finished(args: EvalConfig, suites: list[str], device: str, dtype: str, engine: str) -> bool:
    """Whether ``args.output`` already holds this evaluation: same flags and suites, same device/dtype/engine,
    written after the model's weight files (a retrained checkpoint at the same path is evaluated again)."""
    out = Path(args.output)
    try:
        saved = json.loads(out.read_text(encoding="utf-8"))
        config = saved["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    want = _fingerprint(args)
    weights = want.pop("weights", {})
    for key in ("device", "dtype", "engine"):
        want.pop(key, None)
    have = json_safe({k: config.get(k) for k in want})
    if have != want or not set(suites) <= set(config.get("suites") or ()):
        return False
    if [config.get("device"), config.get("dtype"), config.get("engine")] != [device, dtype, engine]:
        return False
    return all(mtime <= out.stat().st_mtime for _, mtime in weights.values())


def run_many(args: EvalCommand) -> dict:
    """Evaluate several models of one target in this process: one tokenizer, one HF model and one vLLM engine whose
    weights are swapped per model when the architecture and tokenizer match (``verl.eval.loader``); each model's
    result is the file a one-model run writes. A model whose result exists is skipped (``--overwrite``: redone);
    a failing model does not stop the others (the run then fails naming it). Returns {name: result}."""
    if args.model_path or args.output:
        raise UserError("--model (several models) goes with --output_dir, not --model_path / --output")
    if not args.output_dir:
        raise UserError("--model NAME=PATH needs --output_dir DIR (results: DIR/NAME.json)")
    specs = model_specs(args.model)
    base = single_args(args)
    suites = prepare(base)
    per_model = [single_args(base, s, args.output_dir) for s in specs]
    for margs in per_model:
        precheck(margs, suites)
    paths = [resolve_model_path(m.model_path) for m in per_model]  # a missing folder fails before any model loads
    device, dtype = _device(base)
    holder = ModelHolder(dtype, device, base.user_turn)
    results, failed = {}, []
    try:
        for spec, margs, path in zip(specs, per_model, paths):
            engine = _engine(margs, device)
            if not args.overwrite and finished(margs, suites, device, dtype, engine):
                logger.info("%s: %s exists (same flags, newer than the weights): skipped", spec.label, margs.output)
                results[spec.name] = json.loads(Path(margs.output).read_text(encoding="utf-8"))
                continue
            logger.info("model %s (%s) -> %s", spec.label, path, margs.output)
            try:
                results[spec.name] = evaluate(margs, suites, holder.load(path, engine), device, dtype, engine)
            except Exception:  # the next models still run; this one's finished suites stay in its partial file
                logger.exception("evaluation of %s failed", spec.label)
                failed.append(spec.label)
                holder.close()
    finally:
        holder.close()
    if failed:
        raise RuntimeError(f"evaluation failed for {', '.join(failed)} (the others were written to {args.output_dir})")
    return results


def _brief(metrics: dict, suite: str) -> str:
    m = metrics.get(suite) or metrics.get("muse") or {}
    if suite == "robustness":
        from verl.eval.robustness import summary  # start-up cost: torch, for a suite run only on request

        m = summary(m)
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()
                       if not isinstance(v, dict) or k in ("FM", "RM")}, default=str)[:400]


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(parse_config(argv))


if __name__ == "__main__":
    run_main(main)
