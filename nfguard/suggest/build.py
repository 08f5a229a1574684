"""The suggested policy: what the flows and queries of audit events show, allowed.

`suggest` groups flows by who sent them (executable, user, systemd unit) into one
`[[client]]` and one `[[policy]]` each, rules by name where the flow had a DNS-derived
name (collapsed as `nfguard.suggest.names` says), by address (/32, /128) where it had none
("@resolvers" for DNS to the host's resolvers), grouped by proto and the set of ports
seen, and renders it as TOML with counts and first/last seen as comments. A name a client
resolved that its rules do not already cover (judged by `QueryJudge` on the suggested
policy itself: a name it connected to is covered by its `to`) becomes resolvable-only,
`resolve = [...]`, written literally: a wildcard over names only resolved would let a
tunnel through. A name whose flows went to an internal address (nfguard.policy.internal)
gets a rule of its own with `private = true`, each name written out and the addresses in a
comment: without it the DNS rebinding guard ([names] private) would refuse those flows,
and the opt-in is a decision for the reviewer, not a wildcard's side effect.
"""

from __future__ import annotations

import os.path
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nfguard.policy.internal import PUBLIC, Internal, classify_text
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import RESOLVERS
from nfguard.policy.resolve import QueryJudge
from nfguard.suggest.events import Flow, Identity, Query, Resolvers, usable_name, with_carriers
from nfguard.suggest.names import DEFAULT_MIN_SIBLINGS, collapse_names, entry_key
from nfguard.suggest.seen import QUERY_NOUN, Seen
from nfguard.suggest.text import comment_text, toml_string
from nfguard.wire.dns import DNS_PORT

CATCH_ALL = "unattributed"
# Local resolvers: they ask upstream what local processes asked them (and those queries
# are judged by the processes' own clients), so their client gets `queries = "any"`
# rather than the list of every name the host resolved.
LOCAL_RESOLVERS = frozenset({
    "/usr/lib/systemd/systemd-resolved", "/lib/systemd/systemd-resolved",
    "/usr/sbin/dnsmasq", "/usr/sbin/unbound", "/usr/sbin/named", "/usr/sbin/pdns_recursor",
    "/usr/bin/coredns"})
Inside = Callable[[str], Internal]  # what kind of address one is (nfguard.hostnets)


@dataclass
class SuggestedRule:
    name: str
    kind: str  # "names" | "addresses" | "inside" (names that led to internal addresses)
    proto: str | None  # None: both (a transport rules cannot name, e.g. icmp)
    ports: tuple[int, ...]  # empty: any port
    to: list[tuple[str, Seen, list[str]]]  # (entry, seen, names it covers if a wildcard)
    seen: Seen
    inside: tuple[str, ...] = ()  # "address (kind)" of the internal addresses reached


@dataclass
class ResolveOnly:
    """A name a client resolved that none of its suggested rules covers."""

    name: str
    qtypes: tuple[str, ...]
    seen: Seen


@dataclass
class SuggestedClient:
    name: str
    identity: Identity
    rules: list[SuggestedRule]
    seen: Seen
    resolve: list[ResolveOnly] = field(default_factory=list)
    any_query: int = 0  # a local resolver's queries: its client gets queries = "any"


@dataclass
class Suggestion:
    clients: list[SuggestedClient]
    seen: Seen
    queries: Seen = field(default_factory=Seen)
    unwritable: int = 0  # queries of names no pattern can name (the root, odd labels)


def build_suggestion(flows: Iterable[Flow], min_siblings: int = DEFAULT_MIN_SIBLINGS,
                     resolvers: Resolvers | None = None,
                     queries: Iterable[Query] = (), internal: Inside = classify_text,
                     ) -> Suggestion:
    queries = list(queries)
    flows = with_carriers(flows, queries)
    by_identity: dict[Identity, list[Flow]] = defaultdict(list)
    for flow in flows:
        by_identity[flow.identity].append(flow)
    identities = sorted(by_identity, key=Identity.sort_key)
    names = _client_names(identities)
    clients = []
    for identity in identities:
        rules = _rules(by_identity[identity], min_siblings, resolvers, internal)
        clients.append(SuggestedClient(names[identity], identity, rules,
                                       _seen(by_identity[identity])))
    suggestion = Suggestion(clients, _seen(flows))
    if queries:
        _add_resolve_only(suggestion, queries)
    return suggestion


def _add_resolve_only(suggestion: Suggestion, queries: list[Query]) -> None:
    """Judge each client's queries by the policy suggested so far, as the engine would
    (QueryJudge): the names it refuses become the client's resolvable-only names."""
    policies = parse_policy_texts([("suggested.toml", render_suggestion(suggestion))])
    judge = QueryJudge(CompiledPolicySet(policies))
    loaded = {client.name: client for client in policies.clients}
    by_identity = {client.identity: client for client in suggestion.clients}
    asked: dict[tuple[Identity, str], tuple[Seen, set[str]]] = {}
    for query in queries:
        suggestion.queries.add(query)
        if query.identity.exe in LOCAL_RESOLVERS:
            by_identity[query.identity].any_query += 1
            continue
        if usable_name(query.name) != query.name:
            suggestion.unwritable += 1
            continue
        seen, qtypes = asked.setdefault((query.identity, query.name), (Seen(), set()))
        seen.add(query)
        qtypes.add(query.qtype)
    for (identity, name), (seen, qtypes) in sorted(
            asked.items(), key=lambda item: (item[0][0].sort_key(), entry_key(item[0][1]))):
        client = by_identity[identity]
        if judge.decide(loaded[client.name], name).action != "allow":
            client.resolve.append(ResolveOnly(name, tuple(sorted(qtypes)), seen))


def _client_names(identities: list[Identity]) -> dict[Identity, str]:
    names: dict[Identity, str] = {}
    used: set[str] = set()
    for identity in identities:  # already in their stable order
        if not identity.known:
            base = CATCH_ALL
        else:
            parts = [os.path.basename(identity.exe.rstrip("/")) or identity.exe
                     if identity.exe else None, identity.user, identity.unit,
                     identity.interface, identity.image, identity.source]
            base = "-".join(_slug(p) for p in parts if p is not None)
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        names[identity] = name
    return names


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._@+-]+", "_", text).strip("_")
    return slug or "x"


def _rules(flows: list[Flow], min_siblings: int, resolvers: Resolvers | None,
           internal: Inside = classify_text) -> list[SuggestedRule]:
    # proto -> destination entry -> ports seen / Seen ; names are collapsed per proto.
    named: dict[str | None, dict[str, list[Flow]]] = defaultdict(lambda: defaultdict(list))
    addressed: dict[str | None, dict[str, list[Flow]]] = defaultdict(lambda: defaultdict(list))
    inside: dict[str | None, dict[str, list[Flow]]] = defaultdict(lambda: defaultdict(list))
    kinds: dict[str, Internal] = {}
    for flow in flows:
        proto = flow.proto if flow.proto in ("tcp", "udp") else None
        if flow.domain is not None:
            where = kinds.get(flow.ip)
            if where is None:
                where = kinds[flow.ip] = internal(flow.ip)
            (named if where is PUBLIC else inside)[proto][flow.domain].append(flow)
        elif flow.port == DNS_PORT and resolvers is not None and resolvers(flow.ip):
            addressed[proto][RESOLVERS].append(flow)  # not today's address: whatever it becomes
        else:
            prefix = 32 if flow.version == 4 else 128
            addressed[proto][f"{flow.ip}/{prefix}"].append(flow)

    # (kind, proto, ports) -> [(entry, seen, covered)]
    groups: dict[tuple[str, str | None, tuple[int, ...]], list[tuple[str, Seen, list[str]]]]
    groups = defaultdict(list)
    for proto, per_name in named.items():
        for entry, covered in collapse_names(per_name, min_siblings).items():
            members = [f for name in covered for f in per_name[name]]
            wildcard = covered if entry.startswith("**.") else []
            groups[("names", proto, _ports(proto, members))].append(
                (entry, _seen(members), wildcard))
    for proto, per_address in addressed.items():
        for entry, members in per_address.items():
            groups[("addresses", proto, _ports(proto, members))].append(
                (entry, _seen(members), []))
    for proto, per_name in inside.items():  # written out: an opt-in is never a wildcard's
        for entry, members in per_name.items():
            groups[("inside", proto, _ports(proto, members))].append(
                (entry, _seen(members), []))

    rules = []
    used: set[str] = set()
    for (kind, proto, ports), to in sorted(groups.items(), key=_group_key):
        to.sort(key=lambda item: entry_key(item[0]))
        seen = Seen()
        for _entry, entry_seen, _covered in to:
            seen.merge(entry_seen)
        base = f"{kind}-{proto or 'any'}"
        if ports:
            base += "-" + "-".join(str(p) for p in ports[:4]) + ("-more" if len(ports) > 4 else "")
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        reached: tuple[str, ...] = ()
        if kind == "inside":
            reached = tuple(sorted({f"{f.ip} ({kinds[f.ip]})" for entry, *_ in to
                                    for f in inside[proto][entry]}))
        rules.append(SuggestedRule(name, kind, proto, ports, to, seen, reached))
    return rules


def _ports(proto: str | None, flows: list[Flow]) -> tuple[int, ...]:
    """The ports to allow; empty (any port) when the transport has none a rule can name."""
    if proto is None:
        return ()
    ports = {f.port for f in flows}
    if 0 in ports:
        return ()
    return tuple(sorted(ports))


def _seen(flows: Iterable[Flow]) -> Seen:
    seen = Seen()
    for flow in flows:
        seen.add(flow)
    return seen


def _group_key(item: tuple[tuple[str, str | None, tuple[int, ...]], Any]) -> tuple:
    (kind, proto, ports), _ = item
    return (kind, proto or "~", ports)


def render_suggestion(suggestion: Suggestion) -> str:
    lines = [
        "# Suggested by `nfguard suggest`: allows exactly the flows and DNS queries in the",
        f"# audit events read ({suggestion.seen.describe()};",
        *([f"# {suggestion.queries.describe(*QUERY_NOUN)};"] if suggestion.queries.count
          else []),
        f"# {len(suggestion.clients)} clients).",
        "# Review it before use: every destination here was contacted, not necessarily wanted.",
        "# A client may resolve the names its `to` rules name; `resolve` lists the names it",
        "# only looked up, each written out: a wildcard there would let a DNS tunnel through.",
        "# Clients are tried in order, most specific match first; a flow no rule here allows",
        "# falls to engine.default. A client with no match table matches every process.",
    ]
    for client in suggestion.clients:
        who = comment_text(client.identity.describe())
        lines += ["", "[[client]]", f"# {who}: {client.seen.describe()}"]
        lines.append(f"name = {toml_string(client.name)}")
        items = client.identity.match_items()
        if items:
            table = ", ".join(f"{key} = {toml_string(value)}" for key, value in items)
            lines.append(f"match = {{ {table} }}")
        lines.append(f"policies = [{toml_string(client.name)}]")
        if client.any_query:
            lines.append(f'queries = "any"  # a local resolver ({client.any_query} queries): '
                         "it asks what local processes, judged, asked it")
        lines += ["", "[[policy]]", f"name = {toml_string(client.name)}"]
        for rule in client.rules:
            lines += ["", "[[policy.rule]]", f"# {rule.seen.describe()}"]
            lines.append(f"name = {toml_string(rule.name)}")
            lines.append('action = "allow"')
            lines.append("to = [")
            for entry, seen, covered in rule.to:
                note = seen.describe() if len(rule.to) > 1 or covered else ""
                if covered:
                    shown = ", ".join(covered[:5]) + (", ..." if len(covered) > 5 else "")
                    note += f"; {len(covered)} names: {shown}"
                note = f"  # {comment_text(note)}" if note else ""
                lines.append(f"    {toml_string(entry)},{note}")
            lines.append("]")
            if rule.ports:
                lines.append(f"ports = [{', '.join(_port_items(rule.ports))}]")
            if rule.proto is not None:
                lines.append(f"proto = {toml_string(rule.proto)}")
            else:
                lines.append("# transport without ports (e.g. icmp): rules cannot narrow it, "
                             "so this allows tcp and udp too")
            if rule.inside:
                shown = ", ".join(rule.inside[:5]) + (", ..." if len(rule.inside) > 5 else "")
                lines.append("# these names led to internal addresses: "
                             f"{comment_text(shown)}; a name alone is kept from them")
                lines.append("# ([names] private): keep this only if they are meant to")
                lines.append("private = true")
        if client.resolve:
            seen = Seen()
            for item in client.resolve:
                seen.merge(item.seen)
            lines += ["", "[[policy.rule]]",
                      f"# names resolved, never connected to: {seen.describe(*QUERY_NOUN)}",
                      'name = "resolve-only"', 'action = "allow"', "resolve = ["]
            for item in client.resolve:
                note = comment_text(
                    f"{'/'.join(item.qtypes)}: {item.seen.describe(*QUERY_NOUN)}")
                lines.append(f"    {toml_string(item.name)},  # {note}")
            lines.append("]")
    if suggestion.unwritable:
        lines += ["", f"# {suggestion.unwritable} queries of names no rule can name (the root, "
                  "labels that are not DNS labels) are not allowed by this policy"]
    return "\n".join(lines) + "\n"


def _port_items(ports: tuple[int, ...]) -> Iterator[str]:
    """Runs of three or more consecutive ports as "LOW-HIGH", others as numbers."""
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == ports[j] + 1:
            j += 1
        if j - i >= 2:
            yield f'"{ports[i]}-{ports[j]}"'
        else:
            yield from (str(p) for p in ports[i:j + 1])
        i = j + 1


def suggest(flows: Iterable[Flow], min_siblings: int = DEFAULT_MIN_SIBLINGS,
            resolvers: Resolvers | None = None, queries: Iterable[Query] = (),
            internal: Inside = classify_text) -> str:
    """Flows and queries -> TOML policy text that allows every one of them. `resolvers`:
    whether an address is one of the host's DNS resolvers; DNS to them is "@resolvers".
    `internal`: what kind of address one is (names that led inside opt in)."""
    return render_suggestion(build_suggestion(flows, min_siblings, resolvers, queries,
                                              internal))
