"""Robustness probes of an unlearned model: relearning attack, quantised evaluation, logit lens.

- Relearning attack: a few fine-tuning steps on the target's forget passages (``passage.json``) applied to a
  COPY of the model, then the RWKU forget probes are evaluated again (``verl.eval.rwku.evaluate_forget``).
  Knowledge that was only suppressed comes back after a handful of steps; erased knowledge does not.
- Quantised evaluation: the model reloaded in 8-bit / 4-bit (bitsandbytes) and the forget probes evaluated again
  (quantisation is known to undo some gradient-based unlearning). Needs bitsandbytes, a CUDA GPU and a model
  path to reload from; otherwise reported as ``{"skipped": true, "reason": ...}``.
- Logit lens: for forget FB probes, the final norm + LM head are applied to every decoder layer's hidden state
  at the last prompt position; the rank of the gold answer's first token (1 = top) per layer shows whether the
  answer is still decodable inside the network even when the output refuses.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, fields

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from data.rwku import FORGET_FILES
from verl.eval import rwku
from verl.eval.generation import _encode, _left_pad
from verl.models.embedded import resolve_model_path
from verl.rule.prompts import build_prompt

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
PROBES = ("relearn", "quant", "logit_lens")


@dataclass
class RobustnessConfig:
    suites: tuple[str, ...] = PROBES  # which probes to run
    relearn_steps: int = 10  # optimizer steps of the relearning attack
    relearn_lr: float = 1e-5  # AdamW learning rate of the attack
    relearn_batch_size: int = 4  # passages per step
    relearn_max_length: int = 256  # tokens per passage (truncated)
    relearn_max_texts: int | None = None  # use at most this many passages (None = all)
    quant_bits: tuple[int, ...] = (8, 4)  # bitsandbytes precisions to evaluate
    logit_lens_limit: int | None = 50  # forget FB probes used by the logit lens (None = all)
    logit_lens_top_k: int = 10  # "hit" = gold first token ranked within the top k
    limit: int | None = None  # probes per forget file for the re-evaluations and at most the logit lens (None = all)
    batch_size: int = 16  # generation batch size of the re-evaluations
    model_path: str | None = None  # folder to reload quantised from (quant suite)
    data_dir: str | None = None  # data root (None = RULE_DATA_DIR / ./data)
    seed: int = 0  # passage order of the attack
    benchmark: str = "rwku"  # benchmark of the run (the probes exist for RWKU targets only)

    def __post_init__(self):
        unknown = [s for s in self.suites if s not in PROBES]
        if unknown:
            raise ValueError(f"unknown robustness probe(s) {unknown}; choose from {', '.join(PROBES)}")


def config_from(args: RobustnessConfig | dict | None) -> RobustnessConfig:
    """A RobustnessConfig from a RobustnessConfig or a dict of its fields (None values and other keys ignored; comma
    strings for ``suites`` and ``quant_bits``). The evaluator builds the dict from its typed settings
    (``verl.eval.cli.robustness_config``)."""
    if isinstance(args, RobustnessConfig):
        return args
    if args is None:
        return RobustnessConfig()
    if not isinstance(args, dict):
        raise TypeError(f"robustness settings: a RobustnessConfig or a dict, not {type(args).__name__}")
    names = {f.name for f in fields(RobustnessConfig)}
    kw = {k: v for k, v in args.items() if k in names and v is not None}
    for key in ("suites", "quant_bits"):
        if isinstance(kw.get(key), str):
            kw[key] = tuple(x.strip() for x in kw[key].split(",") if x.strip())
    if "quant_bits" in kw:
        kw["quant_bits"] = tuple(int(b) for b in kw["quant_bits"])
    return RobustnessConfig(**kw)


# ----------------------------------------------------------------------------------------------- relearning
def relearn(
    model,
    tokenizer,
    texts: list[str],
    steps: int = 10,
    lr: float = 1e-5,
    batch_size: int = 4,
    max_length: int = 256,
    seed: int = 0,
):
    """Fine-tune a deep copy of ``model`` on ``texts`` (causal LM loss, AdamW, grad clip 1.0) for ``steps`` steps.

    Batches cycle through a seeded permutation of the texts. The original model is not touched (its
    parameters and train/eval mode stay as they were). Returns ``(model_copy, losses)`` with the copy in eval
    mode and one loss per step. Memory: the copy and its AdamW state need about 3x the model's size.
    """
    if not texts:
        raise ValueError("relearn needs at least one text (the target's passage.json is empty?)")
    attacked = copy.deepcopy(model)
    attacked.train()
    device = next(attacked.parameters()).device
    params = [p for p in attacked.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # plain forward: right padding keeps positions of real tokens at 0..n-1
    losses = []
    try:
        for step in range(steps):
            batch = [texts[order[(step * batch_size + i) % len(texts)]] for i in range(batch_size)]
            enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            enc = {k: v.to(device) for k, v in enc.items()}
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
            loss = attacked(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        tokenizer.padding_side = side
    del opt
    attacked.eval()
    return attacked, losses


# ----------------------------------------------------------------------------------------------- quantisation
def quant_unavailable_reason(model_path: str | None = None) -> str | None:
    """Why k-bit evaluation cannot run here, or None when it can."""
    try:
        import bitsandbytes  # noqa: F401 - optional heavy dependency: a CUDA machine's, only for k-bit runs
    except Exception as exc:  # noqa: BLE001 - any import failure (missing, broken CUDA libs) means unavailable
        return f"bitsandbytes is not importable ({type(exc).__name__}); pip install bitsandbytes on a CUDA machine"
    if not torch.cuda.is_available():
        return "no CUDA GPU: bitsandbytes 8/4-bit inference needs one"
    if not model_path:
        return "no model path to reload the model quantised from (set model_path)"
    return None


def quantized_forget_eval(model_path: str, tokenizer, target, bits: int, cfg: RobustnessConfig) -> dict:
    """Reload ``model_path`` in ``bits``-bit (8 = LLM.int8, 4 = NF4 with bf16 compute) and run the forget probes."""
    reason = quant_unavailable_reason(model_path)
    if reason:
        return {"skipped": True, "reason": reason}

    if bits == 8:
        qcfg = BitsAndBytesConfig(load_in_8bit=True)
    elif bits == 4:
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        return {"skipped": True, "reason": f"unsupported precision {bits} (8 or 4)"}
    t0 = time.time()
    qmodel = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model_path), quantization_config=qcfg, device_map={"": 0}, dtype=torch.bfloat16
    )
    qmodel.eval()
    try:
        metrics, _ = rwku.evaluate_forget(
            qmodel, tokenizer, target, limit=cfg.limit, batch_size=cfg.batch_size, data_dir=cfg.data_dir
        )
    finally:
        del qmodel
        torch.cuda.empty_cache()
    return {"skipped": False, "bits": bits, "forget": metrics, "seconds": time.time() - t0}


# ----------------------------------------------------------------------------------------------- logit lens
def _decoder_parts(model):
    """(decoder layers, final norm, LM head) of a Hugging Face causal LM (Llama/Qwen/Mistral/GPT-2 layouts)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    norm = getattr(decoder, "norm", None) or getattr(decoder, "ln_f", None) or getattr(decoder, "final_layernorm", None)
    head = model.get_output_embeddings()
    if layers is None or norm is None or head is None:
        raise ValueError(f"logit lens: cannot find decoder layers / final norm / LM head in {type(model).__name__}")
    return layers, norm, head


def answer_first_token_ids(tokenizer, answer: str) -> list[int]:
    """Candidate ids of the answer's first token: with and without a leading space (BPE tokenizers differ)."""
    ids = []
    for text in (" " + answer.strip(), answer.strip()):
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if toks and toks[0] not in ids:
            ids.append(toks[0])
    return ids


@torch.no_grad()
def logit_lens(model, tokenizer, prompts: list[str], answers: list[str], top_k: int = 10, batch_size: int = 8) -> dict:
    """Rank of each answer's first token when decoding every layer's last-position hidden state.

    For prompt i and decoder layer l (0 = first block's output, L-1 = last, whose lens equals the model's own
    logits), rank[i][l] = 1 + #{vocab tokens with a larger logit than the gold token}; with two candidate first
    tokens (with/without leading space) the better rank counts. Returns {"n", "num_layers", "vocab_size",
    "mean_rank": [L], "median_rank": [L], f"top{k}_rate": [L], "top_k": k, "ranks": [[L] per prompt]}.
    """
    if len(prompts) != len(answers):
        raise ValueError("logit_lens: prompts and answers differ in length")
    layers, norm, head = _decoder_parts(model)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        captured.append(hidden[:, -1, :])  # left padding: the last position is every row's last prompt token

    handles = [layer.register_forward_hook(hook) for layer in layers]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ranks: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk, gold = prompts[start : start + batch_size], answers[start : start + batch_size]
            ids, mask = _left_pad([_encode(tokenizer, p, None) for p in chunk], pad_id, device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does for left-padded rows
            captured.clear()
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
            cand = [answer_first_token_ids(tokenizer, a) for a in gold]
            per_layer = []
            for hidden in captured:  # [B, H] per layer
                logits = head(norm(hidden)).float()  # [B, V]
                layer_ranks = []
                for row, cids in enumerate(cand):
                    best = (
                        min(int((logits[row] > logits[row, c]).sum()) + 1 for c in cids) if cids else logits.shape[-1]
                    )
                    layer_ranks.append(best)
                per_layer.append(layer_ranks)
            ranks += [list(r) for r in zip(*per_layer)]  # [B][L]
    finally:
        for h in handles:
            h.remove()
    num_layers = len(layers)
    vocab = head.weight.shape[0] if hasattr(head, "weight") else None
    cols = list(zip(*ranks)) if ranks else [() for _ in range(num_layers)]
    mean_rank = [sum(c) / len(c) if c else None for c in cols]
    median_rank = [float(torch.tensor(c, dtype=torch.float).median()) if c else None for c in cols]
    hit = [sum(r <= top_k for r in c) / len(c) if c else None for c in cols]
    return {
        "n": len(ranks),
        "num_layers": num_layers,
        "vocab_size": vocab,
        "top_k": top_k,
        "mean_rank": mean_rank,
        "median_rank": median_rank,
        f"top{top_k}_rate": hit,
        "ranks": ranks,
    }


def forget_fb_logit_lens(
    model, tokenizer, target, limit: int | None = 50, top_k: int = 10, batch_size: int = 8, data_dir=None
) -> dict:
    """The logit lens over a target's forget FB probes, with the evaluator's RWKU FB prompts."""
    tgt = rwku._target(target, data_dir)
    probes = tgt.load(FORGET_FILES[0])  # level 1: the FB probes
    probes = probes[:limit] if limit else probes
    prompts = [build_prompt(p, "FB", tokenizer) for p in probes]
    out = logit_lens(model, tokenizer, prompts, [p["answer"] for p in probes], top_k=top_k, batch_size=batch_size)
    out.pop("ranks")  # per-probe ranks are bulky; the per-layer summaries go into the result file
    rate = out[f"top{top_k}_rate"]
    if out["n"]:  # headline numbers for tables: the layer where the answer is most often in the top k, and the last
        out["best_layer"] = max(range(len(rate)), key=rate.__getitem__)
        out["top_k_rate_best"], out["top_k_rate_final"] = rate[out["best_layer"]], rate[-1]
    return out


# ----------------------------------------------------------------------------------------------- all
def evaluate_robustness(model, tokenizer, target, args=None, baseline_forget: dict | None = None) -> dict:
    """Run the configured robustness suites on one target; ``args`` = RobustnessConfig or a dict of its fields.

    Returns the "robustness" block of the result file: {"relearn": {...}, "quant": {"8bit": {...}, "4bit": {...}},
    "logit_lens": {...}, "timing": {suite: seconds}}. With ``baseline_forget`` (the unattacked forget metrics),
    relearn and quant entries also get "delta_All" (attacked All - baseline All; > 0 = knowledge came back).
    """
    cfg = config_from(args)
    if cfg.benchmark != "rwku":
        return {"skipped": True,
                "reason": f"robustness probes are implemented for RWKU targets only, not {cfg.benchmark}"}
    tgt = rwku._target(target, cfg.data_dir)
    out: dict = {"timing": {}}
    base_all = (baseline_forget or {}).get("All")

    if "relearn" in cfg.suites:
        t0 = time.time()
        texts = [p["text"] for p in tgt.load("passage")]
        texts = texts[: cfg.relearn_max_texts] if cfg.relearn_max_texts else texts
        attacked, losses = relearn(
            model,
            tokenizer,
            texts,
            cfg.relearn_steps,
            cfg.relearn_lr,
            cfg.relearn_batch_size,
            cfg.relearn_max_length,
            cfg.seed,
        )
        metrics, _ = rwku.evaluate_forget(attacked, tokenizer, tgt, limit=cfg.limit, batch_size=cfg.batch_size)
        del attacked
        entry = {
            "steps": cfg.relearn_steps,
            "lr": cfg.relearn_lr,
            "batch_size": cfg.relearn_batch_size,
            "n_texts": len(texts),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "forget": metrics,
        }
        if base_all is not None:
            entry["delta_All"] = metrics["All"] - base_all
        out["relearn"] = entry
        out["timing"]["relearn"] = time.time() - t0

    if "quant" in cfg.suites:
        t0 = time.time()
        out["quant"] = {}
        for bits in cfg.quant_bits:
            res = quantized_forget_eval(cfg.model_path, tokenizer, tgt, int(bits), cfg)
            if not res.get("skipped") and base_all is not None:
                res["delta_All"] = res["forget"]["All"] - base_all
            if res.get("skipped"):
                logger.info("quantised %d-bit evaluation skipped: %s", bits, res["reason"])
            out["quant"][f"{bits}bit"] = res
        out["timing"]["quant"] = time.time() - t0

    if "logit_lens" in cfg.suites:
        t0 = time.time()
        lens_limit = min((x for x in (cfg.logit_lens_limit, cfg.limit) if x), default=None)
        out["logit_lens"] = forget_fb_logit_lens(
            model, tokenizer, tgt, lens_limit, cfg.logit_lens_top_k, batch_size=min(cfg.batch_size, 8)
        )
        out["timing"]["logit_lens"] = time.time() - t0
    return out


def summary(block: dict) -> dict:
    """The headline numbers of a robustness block (the evaluator's log line)."""
    if block.get("skipped"):
        return {"skipped": block.get("reason")}
    out: dict = {}
    if "relearn" in block:
        out["relearn_All"] = block["relearn"]["forget"]["All"]
        if "delta_All" in block["relearn"]:
            out["relearn_delta_All"] = block["relearn"]["delta_All"]
    for name, res in block.get("quant", {}).items():
        out[f"quant_{name}_All"] = "skipped" if res.get("skipped") else res["forget"]["All"]
    lens = block.get("logit_lens") or {}
    if "best_layer" in lens:
        out |= {f"logit_lens_{k}": lens[k] for k in ("best_layer", "top_k_rate_best", "top_k_rate_final")}
    return out
