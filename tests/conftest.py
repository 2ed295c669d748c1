"""Shared fixtures: a tiny random model (fast), the embedded model (slow tests), the data roots."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_TARGET = "101_Elowen_Marsh"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A 2-layer random Llama with the embedded model's tokenizer and chat template."""
    from verl.models.embedded import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    from verl.models.embedded import ensure_embedded_model

    return str(ensure_embedded_model())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark files: $RULE_DATA_DIR, else ../shared/data beside the checkout (then also exported as
    RULE_DATA_DIR for the code under test); tests needing them skip without."""
    root = Path(os.environ.get("RULE_DATA_DIR") or SHARED_DATA)
    if not (root / "RWKU").is_dir():
        pytest.skip(f"no benchmark data at {root} (set RULE_DATA_DIR)")
    os.environ.setdefault("RULE_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def target_name() -> str:
    """An RWKU target with RULE files: the project's sample target, else Stephen King from ../shared/data."""
    from data.rwku import list_targets

    folders = {t.folder for t in list_targets()}
    for cand in (SAMPLE_TARGET, "1_Stephen_King"):
        if cand in folders:
            return cand
    pytest.skip("no RWKU target with reject_target.json available")
