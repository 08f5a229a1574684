"""Compiled policies: the first matching rule without scanning rules one by one.

Each policy is compiled into indexes whose cost per flow does not grow with the number of
rules or CIDRs: a hash table per prefix length (at most 33 probes for IPv4, 129 for IPv6,
in practice the handful of lengths a policy uses) and a hash table of name patterns keyed
by their literal suffix. The candidates they return are rule positions; the lowest one
whose port/proto constraints hold is the first match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import NamedTuple

from nfguard.lru import Memo
from nfguard.policy.clients import ClientIndex
from nfguard.policy.collector import collector_paused
from nfguard.policy.model import DENY, Policy, PolicySet, Rule
from nfguard.policy.networks import PrefixIndex
from nfguard.policy.patterns import NamePattern, normalize_name


class Evidence(StrEnum):
    """What a decision rested on, as audit events name it (nfguard.evidence)."""

    CIDR = "cidr"  # the address: a network of the rule, or "@resolvers"
    DNS = "dns"  # a name this host resolved to the destination address
    SNI = "sni"  # TLS ClientHello server_name over TCP
    QUIC = "quic"  # the server_name of the ClientHello inside a QUIC Initial
    HOST = "host"  # HTTP request Host (or an h2c request's :authority)
    DEFAULT = "default"  # no rule matched: engine.default
    UNREADABLE = "unreadable"  # the name could not be read and no address rule decided


CIDR, DEFAULT = Evidence.CIDR, Evidence.DEFAULT


class Destination(NamedTuple):
    """What a flow goes to: its address and every name it carries, with where each came from."""

    version: int
    address: int
    proto: str
    port: int
    names: tuple[tuple[str, str], ...] = ()  # (normalised name, evidence: dns | sni | host ...)
    resolver: bool = False  # the address is one of the host's DNS resolvers ("@resolvers")
    # The address is inside where [names] private keeps names out: a name matches only
    # deny rules and rules with `private = true` (engine: the DNS rebinding guard).
    guarded: bool = False


class RuleMatch(NamedTuple):
    rule: Rule
    evidence: str  # "cidr" (the address: a network, or "@resolvers"), or the name's
    name: str | None  # the name that matched, if a name did
    position: int = 0  # of the rule in its policy


NO_NAME_RULE = 1 << 30  # "no rule with names applies to this proto/port"
_NAME_MEMO_MAX = 1 << 17  # (proto, port) pairs remembered per policy: all of tcp and udp
MATCH_MEMO_MAX = 1 << 16  # (policies, destination) answers remembered per compiled set


class NameIndex:
    """Name patterns keyed by literal suffix: a name probes one key per label it has."""

    def __init__(self) -> None:
        self.by_suffix: dict[str, list[tuple[NamePattern, int]]] = defaultdict(list)

    def add(self, pattern: NamePattern, position: int) -> None:
        self.by_suffix[pattern.literal_suffix].append((pattern, position))

    def lookup(self, name: str) -> Iterable[int]:
        suffix = name
        while True:
            for pattern, position in self.by_suffix.get(suffix, ()):
                if pattern.matches(name):
                    yield position
            if not suffix:
                return
            dot = suffix.find(".")
            suffix = suffix[dot + 1:] if dot >= 0 else ""


class CompiledPolicy:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rules = policy.rules
        self.v4 = PrefixIndex(32)
        self.v6 = PrefixIndex(128)
        self.names = NameIndex()
        self.any_destination: list[int] = []
        self.resolver_rules = [p for p, rule in enumerate(policy.rules) if rule.resolvers]
        # Rules with names, for "could the name the client presents change the decision":
        # answered per (proto, port) once and remembered, so a flow pays one dict probe.
        self.name_rules = [p for p, rule in enumerate(policy.rules) if rule.names]
        self._first_name_rule: dict[tuple[str, int], int] = {}
        # ... and whether a name nobody could read might have been a denied one.
        self.deny_name_rules = [p for p in self.name_rules if policy.rules[p].action == DENY]
        # ... and, at an address names are kept from, which names may still lead there.
        self.private_rules = [p for p in self.name_rules if policy.rules[p].private]
        self._first_deny_name_rule: dict[tuple[str, int], int] = {}
        for position, rule in enumerate(policy.rules):
            if rule.any_destination:
                self.any_destination.append(position)
            for network in rule.networks:
                index = self.v4 if network.version == 4 else self.v6
                index.add(network.address, network.prefixlen, position)
            for pattern in rule.names:
                self.names.add(pattern, position)
        self.v4.freeze()
        self.v6.freeze()

    def first_match(self, dest: Destination) -> RuleMatch | None:
        # Hot path: every candidate list is in rule order, so the first position in each
        # that passes the port/proto check is that list's best; the overall best is the min.
        rules = self.rules
        proto, port = dest.proto, dest.port
        best_position = _first_holding(rules, self.any_destination, len(rules), proto, port)
        evidence: str = CIDR
        matched_name = None
        if dest.resolver:
            best_position = _first_holding(rules, self.resolver_rules, best_position, proto,
                                           port)
        index = self.v4 if dest.version == 4 else self.v6
        address = dest.address
        for mask, table in index.masks:
            positions = table.get(address & mask)
            if positions:
                best_position = _first_holding(rules, positions, best_position, proto, port)
        guarded = dest.guarded
        for name, name_evidence in dest.names:
            for position in self.names.lookup(name):
                if position < best_position and rules[position].allows_port(proto, port) and (
                        not guarded or rules[position].private
                        or rules[position].action == DENY):
                    best_position = position
                    evidence, matched_name = name_evidence, name
        if best_position == len(rules):
            return None
        return RuleMatch(rules[best_position], evidence, matched_name, best_position)

    def first_name_rule(self, proto: str, port: int) -> int:
        """Position of the first rule with names whose proto/ports hold, or NO_NAME_RULE."""
        return self._first_holding_of(self.name_rules, self._first_name_rule, proto, port)

    def first_deny_name_rule(self, proto: str, port: int) -> int:
        """Position of the first deny rule with names whose proto/ports hold, or
        NO_NAME_RULE."""
        return self._first_holding_of(self.deny_name_rules, self._first_deny_name_rule,
                                      proto, port)

    def _first_holding_of(self, positions: list[int], memo: dict[tuple[str, int], int],
                          proto: str, port: int) -> int:
        key = (proto, port)
        found = memo.get(key)
        if found is None:
            found = next((p for p in positions if self.rules[p].allows_port(proto, port)),
                         NO_NAME_RULE)
            if len(memo) < _NAME_MEMO_MAX:
                memo[key] = found
        return found


def _first_holding(rules: tuple[Rule, ...], positions: Iterable[int], best: int, proto: str,
                   port: int) -> int:
    """The first of `positions` (in rule order) before `best` whose port/proto constraints
    hold, else `best`."""
    for position in positions:
        if position >= best:
            break
        if rules[position].allows_port(proto, port):
            return position
    return best


class CompiledPolicySet:
    """A PolicySet ready for per-flow lookups; built once per (re)load."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.source = policy_set
        self.clients = policy_set.clients
        self.client_index = ClientIndex(self.clients)  # the first client for a sender
        # Hashing executables costs a read of each new binary: only when a client asks.
        self.matches_sha256 = any(key == "sha256" for client in self.clients
                                  for key, _value in client.match)
        with collector_paused():
            self.policies = {name: CompiledPolicy(p) for name, p in policy_set.policies.items()}
        # Asking whether an address is one of the host's resolvers: only when a rule could care.
        self.uses_resolvers = any(p.resolver_rules for p in self.policies.values())
        # Answers by (policies, destination): a busy client opens flow after flow to the
        # same few destinations, and the set is immutable (a reload builds a new one).
        self._memo: Memo[tuple, tuple[RuleMatch | None, bool]] = Memo(MATCH_MEMO_MAX)

    def first_match(self, policy_names: Iterable[str], dest: Destination) -> RuleMatch | None:
        """First matching rule across a client's policies, tried in order."""
        return self.match_and_pending(policy_names, dest)[0]

    def match_and_pending(
        self, policy_names: Iterable[str], dest: Destination
    ) -> tuple[RuleMatch | None, bool]:
        """See `_match_and_pending`; remembered per (policies, destination)."""
        if not isinstance(policy_names, tuple):
            policy_names = tuple(policy_names)
        key = (policy_names, dest)
        answer = self._memo.get(key)
        if answer is None:
            answer = self._memo.put(key, self._match_and_pending(policy_names, dest))
        return answer

    def _match_and_pending(
        self, policy_names: Iterable[str], dest: Destination
    ) -> tuple[RuleMatch | None, bool]:
        """The first match, and whether a name the client presents could change it.

        It could when a rule with names whose proto/ports hold for the flow stands before
        the deciding rule, or is it and matched on DNS evidence (which a presented name
        replaces; a rule that matched the address by CIDR matches whatever the name);
        with no match at all, any such rule could. Flows on ports no name rule
        covers pay one dict probe per policy with names (none for policies without).
        """
        pending = False
        proto, port = dest.proto, dest.port
        for policy, found in self.walk(policy_names, dest):
            if not pending and policy.name_rules:
                first = policy.first_name_rule(proto, port)
                pending = first != NO_NAME_RULE and (
                    found is None or first < found.position
                    or (first == found.position and found.evidence != CIDR))
            if found is not None:
                return found, pending
        return None, pending

    def address_match(self, policy_names: Iterable[str],
                      dest: Destination) -> tuple[RuleMatch | None, bool]:
        """The first rule that matches the address alone (the flow's name unknown), and
        whether a deny rule with names whose proto/ports hold stands before it (the
        unknown name might have been that rule's)."""
        dest = dest._replace(names=())
        shadowed = False
        for policy, found in self.walk(policy_names, dest):
            if not shadowed and policy.deny_name_rules:
                first = policy.first_deny_name_rule(dest.proto, dest.port)
                shadowed = first != NO_NAME_RULE and (found is None or first < found.position)
            if found is not None:
                return found, shadowed
        return None, shadowed

    def private_names_hold(self, policy_names: Iterable[str], proto: str, port: int) -> bool:
        """Whether a rule with `private = true` of these policies holds for proto/port: at
        an address names are kept from, the only names that could still allow."""
        for name in policy_names:
            policy = self.policies[name]
            if any(policy.rules[p].allows_port(proto, port) for p in policy.private_rules):
                return True
        return False

    def walk(self, policy_names: Iterable[str],
             dest: Destination) -> Iterator[tuple[CompiledPolicy, RuleMatch | None]]:
        """Each policy tried, in order, with its first matching rule, up to the first
        policy that has one: the walk behind every decision, and `explain`'s trace."""
        for name in policy_names:
            policy = self.policies[name]
            found = policy.first_match(dest)
            yield policy, found
            if found is not None:
                return


def destination_names(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Normalise (name, evidence) pairs the way patterns are normalised."""
    return tuple((normalize_name(name), evidence) for name, evidence in pairs)
