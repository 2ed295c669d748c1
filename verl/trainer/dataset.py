"""Prompt datasets for RL: file loading (json/jsonl/parquet, or ``<scheme>:<rest>`` through a registered data-path
scheme), prompt formatting (``verl.trainer.prompt_formats``), prompt-length filtering, left-padded batches and a
resumable sampler."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from verl.protocol import DataProto
from verl.trainer.prompt_formats import PROMPT_FORMATS, PromptContext
from verl.utils.chat import prompt_ids, set_user_turn
from verl.utils.cli import ConfigError, MissingFileError
from verl.utils.records import DataValidationError, read_json, validate_rl_records
from verl.utils.registry import Registry

logger = logging.getLogger(__name__)

# scheme name -> resolver(the spec after "<scheme>:", data root or None) -> file path; plug-ins add theirs
DATA_SCHEMES: Registry[Callable[[str, str | None], Path]] = Registry("data-path scheme")
_SCHEME = re.compile(r"^([A-Za-z][\w.+-]*):(.+)$")


def resolve_data_path(spec: str, data_root: str | None = None) -> Path:
    """A file path, or ``<scheme>:<rest>`` resolved by the scheme registered under that name (the RULE plug-in's
    ``rwku:<target>:<stem>`` and ``muse:<stem>``), so configs carry no absolute paths."""
    match = _SCHEME.match(spec)
    scheme = match.group(1) if match else None
    resolver = DATA_SCHEMES[scheme] if scheme in DATA_SCHEMES.names() else None  # names(): plug-ins' schemes too
    path = resolver(match.group(2), data_root) if resolver else Path(spec).expanduser()
    if not path.is_file():
        hint = f" ({scheme!r} is no data-path scheme either: {sorted(DATA_SCHEMES)})" if scheme and not resolver else ""
        raise MissingFileError(f"data file {path} (from {spec!r}) does not exist{hint}")
    return path


def read_rows(path: Path) -> list[dict]:
    """Rows of a .json (list), .jsonl or .parquet file; bad syntax is a DataValidationError naming the file."""
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        rows = read_json(path)
        if not isinstance(rows, list):
            raise DataValidationError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        return rows
    if suffix == ".parquet":
        import pandas as pd  # start-up cost: ~0.5 s that only a parquet file needs

        try:
            return pd.read_parquet(path).to_dict(orient="records")
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataValidationError(f"{path}: not a readable parquet file ({exc})") from exc
    raise DataValidationError(f"{path}: unsupported data format {suffix!r} (use .json, .jsonl or .parquet)")


class RLDataset:
    """Prompts in a registered prompt format, tokenized; rows whose prompt exceeds ``max_prompt_length`` are dropped.

    Each row keeps ``prompt`` (raw user text), ``solution`` (the answer column) and every other column as an
    extra for the reward. ``label`` is ``solution[0]`` when that is a ``<...>`` tag (``verl.utils.records``), else "".
    ``prompt_format`` names an entry of ``PROMPT_FORMATS``: ``chat`` (one user turn in the chat template,
    ``system_prompt`` as in ``format_prompt``) or a plug-in's (the RULE plug-in's ``rwku``: the RWKU probe wrapper;
    ``muse``: the MUSE-Books base-model format, whose few-shot file is the ``muse_icl`` format option);
    ``format_options`` are handed to the format as ``PromptContext.options``. Raw-text prompts get the tokenizer's
    BOS (``prompt_ids``). ``user_turn`` (template | verbatim) is recorded on the tokenizer: how the chat formats
    render the user text (``verl.utils.chat``).
    """

    def __init__(self, spec: str, tokenizer, max_prompt_length: int, prompt_key: str = "prompt",
                 answer_key: str = "solution", data_root: str | None = None, max_samples: int | None = None,
                 prompt_format: str = "chat", system_prompt: str | None = None, user_turn: str = "template",
                 **format_options):
        self.path = resolve_data_path(spec, data_root)
        raw = validate_rl_records(read_rows(self.path), self.path, prompt_key, answer_key)  # every row, at load
        set_user_turn(tokenizer, user_turn)
        if max_samples is not None and max_samples < len(raw):  # evenly spaced, so both labels stay represented
            raw = [raw[int(i)] for i in np.linspace(0, len(raw) - 1, num=max_samples).round()]
        self.rows: list[dict] = []
        self.n_filtered = 0
        try:
            make_prompt_fn = PROMPT_FORMATS.lookup(prompt_format)
        except ValueError as exc:
            raise ConfigError(f"data.prompt_format: {exc}") from None
        prompt_fn = make_prompt_fn(PromptContext(tokenizer, system_prompt, data_root, format_options))
        for row in raw:
            ids = prompt_ids(tokenizer, prompt_fn(str(row[prompt_key]), row))
            if len(ids) > max_prompt_length:
                self.n_filtered += 1
                continue
            solution = row.get(answer_key)
            labelled = isinstance(solution, (list, tuple)) and solution and str(solution[0]).startswith("<")
            label = solution[0] if labelled else ""
            extras = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
            self.rows.append({"prompt": str(row[prompt_key]), "solution": solution, "label": label,
                              "prompt_ids": ids, "extras": extras})
        logger.info("%s: %d rows kept, %d dropped as longer than %d prompt tokens",
                    self.path.name, len(self.rows), self.n_filtered, max_prompt_length)
        if not self.rows:
            raise DataValidationError(f"{self.path}: no rows left: all {len(raw)} prompts are longer than "
                                      f"data.max_prompt_length={max_prompt_length} tokens: raise it")

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices, pad_token_id: int) -> DataProto:
        return collate([self.rows[i] for i in indices], pad_token_id)


def collate(rows: list[dict], pad_token_id: int) -> DataProto:
    """Left-padded ``input_ids``/``attention_mask``/``position_ids`` [B, P] + per-row non-tensors."""
    width = max(len(r["prompt_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["prompt_ids"])
        ids[i, width - n:] = torch.tensor(r["prompt_ids"], dtype=torch.long)
        mask[i, width - n:] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    extra_keys = sorted({k for r in rows for k in r["extras"]})
    non_tensors = {
        "prompt": [r["prompt"] for r in rows],
        "solution": [r["solution"] for r in rows],
        "label": [r["label"] for r in rows],
        **{f"extra.{k}": [r["extras"].get(k) for r in rows] for k in extra_keys},
    }
    return DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}, non_tensors=non_tensors
    )


SAMPLERS = ("project", "release")


def release_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of epoch ``epoch`` as the RULE release draws it: torch's ``RandomSampler`` with one
    ``torch.Generator`` seeded ``seed`` at start (its ``data.seed``, 42), batched with ``drop_last``. Each finished
    epoch draws two permutations from that generator (the order, then an empty tail: ``RandomSampler.__iter__``), so
    epoch ``e`` is the generator's ``2e + 1``-th ``randperm``."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    for _ in range(2 * epoch):
        torch.randperm(n, generator=gen)
    return torch.randperm(n, generator=gen).numpy()


class StatefulSampler:
    """Batches of indices over epochs (seeded shuffle per epoch, incomplete tail dropped); ``state_dict`` resumes
    at the exact next batch.

    ``sampler`` "project": a numpy permutation seeded ``seed + epoch``; "release": the release's torch order
    (``release_order``), so that the release's seed picks the same prompts in the same batches.
    With ``labels`` (one per row; project sampler only) the order is stratified: each label's rows are shuffled on
    their own and interleaved so that every batch holds the labels in the file's proportion (to within one row), e.g.
    4 ``<reject>`` + 4 ``<normal>`` of 8 on a balanced file. Without it, a small batch's share of one label swings
    with the draw (1 to 7 of 8)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, labels: list[str] | None = None,
                 sampler: str = "project"):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} > dataset size {n}")
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} rows")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: choose one of {SAMPLERS}")
        if sampler == "release" and labels is not None:
            raise ValueError("the release's sampler draws random batches: it cannot stratify labels")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.labels, self.sampler = labels, sampler
        self.epoch, self.pos = 0, 0
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, order): a stratified order costs a loop

    def _order(self) -> np.ndarray:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._make_order())
        return self._cached[1]

    def _make_order(self) -> np.ndarray:
        if self.sampler == "release":
            return release_order(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.labels is None:
            return rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        groups = [np.flatnonzero(np.asarray(self.labels) == lab) for lab in sorted(set(self.labels))]
        if self.shuffle:
            groups = [rng.permutation(g) for g in groups]
        # position i goes to the label furthest behind its share of the first i + 1 rows (largest deficit)
        share = np.array([len(g) for g in groups]) / self.n
        taken = np.zeros(len(groups), dtype=int)
        order = np.empty(self.n, dtype=int)
        for i in range(self.n):
            k = int(np.argmax(share * (i + 1) - taken))
            order[i] = groups[k][taken[k]]
            taken[k] += 1
        return order

    @property
    def batches_per_epoch(self) -> int:
        """Whole batches in one pass over the rows (the incomplete tail is dropped)."""
        return self.n // self.batch_size

    def next_indices(self) -> list[int]:
        if self.pos + self.batch_size > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        out = self._order()[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return [int(i) for i in out]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
