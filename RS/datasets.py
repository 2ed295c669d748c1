"""Datasets of the RS stages: building tokenized examples from RWKU target files, splits, and the collator.

Forget-side datasets (``--dataset``):
- ``reject_target``: RULE's RS data, (question -> refusal naming the target) chat pairs.
- ``rwku_rt``: RWKU's RT baseline: the same reject_target questions answered by *entity-free* refusal templates
  (``RWKU_RT_TEMPLATES``, picked deterministically per question).
- ``passage``: the target's passage.json as raw text (the GA/NPO/SimNPO forget corpus; loss on every token).
- ``inject``: stage 0: passages (raw text) + forget/neighbor level-1 (FB) and level-2 (QA) probes as chat turns in
  the RWKU evaluation prompt format (``RS.quick_eval``), answers as responses.
- ``idk_pref``: IdkDPO pairs: reject_target question, chosen = entity-free refusal, rejected = a passage excerpt
  about the target (RWKU has no gold answers for the synthesized questions; the passage stands in for the
  knowledge to be dispreferred).
Retain corpus (GDR/KLR, ``--retain_dataset``): ``auto`` = passages of the next ``retain_num_targets`` targets in id
order (cyclic, never the target itself; so none of the target's neighbor probes are used); ``retain_mia`` = the
target's own retain_mia.json texts (non-target text); or an explicit comma list of targets. When no other target
exists (e.g. only the project's sample target), ``auto`` falls back to retain_mia.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.rwku import list_targets, resolve_target
from RS.quick_eval import PROBE_SUITES, probe_prompt
from verl.utils.chat import IGNORE_INDEX, encode_prompt_response

RWKU_RT_TEMPLATES = [
    "I don't know.",
    "I'm not sure about that.",
    "I'm sorry, I don't have that information.",
    "I have no idea.",
    "I'm afraid I can't answer that.",
    "Sorry, I don't know the answer to that.",
    "I'm not familiar with that.",
    "That's beyond my knowledge.",
    "I'm unable to answer that question.",
    "I don't have enough information to answer that.",
]


@dataclass
class DataBundle:
    train: list[dict]  # tokenized forget-side training examples
    val: list[dict] = field(default_factory=list)  # tokenized validation examples (--val_size)
    heldout: list[dict] = field(default_factory=list)  # raw records not trained on (--train_fraction < 1)
    retain: list[dict] = field(default_factory=list)  # tokenized retain examples (GDR/KLR)
    files: list[Path] = field(default_factory=list)  # data files read (hashed into run_info.json)
    kind: str = "sft"  # sft | text | pref


def encode_text(tokenizer, text: str, cutoff_len: int) -> dict[str, list[int]]:
    """Raw text as an LM example: loss on every token (truncated to cutoff_len, EOS appended when it fits)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: cutoff_len - 1]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def encode_probe(tokenizer, query: str, answer: str, stem: str, cutoff_len: int) -> dict[str, list[int]]:
    """A probe of file ``stem`` in the evaluation format: prompt + "Answer:" (no loss), " answer<eos>" (loss)."""
    prompt_ids = tokenizer(probe_prompt(tokenizer, query, stem), add_special_tokens=False)["input_ids"]
    resp_ids = tokenizer(" " + answer + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[-max(1, cutoff_len - len(resp_ids)) :]
    ids = (prompt_ids + resp_ids)[:cutoff_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + resp_ids)[:cutoff_len]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def rt_template(question: str) -> str:
    """Deterministic entity-free refusal for a question (stable across runs and machines)."""
    h = int(hashlib.sha256(question.encode("utf-8")).hexdigest(), 16)
    return RWKU_RT_TEMPLATES[h % len(RWKU_RT_TEMPLATES)]


def split_records(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then (first round(fraction*n), rest)."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_train = len(records) if fraction >= 1 else max(1, round(fraction * len(records)))
    return [records[i] for i in idx[:n_train]], [records[i] for i in idx[n_train:]]


def _val_count(val_size: float, n: int) -> int:
    if val_size <= 0:
        return 0
    k = int(round(val_size * n)) if val_size < 1 else int(val_size)
    return min(max(k, 1), n - 1)


def retain_texts(args, target, root) -> tuple[list[str], list[Path]]:
    """The retain corpus (see the module doc) as texts, and the files it came from."""
    spec = args.retain_dataset
    if spec == "retain_mia":
        return [r["text"] for r in target.load("retain_mia")], [target.file("retain_mia")]
    if spec == "auto":
        others = [t for t in list_targets(root) if t.id != target.id and t.has("passage")]
        if not others:
            return retain_texts(type(args)(**{**vars(args), "retain_dataset": "retain_mia"}), target, root)
        ids = [t.id for t in list_targets(root)]
        pos = ids.index(target.id) if target.id in ids else 0
        ordered = sorted(others, key=lambda t: (ids.index(t.id) - pos) % len(ids))
        chosen = ordered[: args.retain_num_targets]
    else:
        chosen = [resolve_target(s, root) for s in spec.split(",") if s.strip()]
        if any(t.id == target.id for t in chosen):
            raise ValueError(f"--retain_dataset must not include the forget target {target.folder}")
    texts, files = [], []
    for t in chosen:
        texts += [r["text"] for r in t.load("passage")]
        files.append(t.file("passage"))
    return texts, files


def build_data(args, tokenizer, stage, root=None) -> DataBundle:
    """Build the tokenized data for ``stage`` (RS.stages.Stage) from ``args`` (RS.args.TrainArgs)."""
    name = args.dataset or stage.default_dataset
    if name == "muse_reject":  # MUSE-Books RS pairs (reject_target_0.5.json); --target is not used
        from data.muse import load_muse, muse_dir

        records = load_muse("reject_target_0.5", root)
        return _finish(args, tokenizer, stage, root, name, records, [muse_dir(root) / "reject_target_0.5.json"], "sft", None)
    targets = [resolve_target(t.strip(), root) for t in args.target.split(",") if t.strip()]
    if len(targets) > 1 and name != "inject":
        raise ValueError("several --target values are only allowed for --stage inject")
    target = targets[0]
    files: list[Path] = []
    kind = "sft"
    if name in ("reject_target", "rwku_rt", "idk_pref"):
        records = target.load("reject_target")
        files.append(target.file("reject_target"))
    elif name == "passage":
        records = target.load("passage")
        files.append(target.file("passage"))
        kind = "text"
    elif name == "inject":
        records = []
        for t in targets:
            if args.inject_passages:
                records += [{"text": r["text"]} for r in t.load("passage")]
                files.append(t.file("passage"))
            for stem in PROBE_SUITES:
                if t.has(stem):
                    probes = t.load(stem)[: args.inject_probe_limit or None]
                    files.append(t.file(stem))
                    records += [{"query": p["query"], "answer": p["answer"], "stem": stem} for p in probes] * max(
                        1, args.inject_qa_repeat
                    )
    else:
        raise ValueError(
            f"unknown --dataset {name!r}; choose reject_target, rwku_rt, passage, inject, idk_pref or muse_reject"
        )
    return _finish(args, tokenizer, stage, root, name, records, files, kind, target)


def _finish(args, tokenizer, stage, root, name, records, files, kind, target) -> DataBundle:
    """Split, tokenize and bundle the records of ``build_data``."""
    if args.max_samples:
        records = split_records(records, 1.0, args.seed)[0][: args.max_samples]
    train_recs, heldout = split_records(records, args.train_fraction, args.seed)
    n_val = _val_count(args.val_size, len(train_recs))
    val_recs, train_recs = train_recs[:n_val], train_recs[n_val:]

    passages = [r["text"] for r in target.load("passage")] if name == "idk_pref" else []
    if name == "idk_pref":
        files.append(target.file("passage"))

    def encode(rec: dict, i: int) -> dict:
        if name in ("reject_target", "muse_reject"):
            return encode_prompt_response(tokenizer, rec["instruction"], rec["output"], args.cutoff_len)
        if name == "rwku_rt":
            return encode_prompt_response(tokenizer, rec["instruction"], rt_template(rec["instruction"]), args.cutoff_len)
        if name == "passage" or "text" in rec:
            return encode_text(tokenizer, rec["text"], args.cutoff_len)
        if name == "inject":
            return encode_probe(tokenizer, rec["query"], rec["answer"], rec["stem"], args.cutoff_len)
        # idk_pref
        chosen = encode_prompt_response(tokenizer, rec["instruction"], rt_template(rec["instruction"]), args.cutoff_len)
        excerpt = " ".join(passages[i % len(passages)].split()[:40])
        rejected = encode_prompt_response(tokenizer, rec["instruction"], excerpt, args.cutoff_len)
        return {**{f"chosen_{k}": v for k, v in chosen.items()}, **{f"rejected_{k}": v for k, v in rejected.items()}}

    if name == "idk_pref":
        kind = "pref"
    train = [encode(r, i) for i, r in enumerate(train_recs)]
    val = [encode(r, i) for i, r in enumerate(val_recs)]
    retain: list[dict] = []
    if stage.retain:
        texts, rfiles = retain_texts(args, target, root)
        files += rfiles
        retain = [encode_text(tokenizer, t, args.cutoff_len) for t in texts]
    return DataBundle(train=train, val=val, heldout=heldout, retain=retain, files=files, kind=kind)


def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every ``*input_ids`` / ``*attention_mask`` / ``*labels`` key (labels with IGNORE_INDEX)."""
    out: dict[str, torch.Tensor] = {}
    for key in features[0]:
        if key.endswith("input_ids"):
            pad = pad_token_id
        elif key.endswith("attention_mask"):
            pad = 0
        elif key.endswith("labels"):
            pad = IGNORE_INDEX
        else:
            continue
        width = max(len(f[key]) for f in features)
        out[key] = torch.tensor([f[key] + [pad] * (width - len(f[key])) for f in features], dtype=torch.long)
    return out


__all__ = [
    "DataBundle",
    "RWKU_RT_TEMPLATES",
    "build_data",
    "collate",
    "encode_probe",
    "encode_text",
    "retain_texts",
    "rt_template",
    "split_records",
]
