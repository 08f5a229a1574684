"""DNS-derived name cache: which names does an address currently stand for?

Filled from DNS answers before they are released to the client (so a client can never
connect before its name is known), read on every new flow.  One address serves many names
(CDNs, shared hosting), so every (address, name) pair is its own entry with its own expiry:
an answer for one name never overwrites or shortens another name's entry.

All operations are O(1) amortised (O(names of that address) for ``names_for``); memory is
bounded by ``max_entries`` pairs with least-recently-used eviction; expired pairs are
dropped lazily when met (on lookup, or at the cold end of the LRU order when learning), and
``purge()`` drops them all for periodic housekeeping.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["NameCache"]


class NameCache:
    """IP -> names, each with expiry = now + clamp(ttl, min_ttl, max_ttl) + grace.

    Defaults, and why:

    - ``grace=300`` s: clients keep using an address after its TTL runs out (browser and
      JVM caches, connection pools that reconnect to the address they hold, resolvers that
      serve stale answers per RFC 8767), and a flow denied for a name it legitimately looked
      up is a worse failure than a binding living five minutes longer.
    - ``min_ttl=60`` s: load balancers and some CDNs answer with TTLs of 0-5 s; the client
      may connect (or retry) after that, and Java caches answers for 30 s whatever the TTL.
    - ``max_ttl=86400`` s: caps how long one answer (a stale or poisoned one included) can
      pin a binding; recursive resolvers cap at the same value (Unbound cache-max-ttl).
    - ``max_entries=100_000`` pairs: ~20-25 MB of Python objects, far above what a server's
      working set of names needs, small enough that a flood of answers cannot exhaust memory.
    """

    __slots__ = (
        "_by_ip",
        "_lru",
        "evictions",
        "grace",
        "hits",
        "max_entries",
        "max_ttl",
        "min_ttl",
        "misses",
    )

    def __init__(
        self,
        max_entries: int = 100_000,
        grace: float = 300.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86_400.0,
    ) -> None:
        self.max_ttl = max_ttl
        self.configure(max_entries=max_entries, grace=grace, min_ttl=min_ttl)
        self._lru: OrderedDict[tuple[str, str], float] = OrderedDict()  # oldest first
        self._by_ip: dict[str, set[str]] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def configure(self, *, max_entries: int, grace: float, min_ttl: float) -> None:
        """Set the limits; on a running cache (reload) what it learnt stays."""
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if grace < 0 or min_ttl < 0 or self.max_ttl < min_ttl:
            raise ValueError("need grace >= 0 and 0 <= min_ttl <= max_ttl")
        self.max_entries = max_entries
        self.grace = grace
        self.min_ttl = min_ttl

    def __len__(self) -> int:
        """Stored (ip, name) pairs, including expired ones not yet purged."""
        return len(self._lru)

    def __contains__(self, ip: object) -> bool:
        return ip in self._by_ip

    @staticmethod
    def _norm(name: str) -> str:
        name = name.lower()
        return name[:-1] if name.endswith(".") else name

    def _drop(self, key: tuple[str, str]) -> None:
        del self._lru[key]
        ip, name = key
        names = self._by_ip[ip]
        names.discard(name)
        if not names:
            del self._by_ip[ip]

    def learn(self, ip: str, name: str, ttl: int, now: float) -> None:
        """Bind ``name`` to ``ip``; a re-learn extends the expiry, never shortens it."""
        name = self._norm(name)
        if not name:
            return
        ttl_eff = min(max(ttl, self.min_ttl), self.max_ttl)
        expiry = now + ttl_eff + self.grace
        key = (ip, name)
        lru = self._lru
        old = lru.get(key)
        if old is not None:
            if old < expiry:
                lru[key] = expiry
            lru.move_to_end(key)
            return
        lru[key] = expiry
        self._by_ip.setdefault(ip, set()).add(name)
        # Lazily drop up to two expired pairs from the cold end, then enforce the bound.
        for _ in range(2):
            cold_key, cold_exp = next(iter(lru.items()))
            if cold_exp > now or cold_key == key:
                break
            self._drop(cold_key)
        while len(lru) > self.max_entries:
            self._drop(next(iter(lru)))
            self.evictions += 1

    def names_for(self, ip: str, now: float) -> frozenset[str]:
        """The unexpired names bound to ``ip`` (touched as recently used)."""
        names = self._by_ip.get(ip)
        if not names:
            self.misses += 1
            return frozenset()
        lru = self._lru
        live: list[str] = []
        for name in tuple(names):
            key = (ip, name)
            if lru[key] <= now:
                self._drop(key)
            else:
                lru.move_to_end(key)
                live.append(name)
        if live:
            self.hits += 1
        else:
            self.misses += 1
        return frozenset(live)

    def resolved(self, ip: str, name: str, now: float) -> bool:
        """Whether ``name`` currently resolves to ``ip`` per the answers seen."""
        key = (ip, self._norm(name))
        expiry = self._lru.get(key)
        if expiry is None:
            self.misses += 1
            return False
        if expiry <= now:
            self._drop(key)
            self.misses += 1
            return False
        self._lru.move_to_end(key)
        self.hits += 1
        return True

    def expiry(self, ip: str, name: str) -> float | None:
        """When the (ip, name) binding expires (`name` normalised), None if not held;
        untouched (no hit, no LRU move)."""
        return self._lru.get((ip, name))

    def live(self, now: float) -> list[tuple[str, str, float]]:
        """Every unexpired (ip, name, expiry), untouched (O(n): for rewrites)."""
        return [(ip, name, expiry) for (ip, name), expiry in self._lru.items() if expiry > now]

    def entries(self, key: str, now: float) -> list[tuple[str, str, float]]:
        """(address, name, expiry) of the unexpired pairs of an address (by name), of a
        name or all of them ("" as `key`; most recently used first). For `nfguard names`:
        reads without touching the LRU order or the counters; a name costs O(pairs)."""
        lru = self._lru
        if key in self._by_ip:
            keys: Iterable[tuple[str, str]] = sorted((key, name) for name in self._by_ip[key])
        else:
            name = self._norm(key)
            keys = (pair for pair in reversed(lru) if not name or pair[1] == name)
        return [(ip, name, lru[(ip, name)]) for ip, name in keys if lru[(ip, name)] > now]

    def purge(self, now: float) -> int:
        """Drop every expired pair (O(n)); return how many were dropped."""
        dead = [key for key, expiry in self._lru.items() if expiry <= now]
        for key in dead:
            self._drop(key)
        return len(dead)
