"""Equal-size partitions of a batch balancing the token count (the Karmarkar-Karp largest differencing method).

The release (EasyR1's ``_balance_batch``) reorders every step's responses into one such partition per worker before
the updates, so each rank gets a similar number of tokens; a side effect that shapes training is the micro-batch
composition: each partition lists its rows in batch order, so a micro-batch of 8 holds the samples of several prompts
rather than one prompt's 8 samples. This module reproduces that algorithm, with its tie-breaking, so the same inputs
give the release's partitions (``trainer.balance_batch``).

The method: sort the lengths ascending; every run of ``k`` consecutive lengths starts a partial solution of ``k`` sets
(one length each); repeatedly take the two partial solutions with the largest spread (max set sum - min set sum) and
merge them by pairing the largest set of one with the smallest of the other; the last solution is the partition.
"""

from __future__ import annotations

import heapq


class _Set:
    """A growing partition: its ``(index, length)`` items and their sum. Ordered by sum, then size, then items."""

    __slots__ = ("items", "total")

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []
        self.total = 0

    def key(self) -> tuple:
        return self.total, len(self.items), self.items

    def __lt__(self, other: _Set) -> bool:
        return self.key() < other.key()


class _Solution:
    """``k`` sets kept in decreasing order; in the heap, the larger spread (then the larger first set) comes first."""

    __slots__ = ("sets",)

    def __init__(self, items: list[tuple[int, int]], k: int) -> None:
        self.sets = [_Set() for _ in range(k)]
        for s, (idx, length) in zip(self.sets, items):
            s.items.append((idx, length))
            s.total += length
        self.sets.sort(reverse=True)

    @property
    def spread(self) -> int:
        return self.sets[0].total - self.sets[-1].total

    def merge(self, other: _Solution) -> None:
        for mine, theirs in zip(self.sets, reversed(other.sets)):
            mine.items.extend(theirs.items)
            mine.total += theirs.total
        self.sets.sort(reverse=True)

    def __lt__(self, other: _Solution) -> bool:
        if self.spread != other.spread:
            return self.spread > other.spread
        return other.sets[0] < self.sets[0]


def balanced_partitions(lengths: list[int], k: int) -> list[list[int]]:
    """``k`` partitions of ``range(len(lengths))`` of equal size (``len(lengths) % k == 0``) with balanced length
    sums; each partition's indices ascending, partitions in decreasing order of their sum (ties as the release)."""
    n = len(lengths)
    if k <= 0 or n % k:
        raise ValueError(f"{n} rows cannot be split into {k} partitions of equal size")
    order = sorted((length, i) for i, length in enumerate(lengths))
    heap: list[_Solution] = []
    for start in range(0, n, k):
        heapq.heappush(heap, _Solution([(i, length) for length, i in order[start:start + k]], k))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        first.merge(second)
        heapq.heappush(heap, first)
    return [sorted(idx for idx, _ in s.items) for s in heap[0].sets]


def balanced_order(lengths: list[int], k: int) -> list[int]:
    """The row order that puts partition ``r`` of ``balanced_partitions`` in the ``r``-th contiguous chunk."""
    return [i for part in balanced_partitions(lengths, k) for i in part]
