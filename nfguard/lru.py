"""A small bounded mapping: the least recently used entry goes first, and is counted."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.evictions = 0
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        val = self._d.get(key)
        if val is not None:
            self._d.move_to_end(key)
        return val

    def put(self, key: K, val: V) -> None:
        self._d[key] = val
        self._d.move_to_end(key)
        if len(self._d) > self.cap:
            self._d.popitem(last=False)
            self.evictions += 1

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)
