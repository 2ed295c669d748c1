"""The evaluator's models, kept loaded across the models of one multi-model run.

Starting a process, importing vLLM, starting its engine and loading the HF model cost more than the forget and
neighbor probes of a small model themselves. A multi-model run (``python -m verl.eval --model ... --model ...``)
therefore keeps one tokenizer, one HF model and one vLLM engine, and only swaps the weights when the next model has
the same architecture and tokenizer: ``load_state_dict`` into the HF model, a layerwise reload into the engine
(``verl.utils.vllm_engine.load_folder_weights``). Anything else (another config, tokenizer or generation config,
weights that do not fit the model) gets a fresh load, exactly as a separate process would do it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from verl.models.embedded import load_model_and_tokenizer, load_tokenizer
from verl.utils.chat import set_user_turn
from verl.utils.vllm_engine import load_folder_weights, shutdown_engine

logger = logging.getLogger("verl.eval")

# config.json keys that change nothing in the computation (bookkeeping, or the dtype the weights were saved in: the
# evaluator loads every model in its own --dtype)
BOOKKEEPING_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if k not in BOOKKEEPING_KEYS} if isinstance(data, dict) else None


def architecture_key(model_path: str) -> str | None:
    """What must match for weights to be swapped in place: the model config and the generation config (its EOS ids
    are stop tokens of both engines) without bookkeeping keys; None when the folder has no readable config."""
    folder = Path(model_path)
    cfg = _json(folder / "config.json")
    if cfg is None:
        return None
    gen = _json(folder / "generation_config.json")
    return json.dumps({"config": cfg, "generation": gen}, sort_keys=True, default=str)


def tokenizer_key(tokenizer) -> str:
    """Everything of a loaded tokenizer that changes token ids or prompts: the fast tokenizer's full definition
    (vocabulary, merges, normalizer, added tokens), the chat template, special tokens and padding side. Compared on
    the loaded object, so two folders saved by different library versions with equal tokenizers still match."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "backend": backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "padding_side": tokenizer.padding_side,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def reload_hf_weights(model, model_path: str) -> bool:
    """Load a folder's safetensors into ``model`` in place (cast to its dtype, as ``from_pretrained(dtype=)`` does),
    file by file. True when every parameter came from the folder or is tied to one that did (a tied LM head); buffers
    a checkpoint does not carry keep the values the equal config gave them. False when the folder holds a tensor the
    model lacks, a shape differs or a parameter was not loaded (the model is then half-loaded: the caller discards
    it)."""
    from safetensors.torch import load_file  # start-up cost: the evaluator CLI loads torch only with a model

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return False
    state = model.state_dict()
    loaded: set[str] = set()
    for f in files:
        part = load_file(str(f))
        if set(part) - set(state):
            return False
        if any(tuple(part[k].shape) != tuple(state[k].shape) for k in part):
            return False
        model.load_state_dict(part, strict=False)
        loaded.update(part)
        del part
    filled = {state[k].data_ptr() for k in loaded}
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return not [k for k in params if k not in loaded and state[k].data_ptr() not in filled]


def generation_config_of(model_path: str, model_config):
    """The generation config ``from_pretrained`` would attach: the folder's file, else one from the model config."""
    from transformers import GenerationConfig  # start-up cost: the evaluator CLI loads torch only with a model

    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:
        return GenerationConfig.from_model_config(model_config)


@dataclass
class Loaded:
    """The models one evaluation uses; ``how`` says whether they were loaded fresh or had their weights swapped."""

    model: object
    tokenizer: object
    gen_model: object | None
    seconds: float
    how: str  # "fresh" | "swapped"


class ModelHolder:
    """Holds the current HF model, tokenizer and vLLM engine of a multi-model run and moves them to the next model:
    weights swapped in place when architecture, generation config and tokenizer match, a fresh load otherwise."""

    def __init__(self, dtype: str, device: str, user_turn: str = "template"):
        self.dtype, self.device, self.user_turn = dtype, device, user_turn
        self.current: Loaded | None = None
        self.engine: str | None = None
        self._arch: str | None = None
        self._tok: str | None = None

    def load(self, model_path: str, engine: str) -> Loaded:
        """The models of ``model_path`` (a resolved folder or hub id) with ``engine`` (hf or vllm) for generation."""
        t0 = time.time()
        if self.current is not None and self._swap(model_path, engine):
            self.current.seconds, self.current.how = round(time.time() - t0, 2), "swapped"
            logger.info("weights of %s swapped into the loaded models in %.1f s", model_path, self.current.seconds)
            return self.current
        self.close()
        self._fresh(model_path, engine)
        self.current.seconds = round(time.time() - t0, 2)
        return self.current

    def _swap(self, model_path: str, engine: str) -> bool:
        arch = architecture_key(model_path)
        if engine != self.engine or arch is None or arch != self._arch:
            logger.info("%s: another architecture, generation config or engine: loading it afresh", model_path)
            return False

        if self._tok is None:
            self._tok = tokenizer_key(self.current.tokenizer)
        if tokenizer_key(self._prepared(load_tokenizer(model_path))) != self._tok:
            logger.info("%s: another tokenizer: loading it afresh", model_path)
            return False
        if not reload_hf_weights(self.current.model, model_path):
            logger.info("%s: weights do not fit the loaded model: loading it afresh", model_path)
            return False
        self.current.model.generation_config = generation_config_of(model_path, self.current.model.config)
        if self.current.gen_model is not None:
            load_folder_weights(self.current.gen_model, model_path)
            self.current.gen_model.hf_generation_config = _file_generation_config(model_path)
        return True

    def _prepared(self, tokenizer):
        set_user_turn(tokenizer, self.user_turn)  # every suite's chat prompts follow it
        return tokenizer

    def _fresh(self, model_path: str, engine: str) -> None:
        model, tokenizer = load_model_and_tokenizer(model_path, dtype=self.dtype, device=self.device)
        model.eval()
        self._prepared(tokenizer)
        gen_model = None
        if engine == "vllm":
            from verl.eval.generation import load_vllm  # start-up cost: the evaluator CLI loads torch only with a model

            gen_model = load_vllm(model_path, dtype=self.dtype, device_type=self.device.split(":")[0])
            logger.info("vLLM engine started in %.1f s", gen_model.start_seconds)
        self.current = Loaded(model, tokenizer, gen_model, 0.0, "fresh")
        self.engine, self._arch, self._tok = engine, architecture_key(model_path), None  # tokenizer key: on a swap

    def close(self) -> None:
        """Stop the engine and drop the models (the next ``load`` starts afresh)."""
        if self.current is not None:
            gen_model, self.current = self.current.gen_model, None
            shutdown_engine(gen_model)
        self.engine = self._arch = self._tok = None


def _file_generation_config(model_path: str):
    from transformers import GenerationConfig  # start-up cost: the evaluator CLI loads torch only with a model

    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:
        return None
