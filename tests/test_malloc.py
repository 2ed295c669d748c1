"""The CPU stages' glibc malloc settings (verl/utils/malloc.py): freed large tensors stay in the heap, so a step that
frees and reallocates them stops faulting their pages in, and the arithmetic is unchanged."""

import os
import subprocess
import sys
import textwrap

from verl.utils.malloc import CPU_MALLOC_ENV, cpu_malloc_env, user_tunes_malloc

STEPS_SCRIPT = textwrap.dedent('''
    import hashlib, resource, torch
    torch.manual_seed(0)
    torch.set_num_threads(1)
    w = torch.randn(256, 256, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=1e-3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        big = torch.randn(64, 256) @ w  # a small product ...
        logits = big.repeat(1, 1024)    # ... and 64 MiB made and freed each step, as a step's logits are
        loss = logits.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        del big, logits
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults, hashlib.sha256(w.detach().numpy().tobytes()).hexdigest())
''')


def _run(extra: dict) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not user_tunes_malloc({k: v})}
    out = subprocess.run([sys.executable, "-c", STEPS_SCRIPT], capture_output=True, text=True, check=True,
                         env={**env, **extra})
    faults, digest = out.stdout.split()
    return int(faults), digest


def test_heap_reuse_removes_the_page_faults_of_large_frees_and_keeps_the_weights():
    default_faults, default_weights = _run({})
    kept_faults, kept_weights = _run(CPU_MALLOC_ENV)
    assert kept_weights == default_weights
    # 20 steps x 64 MiB = 327,680 pages faulted in by default; a reused heap faults them in for its first step only
    assert default_faults > 20 * 16384 * 0.9, default_faults
    assert kept_faults < default_faults / 5, (kept_faults, default_faults)


def test_the_users_own_allocator_settings_win():
    assert cpu_malloc_env({}) == CPU_MALLOC_ENV
    assert cpu_malloc_env({"MALLOC_ARENA_MAX": "2"}) == {}
    assert cpu_malloc_env({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}) == {}
    assert cpu_malloc_env({"LD_PRELOAD": "libasan.so"}) == CPU_MALLOC_ENV
