"""The validated policy model: clients -> ordered policies -> ordered rules.

Everything here is immutable and already checked; `policy.load` builds it from TOML and
`policy.match` compiles it into lookup indexes. The records made once per rule (Rule and
its Location, NamePattern and Network) are named tuples, built several times faster than
frozen dataclasses: a policy can have 100k rules, built on every start and reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from nfguard.policy.networks import Network
from nfguard.policy.patterns import NamePattern


class Action(StrEnum):
    """What a rule, or the engine, decides for a flow (ECS event.action)."""

    ALLOW = "allow"
    DENY = "deny"


class Mode(StrEnum):
    """Whether decisions are enforced or only recorded (nfguard.mode)."""

    ENFORCE = "enforce"
    AUDIT = "audit"


ALLOW, DENY = Action.ALLOW, Action.DENY
ACTIONS = tuple(Action)
PROTOS = ("tcp", "udp")
MODES = tuple(Mode)
# A `to` entry standing for the host's DNS resolvers: whatever [names] resolvers says
# they are at the time of the flow ("system": /etc/resolv.conf's, followed as it changes).
RESOLVERS = "@resolvers"

# Keys a client's `match` table may use, and what they test (see policy.clients).
MATCH_KEYS = ("exe", "cmdline", "user", "group", "unit", "cgroup", "parent_exe", "sha256",
              "interface", "container", "image", "source")
# An `image` that starts so names the image by its id (the loader checks the digits), not
# by the reference a container was started from: a tag can be moved to another image.
IMAGE_ID_PREFIX = "sha256:"


class Location(NamedTuple):
    """Where a thing was written, so every message can point at it."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class PortRange:
    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


class Rule(NamedTuple):
    policy: str
    name: str  # as shown in audit events: "policy/rule", or "policy/#N" (1-based) if unnamed
    action: str
    networks: tuple[Network, ...]
    names: tuple[NamePattern, ...]
    ports: frozenset[int] | None  # None: any port
    port_ranges: tuple[PortRange, ...]
    proto: str | None  # None: tcp and udp
    location: Location
    resolvers: bool = False  # `to` has "@resolvers"
    # Names the client may resolve (allow) or is refused (deny) by this rule, without
    # connecting: they never match a flow (see policy.resolve).
    resolve: tuple[NamePattern, ...] = ()
    # Its names may lead to internal addresses ([names] private; nfguard.policy.internal):
    # the rule names a service inside, whose DNS the operator trusts.
    private: bool = False

    @property
    def any_destination(self) -> bool:
        """No `to`: every destination (a rule with only `resolve` has none)."""
        return (not self.networks and not self.names and not self.resolvers
                and not self.resolve)

    def allows_port(self, proto: str, port: int) -> bool:
        """Whether the proto/ports constraints of the rule hold for a flow."""
        if self.proto is not None and proto != self.proto:
            return False
        if self.ports is None and not self.port_ranges:
            return True
        if proto not in PROTOS:
            return False  # a port constraint cannot hold for a portless transport
        if self.ports is not None and port in self.ports:
            return True
        return any(port in r for r in self.port_ranges)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    location: Location


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    match: tuple[tuple[str, str], ...]  # (key, value) pairs, all must hold; empty: everyone
    policies: tuple[str, ...]
    mode: str | None  # overrides engine.mode for this client's flows
    location: Location
    queries: str | None = None  # overrides [names] queries for this client's DNS queries
    # match.source: a forwarded flow's original source address is inside one of these
    # (never a flow of the host's own); empty: any sender. Kept out of `match`, whose
    # values are single strings, and indexed by policy.clients.ClientIndex.
    sources: tuple[Network, ...] = ()

    @property
    def matches_everyone(self) -> bool:
        return not self.match and not self.sources


@dataclass(frozen=True, slots=True)
class PolicySet:
    clients: tuple[Client, ...] = ()
    policies: dict[str, Policy] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @property
    def rule_count(self) -> int:
        return sum(len(p.rules) for p in self.policies.values())
