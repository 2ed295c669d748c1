"""glibc malloc settings for the stages of a CPU run.

A CPU training step allocates and frees tensors of hundreds of MB (the embedded model's logits for 8 x 128 tokens
are 200 MB of fp32). glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it on ``free``, so each step faults all those pages in again and the kernel zeroes them: 5.7 M minor page
faults and ~15% of the CPU time in the kernel over 12 injection steps. Keeping freed memory in the heap
(no mmap, no trimming) lets the next step reuse it: 1.2 M faults and the same weights to the bit; the main job's
kernel time falls 6-7x and its wall time 3-27%, for ~2% more peak RSS (docs/performance.md, "Memory allocation on a
CPU").

glibc reads these variables when a process starts, so they go into the environment of each stage's process (and so
of its Ray workers and vLLM engine, which inherit it), not into the running one.
"""

from __future__ import annotations

from collections.abc import Mapping

CPU_MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",                 # no block is served by mmap: freed ones stay in the heap for reuse
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),  # never give the heap's top back to the kernel between steps
    "MALLOC_TOP_PAD_": str(1 << 30),         # grow the heap 1 GiB at a time rather than per request
}


def user_tunes_malloc(environ: Mapping[str, str]) -> bool:
    """True when the environment already chooses the allocator or its settings (a preloaded tcmalloc or jemalloc,
    glibc tunables, any ``MALLOC_*`` variable): the user's choice is kept whole."""
    return ("malloc" in environ.get("LD_PRELOAD", "") or "GLIBC_TUNABLES" in environ
            or any(k.startswith("MALLOC_") for k in environ))


def cpu_malloc_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a CPU stage's process gets on top of ``environ``: ``CPU_MALLOC_ENV``, or none where the user
    tunes malloc already."""
    return {} if user_tunes_malloc(environ) else dict(CPU_MALLOC_ENV)


__all__ = ["CPU_MALLOC_ENV", "cpu_malloc_env", "user_tunes_malloc"]
