"""One trip for flows decided by name: the kernel's sets of destinations a name may allow.

A TCP flow a name rule may allow waits for the name its client presents (TLS SNI, HTTP
Host). Without help it costs two trips through the queue: the SYN (find the process, see
that a name could change the decision, mark the flow PENDING), then the first data segment.
The ruleset's `one_trip` chain takes the first step itself for a SYN to an (address, port)
in the sets kept here: the flow is pending at once, and the engine sees it once, at its
first data segment. A SYN to anywhere else still goes to the engine first, so no SYN
reaches an address no rule could allow.

What goes in: for each (address, name) the name cache holds, the ports of every allow rule
(of any policy, for tcp) whose names match that name; a rule without ports puts the
address in the port-less set. An element lives as long as the cache keeps the binding
(TTL clamped, plus grace). Elements are pushed off the verdict path, one nft batch per
tick; a reload (or the ruleset put back after a flush) rewrites the sets whole.

The sets are an optimisation only: a destination missing from them (not pushed yet, over
the size, expired) costs its flow the second trip, never a wrong verdict; one present for
nothing costs a SYN that the client's policy would have refused, while its first data
segment is judged by that policy all the same (README, "Limits to know").

`SetMirror` and `name_ports` are pure; `OneTrip` ties them to the name cache and to nft.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

from nfguard.nft import TABLE
from nfguard.nft.onetrip import ONE_TRIP_SET_SIZE, ONE_TRIP_SETS
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import ALLOW

log = logging.getLogger(__name__)

ANY_PORT = -1  # in a name's ports: every port (the address alone goes in)
MAX_PORTS_PER_RULE = 64  # a rule's port ranges wider than this: every port
# An element re-learnt with an expiry this much later is pushed again (deleted and added:
# older kernels cannot change an element's timeout); less is left to expire a bit early,
# which costs a flow the second trip at worst.
REFRESH_AFTER = 60.0
PUSH_INTERVAL = 0.5  # seconds between batches of elements


class Element(NamedTuple):
    version: int  # 4 | 6
    address: str
    port: int  # ANY_PORT: the port-less set

    @property
    def set_name(self) -> str:
        kind = "onetrip_any" if self.port == ANY_PORT else "onetrip"
        return f"{kind}{self.version}"

    @property
    def key(self) -> str:
        return self.address if self.port == ANY_PORT else f"{self.address} . {self.port}"


class Batch(NamedTuple):
    """One nft transaction's worth of changes."""

    flush: bool  # empty every set first (a rewrite)
    deletes: tuple[Element, ...]
    adds: tuple[tuple[Element, int], ...]  # (element, timeout in seconds)

    def __bool__(self) -> bool:
        return self.flush or bool(self.deletes or self.adds)

    def commands(self) -> str:
        """The batch as nft commands (one transaction when given whole to libnftables)."""
        lines = [f"flush set inet {TABLE} {name}" for name in ONE_TRIP_SETS] if self.flush else []
        for element in self.deletes:
            lines.append(f"delete element inet {TABLE} {element.set_name} {{ {element.key} }}")
        by_set: dict[str, list[str]] = {}
        for element, timeout in self.adds:
            by_set.setdefault(element.set_name, []).append(f"{element.key} timeout {timeout}s")
        for name, items in by_set.items():
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(items)} }}")
        return "\n".join(lines) + ("\n" if lines else "")


NOTHING = Batch(False, (), ())


def name_ports(policies: CompiledPolicySet, name: str) -> frozenset[int]:
    """The tcp ports some allow rule of any policy may allow `name` on (ANY_PORT among
    them: every port); empty when no rule allows it by name."""
    ports: set[int] = set()
    for compiled in policies.policies.values():
        rules = compiled.rules
        for position in compiled.names.lookup(name):
            rule = rules[position]
            if rule.action != ALLOW or rule.proto not in (None, "tcp"):
                continue
            if rule.ports is None and not rule.port_ranges:
                return frozenset((ANY_PORT,))
            width = sum(r.high - r.low + 1 for r in rule.port_ranges)
            if width > MAX_PORTS_PER_RULE:
                return frozenset((ANY_PORT,))
            ports.update(rule.ports or ())
            for r in rule.port_ranges:
                ports.update(range(r.low, r.high + 1))
    return frozenset(ports)


class SetMirror:
    """What the kernel's sets hold, as far as the engine pushed them, and what to push
    next. Pure: times come in, batches go out."""

    def __init__(self, size: int = ONE_TRIP_SET_SIZE) -> None:
        self.size = size  # elements per set at most (the kernel refuses more)
        self.pushed: dict[Element, float] = {}  # element -> expiry as pushed
        self._adds: dict[Element, float] = {}  # to push: element -> expiry
        self._refresh: set[Element] = set()  # of those, in the kernel already
        self._counts: dict[str, int] = {}  # live elements per set, as pushed (roughly)

    def want(self, element: Element, expiry: float, now: float) -> None:
        """The element should be in its set until `expiry`."""
        if expiry <= now:
            return
        queued = self._adds.get(element)
        if queued is not None:
            self._adds[element] = max(queued, expiry)
            return
        pushed = self.pushed.get(element)
        if pushed is not None and pushed > now + 1:
            if expiry >= pushed + REFRESH_AFTER:
                self._adds[element] = expiry
                self._refresh.add(element)
            return
        if pushed is not None:  # expired in the kernel, or about to: added anew
            del self.pushed[element]
            self._count(element, -1)
        if self._counts.get(element.set_name, 0) >= self.size:
            self._prune(now)
            if self._counts.get(element.set_name, 0) >= self.size:
                return  # full: this destination costs its flows a second trip
        self._adds[element] = expiry
        self._count(element, 1)

    def take(self, now: float) -> Batch:
        """What to push now; the mirror counts it as pushed."""
        if not self._adds:
            return NOTHING
        deletes = tuple(e for e in self._refresh if e in self._adds)
        adds = []
        for element, expiry in self._adds.items():
            adds.append((element, _timeout(expiry, now)))
            self.pushed[element] = expiry
        self._adds.clear()
        self._refresh.clear()
        return Batch(False, deletes, tuple(adds))

    def rewrite(self, wanted: Iterable[tuple[Element, float]], now: float) -> Batch:
        """Every set emptied and filled with `wanted` (the longest expiry per element)."""
        self.pushed.clear()
        self._adds.clear()
        self._refresh.clear()
        self._counts.clear()
        for element, expiry in wanted:
            self.want(element, expiry, now)
        batch = self.take(now)
        return Batch(True, (), batch.adds)

    def forget(self) -> None:
        """The kernel's sets are not what was pushed (a failed batch): nothing is known."""
        self.pushed.clear()
        self._counts.clear()

    def _count(self, element: Element, change: int) -> None:
        name = element.set_name
        self._counts[name] = self._counts.get(name, 0) + change

    def _prune(self, now: float) -> None:
        """Forget pushed elements the kernel has dropped by now."""
        for element in [e for e, expiry in self.pushed.items() if expiry <= now]:
            del self.pushed[element]
            self._count(element, -1)


MAX_TIMEOUT = 30 * 86400  # seconds: nft refuses timeouts past 2^32 ms; the cache's are shorter


def _nowhere(_address: str) -> bool:
    return False


def _timeout(expiry: float, now: float) -> int:
    return min(MAX_TIMEOUT, max(1, math.ceil(expiry - now)))


def _version(address: str) -> int:
    return 6 if ":" in address else 4


class OneTrip:
    """Keeps the one-trip sets after the name cache and the policy: told of each binding
    learnt, pushes at most one batch per PUSH_INTERVAL (`tend`), rewrites everything when
    the policy (or the ruleset) changed."""

    def __init__(self, apply: Callable[[str], None], clock: Callable[[], float],
                 generation: Callable[[], int] = lambda: 0) -> None:
        self.apply = apply  # runs nft commands as one transaction; raises on failure
        self.clock = clock
        self.generation = generation  # changes when the ruleset was put back (sets empty)
        self.mirror = SetMirror()
        # Addresses the DNS rebinding guard keeps names from (Engine.keeps_names_from): never
        # in the sets, so a SYN to one is decided by the engine and no handshake goes inside.
        self.kept_from: Callable[[str], bool] = _nowhere
        self._policies: CompiledPolicySet | None = None
        self._seen_generation = generation()
        self._ports: dict[str, frozenset[int]] = {}  # name -> name_ports, per policy
        self._next_push = 0.0
        self._failed = False
        self.pushes = 0
        self.failures = 0

    def learnt(self, policies: CompiledPolicySet,
               bindings: Iterable[tuple[str, str, float]], now: float) -> None:
        """(address, name, expiry) bindings the name cache holds now."""
        if policies is not self._policies:
            return  # a rewrite comes at the next tend, from the cache
        mirror = self.mirror
        for address, name, expiry in bindings:
            if self.kept_from(address):
                continue
            for port in self._name_ports(policies, name):
                mirror.want(Element(_version(address), address, port), expiry, now)

    def tend(self, policies: CompiledPolicySet | None,
             cached: Callable[[float], Iterable[tuple[str, str, float]]]) -> None:
        """Push what is due; `cached(now)`: every live (address, name, expiry) the cache
        holds, for a rewrite. `policies` None: one trip is off, the sets are emptied."""
        now = self.clock()
        if now < self._next_push:
            return
        self._next_push = now + PUSH_INTERVAL
        generation = self.generation()
        if (policies is not self._policies or generation != self._seen_generation
                or self._failed):
            self._policies, self._seen_generation, self._failed = policies, generation, False
            self._ports = {}
            wanted = () if policies is None else self._wanted(policies, cached(now))
            batch = self.mirror.rewrite(wanted, now)
        else:
            batch = self.mirror.take(now)
        if not batch:
            return
        try:
            self.apply(batch.commands())
            self.pushes += 1
        except Exception as exc:  # the sets are in an unknown state: rewrite them next
            self.failures += 1
            log.warning("one-trip sets not updated (%s); rewriting them", exc)
            self.mirror.forget()
            self._failed = True

    def _wanted(self, policies: CompiledPolicySet,
                bindings: Iterable[tuple[str, str, float]]) -> Iterable[tuple[Element, float]]:
        for address, name, expiry in bindings:
            if self.kept_from(address):
                continue
            for port in self._name_ports(policies, name):
                yield Element(_version(address), address, port), expiry

    def _name_ports(self, policies: CompiledPolicySet, name: str) -> frozenset[int]:
        ports = self._ports.get(name)
        if ports is None:
            if len(self._ports) > 65536:
                self._ports.clear()
            ports = self._ports[name] = name_ports(policies, name)
        return ports


def nft_apply() -> Callable[[str], None]:
    """Runs nft commands through libnftables, as one transaction."""
    import nftables

    nft = nftables.Nftables()

    def apply(commands: str) -> None:
        rc, _out, err = nft.cmd(commands)
        if rc != 0:
            raise RuntimeError(err.strip())

    return apply
