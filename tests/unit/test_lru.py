"""The bounded caches (LRU, Memo) the engine keeps per flow."""

from __future__ import annotations

from nfguard.lru import LRU, Memo


def test_lru_bounded() -> None:
    lru: LRU[int, int] = LRU(2)
    lru.put(1, 1)
    lru.put(2, 2)
    assert lru.get(1) == 1
    lru.put(3, 3)
    assert lru.get(2) is None and lru.get(1) == 1 and lru.get(3) == 3 and len(lru) == 2
    assert lru.evictions == 1


def test_memo_is_emptied_when_full() -> None:
    memo: Memo[int, str] = Memo(2)
    assert memo.put(1, "a") == "a" and memo.put(2, "b") == "b"
    assert memo.get(1) == "a" and len(memo) == 2
    memo.put(3, "c")
    assert dict(memo) == {3: "c"}
