"""Phase timing recorded as ``timing/<phase>`` metrics."""

from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def timed(name: str, metrics: dict[str, float]):
    """Add the wall time of the block (seconds) to ``metrics[f"timing/{name}"]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        key = f"timing/{name}"
        metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - start
