"""The embedded model: name resolution, conversion round trip, tiny models built from its config; folders with
only pickled weights refused."""

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.models.embedded import (
    EMBEDDED_MODEL,
    _find_gguf,
    build_tiny_model,
    embedded_model_dir,
    load_model_and_tokenizer,
    resolve_model_path,
)
from verl.utils.chat import format_prompt
from verl.utils.cli import UserError


def test_embedded_name_resolves_to_plain_hf_folder(embedded_model_path):
    path = Path(resolve_model_path(EMBEDDED_MODEL))
    assert path == embedded_model_dir()
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    config = (path / "config.json").read_text()
    assert "quantization_config" not in config  # a plain folder: loads without gguf


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    assert resolve_model_path("meta-llama/Meta-Llama-3-8B-Instruct") == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_tiny_model_shares_tokenizer_and_config_family(tiny_model_path, embedded_model_path):
    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert tiny.config.num_hidden_layers == 2 and tiny.config.model_type == "llama"
    assert sum(p.numel() for p in tiny.parameters()) < 10_000_000
    tok_tiny = AutoTokenizer.from_pretrained(tiny_model_path)
    tok_big = AutoTokenizer.from_pretrained(embedded_model_path)
    assert tok_tiny.get_vocab() == tok_big.get_vocab()
    assert format_prompt(tok_tiny, "hi") == format_prompt(tok_big, "hi")
    assert build_tiny_model(tiny_model_path) == Path(tiny_model_path)  # idempotent


def test_loader_sets_left_padding(tiny_model_path):
    model, tok = load_model_and_tokenizer(tiny_model_path)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_conversion_round_trip_same_greedy_text(embedded_model_path):
    """The saved folder (no gguf needed) and the GGUF itself give the same greedy continuation."""
    gguf = _find_gguf()
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    prompt = format_prompt(tok, "What is the capital of France?")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    saved = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        a = saved.generate(**ids, max_new_tokens=20, do_sample=False)
        b = original.generate(**ids, max_new_tokens=20, do_sample=False)
        assert torch.allclose(saved(**ids).logits, original(**ids).logits, atol=1e-4)
    assert tok.decode(a[0]) == tok.decode(b[0])
    assert "Paris" in tok.decode(a[0][ids["input_ids"].shape[1]:])


def test_pickled_only_model_folder_is_refused(tmp_path, tiny_model_path):
    from verl.workers.fsdp_utils import load_module

    folder = tmp_path / "bin_model"
    shutil.copytree(tiny_model_path, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    for load in (resolve_model_path, load_model_and_tokenizer, lambda p: load_module(p, "actor", None)):
        with pytest.raises(UserError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors only"):
            load(str(folder))
    assert resolve_model_path(tiny_model_path) == tiny_model_path
