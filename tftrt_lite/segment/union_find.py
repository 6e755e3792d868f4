"""Disjoint sets over node indices: which cluster each graph node belongs to.

The cycle-safe DAG (``cycles.GraphCycles``) decides *whether* two clusters may merge and
which of its nodes survives; this structure answers "which cluster is node i in" in
near-constant time for every edge the segmenter looks at.
"""
from __future__ import annotations

from typing import List


class UnionFind:
    """Union by size with path halving; each set also remembers a chosen representative."""

    def __init__(self, size: int):
        self._parent: List[int] = list(range(size))
        self._size: List[int] = [1] * size
        self._representative: List[int] = list(range(size))

    def _root(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def find(self, i: int) -> int:
        """The representative of ``i``'s set (the one chosen at the last ``union``)."""
        return self._representative[self._root(i)]

    def union(self, a: int, b: int, representative: int) -> None:
        """Merge the sets of ``a`` and ``b``; ``representative`` then names the merged set."""
        ra, rb = self._root(a), self._root(b)
        if ra != rb:
            if self._size[ra] < self._size[rb]:
                ra, rb = rb, ra
            self._parent[rb] = ra
            self._size[ra] += self._size[rb]
        self._representative[ra] = representative
