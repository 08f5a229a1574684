"""Small bounded mappings: an LRU (the least recently used entry goes first, and is
counted), and a memo of answers that is emptied when full."""

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


class Memo(dict[K, V]):
    """Remembered answers, emptied when full: bounded without an LRU's bookkeeping on every
    hit (a hit is a plain dict lookup), for answers that are cheap to work out again."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = max(1, cap)

    def put(self, key: K, value: V) -> V:
        if len(self) >= self.cap:
            self.clear()
        self[key] = value
        return value
