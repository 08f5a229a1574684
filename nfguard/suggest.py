"""`nfguard suggest`: a policy that allows what audit events show, or what a policy denies of it.

Pure functions over parsed events; the CLI in `nfguard.cli` only reads files and prints.

- `read_flows` turns audit lines (JSON, as `nfguard.audit` writes them) into `Flow`s and
  `Query`s (events with `dns.type = "query"`) and counts the lines that are neither;
- `suggest` groups flows by who sent them (executable, user, systemd unit) into one
  `[[client]]` and one `[[policy]]` each, rules by name where the flow had a DNS-derived
  name (many siblings under one registrable domain collapse into `**.parent`, never past the
  registrable domain), by address (/32, /128) where it had none ("@resolvers" for DNS to
  the host's resolvers), grouped by proto and the set of ports seen, and renders it as
  TOML with counts and first/last seen as comments. A name a client resolved that its rules
  do not already cover (judged by `QueryJudge` on the suggested policy itself: a name it
  connected to is covered by its `to`) becomes resolvable-only, `resolve = [...]`, written
  literally: a wildcard over names only resolved would let a tunnel through. A name whose
  flows went to an internal address (nfguard.policy.internal) gets a rule of its own with
  `private = true`, each name written out and the addresses in a comment: without it the
  DNS rebinding guard ([names] private) would refuse those flows, and the opt-in is a
  decision for the reviewer, not a wildcard's side effect;
- `denied` evaluates flows against an existing policy with the real `Engine`, and queries
  with its `QueryJudge`, and reports the distinct (who, destination, port, proto) and
  (who, name, type) it would deny or refuse.

Output is deterministic: the same events in any order give the same text.
"""

from __future__ import annotations

import ipaddress
import os.path
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import orjson

from nfguard.config import DEFAULT_FORWARD_FROM, EngineConfig
from nfguard.engine import Decision, Engine
from nfguard.policy.internal import PUBLIC, Internal, Private, classify, classify_text
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import RESOLVERS, Client, PolicySet
from nfguard.policy.patterns import is_pattern_text, normalize_name, parse_name_pattern
from nfguard.policy.resolve import QueryDecision, QueryJudge
from nfguard.procs import ProcessInfo
from nfguard.procs.containers import Container, image_id
from nfguard.wire.dns import DNS_PORT
from nfguard.wire.ip import TCP, UDP, Packet

DEFAULT_MIN_SIBLINGS = 3
CATCH_ALL = "unattributed"
# Local resolvers: they ask upstream what local processes asked them (and those queries
# are judged by the processes' own clients), so their client gets `queries = "any"`
# rather than the list of every name the host resolved.
LOCAL_RESOLVERS = frozenset({
    "/usr/lib/systemd/systemd-resolved", "/lib/systemd/systemd-resolved",
    "/usr/sbin/dnsmasq", "/usr/sbin/unbound", "/usr/sbin/named", "/usr/sbin/pdns_recursor",
    "/usr/bin/coredns"})
_PROTO_NUMBERS = {"tcp": TCP, "udp": UDP, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}

QUERY_NOUN = ("query", "queries")
Resolvers = Callable[[str], bool]  # whether an address is one of the host's DNS resolvers
Inside = Callable[[str], Internal]  # what kind of address one is (nfguard.hostnets)


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a flow, as far as a client `match` table can say it; all None: unknown.
    A forwarded flow also has its ingress interface (and a container's, its process); a
    container's flow its image (its unit, a scope named after one run's id, is left out);
    a routed flow with no process behind it (a LAN host behind a gateway: an interface
    that is no container or VM bridge, whose addresses are handed out per run) its source
    address, which is all that tells such senders apart on one interface."""

    exe: str | None = None
    user: str | None = None  # user name, or the uid as digits when the name was unknown
    unit: str | None = None
    interface: str | None = None
    image: str | None = None
    source: str | None = None

    def _given(self) -> list[tuple[str, str]]:
        return [(key, value) for key, value in (
            ("exe", self.exe), ("user", self.user), ("unit", self.unit),
            ("interface", self.interface), ("image", self.image), ("source", self.source))
            if value is not None]

    @property
    def known(self) -> bool:
        return bool(self._given())

    def match_items(self) -> list[tuple[str, str]]:
        """The `match` table: exe, interface and image are fnmatch patterns there, so their
        metacharacters are escaped; everything else is compared as it is."""
        return [(key, fnmatch_escape(value) if key in ("exe", "interface", "image") else value)
                for key, value in self._given()]

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self._given()) or "(no process info)"

    def sort_key(self) -> tuple[int, str, str, str, str, str, str]:
        # Most specific first: a client whose keys are a subset of another's would otherwise
        # take that one's flows, since the first client that matches decides.
        return (-len(self._given()), self.exe or "", self.user or "", self.unit or "",
                self.interface or "", self.image or "", self.source or "")


@dataclass(frozen=True, slots=True)
class Flow:
    """One audit event of a flow, reduced to what suggest and denied need."""

    timestamp: str | None
    ip: str  # normalised address text
    version: int
    proto: str  # "tcp" | "udp" | another transport name
    port: int
    domain: str | None  # normalised destination.domain, when it is a usable name
    identity: Identity
    process: ProcessInfo | None  # None when the event carried no process, user or unit

    @property
    def destination(self) -> str:
        return self.domain if self.domain is not None else self.ip


@dataclass(frozen=True, slots=True)
class Query:
    """One audit event of a DNS query: who asked which name, and the datagram or message
    that carried it (a flow to the resolver, which the policy must let out too)."""

    name: str  # the question name, normalised ("" is the root)
    qtype: str  # "A", "SRV", ... as the event has it
    carrier: Flow

    @property
    def identity(self) -> Identity:
        return self.carrier.identity

    @property
    def timestamp(self) -> str | None:
        return self.carrier.timestamp


@dataclass
class ReadResult:
    flows: list[Flow] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)
    malformed: int = 0  # lines that are not JSON audit events
    without_flow: int = 0  # valid events with no destination (unparseable packets, errors)
    examples: list[str] = field(default_factory=list)  # "file:line: why" of the first few

    def add_problem(self, where: str, why: str, malformed: bool = True) -> None:
        if malformed:
            self.malformed += 1
        else:
            self.without_flow += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {why}")


class NotAFlow(ValueError):
    """A valid audit event that describes no flow (e.g. an unparseable packet)."""


def read_flows(sources: Iterable[tuple[str, Iterable[bytes | str]]]) -> ReadResult:
    """(name, lines) pairs -> flows; bad lines are counted, never fatal."""
    result = ReadResult()
    for name, lines in sources:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                parsed = parse_event(orjson.loads(line))
            except NotAFlow as exc:
                result.add_problem(where, str(exc), malformed=False)
            except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
                result.add_problem(where, str(exc) or type(exc).__name__)
            else:
                if isinstance(parsed, Query):
                    result.queries.append(parsed)
                else:
                    result.flows.append(parsed)
    return result


def parse_event(event: Any) -> Flow | Query:
    """One decoded audit event -> Flow, or Query for a DNS query's; ValueError (NotAFlow
    for flowless events) if neither."""
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    destination = event.get("destination")
    if destination is None:
        if isinstance(event.get("event"), dict) and isinstance(event.get("nfguard"), dict):
            raise NotAFlow("event without a destination")
        raise ValueError("not an nfguard audit event")
    network = _table(event, "network")
    if not isinstance(destination, dict):
        raise ValueError("destination is not an object")
    address = ipaddress.ip_address(_text(destination.get("ip"), "destination.ip"))
    port = destination.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"bad destination.port {port!r}")
    proto = _text(network.get("transport"), "network.transport").lower()
    timestamp = event.get("@timestamp")
    if not isinstance(timestamp, str):
        timestamp = None
    identity, process = _who(event)
    dns = _table(event, "dns")
    flow = Flow(timestamp, str(address), address.version, proto, port,
                None if dns else _usable_name(destination.get("domain")), identity, process)
    if not dns:
        return flow
    if dns.get("type") != "query":
        raise NotAFlow(f"dns event of type {dns.get('type')!r}")
    question = _table(dns, "question")
    name = question.get("name")
    if not isinstance(name, str):
        raise ValueError("missing or bad dns.question.name")
    return Query(normalize_name(name), _optional_text(question.get("type")) or "?", flow)


def _who(event: dict[str, Any]) -> tuple[Identity, ProcessInfo | None]:
    process = _table(event, "process")
    user = _table(event, "user")
    nfg = _table(event, "nfguard")
    parent: dict[str, Any] = process.get("parent") or {}
    if not isinstance(parent, dict):
        parent = {}
    exe = _optional_text(process.get("executable"))
    name = _optional_text(user.get("name"))
    uid_text = _optional_text(user.get("id"))
    uid = int(uid_text) if uid_text is not None and uid_text.isdigit() else None
    unit = _optional_text(nfg.get("unit"))
    ingress = _table(_table(_table(event, "observer"), "ingress"), "interface")
    interface = _optional_text(ingress.get("name"))
    container = _container(_table(event, "container"))
    command_line = _optional_text(process.get("command_line"))
    # A digits-only user name would be read as a uid by the client matcher: use the uid.
    match_user = name if name is not None and not name.isdigit() else (
        str(uid) if uid is not None else None)
    image = container.image if container is not None else None
    source = _forwarded_source(event) if interface is not None else None
    routed = (interface is not None and exe is None and container is None
              and not any(fnmatchcase(interface, bridge) for bridge in DEFAULT_FORWARD_FROM))
    identity = Identity(exe, match_user, unit if container is None else None, interface, image,
                        source if routed else None)
    info = ProcessInfo(
        uid=uid,
        user=name,
        pid=process.get("pid") if isinstance(process.get("pid"), int) else None,
        exe=exe,
        cmdline=tuple(command_line.split(" ")) if command_line else (),
        parent_exe=_optional_text(parent.get("executable")),
        cgroup=_optional_text(nfg.get("cgroup")),
        unit=unit,
        interface=interface,
        container=container,
        source=source,
    )
    has_info = identity.known or uid is not None or info.cmdline or info.cgroup
    return identity, (info if has_info else None)


def _forwarded_source(event: dict[str, Any]) -> str | None:
    """A forwarded flow's source.ip (its original source: before any SNAT), normalised."""
    text = _optional_text(_table(event, "source").get("ip"))
    try:
        return None if text is None else str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _container(fields: dict[str, Any]) -> Container | None:
    """An event's container.*, as attribution gave it."""
    container_id = _optional_text(fields.get("id"))
    if container_id is None:
        return None
    image = fields.get("image")
    image = image if isinstance(image, dict) else {}
    digests = image.get("hash")
    digests = digests.get("all") if isinstance(digests, dict) else None
    return Container(_optional_text(fields.get("runtime")) or "", container_id,
                     _optional_text(fields.get("name")), _optional_text(image.get("name")),
                     image_id(digests[0] if isinstance(digests, list) and digests else None))


def _table(event: dict[str, Any], key: str) -> dict[str, Any]:
    value = event.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not an object")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing or bad {what}")
    return value


def _optional_text(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _usable_name(value: Any) -> str | None:
    """A destination.domain that a rule can name; anything else counts as no name."""
    if not isinstance(value, str):
        return None
    name = normalize_name(value)
    if not name or "*" in name or not is_pattern_text(name):
        return None
    try:
        parse_name_pattern(name)
    except ValueError:
        return None
    return name


# ------------------------------------------------------------------------------ TOML


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped; lone
    surrogates (which JSON can carry but TOML cannot) become U+FFFD."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\uFFFD")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def fnmatch_escape(text: str) -> str:
    """Make `text` match only itself under fnmatchcase (client `exe` is a pattern)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def comment_text(text: str) -> str:
    """Text safe inside a one-line TOML comment (no control characters, no newline)."""
    safe = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?"
                   for c in text)
    return safe


# ------------------------------------------------------------------------------ names


@lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def registrable_domain(name: str) -> str | None:
    """example.com for a.b.example.com, example.co.uk for x.example.co.uk; None when the
    name is itself a public suffix (com, co.uk, github.io) or under none."""
    return _psl().privatesuffix(name)


def collapse_names(names: Iterable[str], min_siblings: int = DEFAULT_MIN_SIBLINGS
                   ) -> dict[str, list[str]]:
    """Names -> {rule entry: the observed names it covers}.

    Under each registrable domain R, when at least `min_siblings` distinct names lie
    strictly below R, they become one `**.P` where P is their deepest common parent (R or
    below, never above). R itself, if seen, stays literal (`**.R` does not match R).
    min_siblings < 2 turns collapsing off.
    """
    by_domain: dict[str, set[str]] = defaultdict(set)
    entries: dict[str, list[str]] = {}
    for name in set(names):
        domain = registrable_domain(name)
        if domain is None or domain == name or min_siblings < 2:
            entries[name] = [name]
        else:
            by_domain[domain].add(name)
    for domain, below in by_domain.items():
        if len(below) < min_siblings:
            for name in below:
                entries[name] = [name]
            continue
        parent = _common_parent(sorted(below), domain)
        entries.setdefault(f"**.{parent}", []).extend(sorted(below))
    return entries


def _common_parent(names: list[str], domain: str) -> str:
    """The longest label suffix of which every name is a strict subdomain (at least domain)."""
    reversed_labels = [name.split(".")[::-1] for name in names]
    limit = min(len(labels) for labels in reversed_labels) - 1
    common: list[str] = []
    for i in range(limit):
        label = reversed_labels[0][i]
        if any(labels[i] != label for labels in reversed_labels):
            break
        common.append(label)
    parent = ".".join(reversed(common))
    return parent if len(parent) >= len(domain) else domain


# ------------------------------------------------------------------------------ suggest


@dataclass
class Seen:
    """How often, and when first and last, something was observed."""

    count: int = 0
    first: str | None = None
    last: str | None = None

    def add(self, seen: Flow | Query) -> None:
        self.count += 1
        if seen.timestamp is not None:
            if self.first is None or seen.timestamp < self.first:
                self.first = seen.timestamp
            if self.last is None or seen.timestamp > self.last:
                self.last = seen.timestamp

    def merge(self, other: Seen) -> None:
        self.count += other.count
        for ts in (other.first, other.last):
            if ts is not None:
                self.first = ts if self.first is None or ts < self.first else self.first
                self.last = ts if self.last is None or ts > self.last else self.last

    def describe(self, noun: str = "flow", plural: str = "") -> str:
        flows = f"{self.count} {noun if self.count == 1 else plural or noun + 's'}"
        if self.first is None:
            return flows
        if self.first == self.last:
            return f"{flows}, seen {comment_text(self.first)}"
        first, last = comment_text(self.first), comment_text(self.last or "")
        return f"{flows}, first seen {first}, last {last}"


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
    total = Seen()
    for flow in flows:
        by_identity[flow.identity].append(flow)
        total.add(flow)
    identities = sorted(by_identity, key=Identity.sort_key)
    names = _client_names(identities)
    clients = []
    for identity in identities:
        seen = Seen()
        for flow in by_identity[identity]:
            seen.add(flow)
        rules = _rules(by_identity[identity], min_siblings, resolvers, internal)
        clients.append(SuggestedClient(names[identity], identity, rules, seen))
    suggestion = Suggestion(clients, total)
    if queries:
        _add_resolve_only(suggestion, queries)
    return suggestion


def with_carriers(flows: Iterable[Flow], queries: Iterable[Query]) -> list[Flow]:
    """The flows, and the flow to its resolver of each query whose (who, address, port,
    proto) no flow event has: the policy must let the query reach the resolver too."""
    flows = list(flows)
    keys = {_flow_key(flow) for flow in flows}
    for query in queries:
        key = _flow_key(query.carrier)
        if key not in keys:
            keys.add(key)
            flows.append(query.carrier)
    return flows


def _flow_key(flow: Flow) -> tuple[Identity, str, int, str]:
    return flow.identity, flow.ip, flow.port, flow.proto


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
        if _usable_name(query.name) != query.name:
            suggestion.unwritable += 1
            continue
        seen, qtypes = asked.setdefault((query.identity, query.name), (Seen(), set()))
        seen.add(query)
        qtypes.add(query.qtype)
    for (identity, name), (seen, qtypes) in sorted(
            asked.items(), key=lambda item: (item[0][0].sort_key(), _entry_key(item[0][1]))):
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
        to.sort(key=lambda item: _entry_key(item[0]))
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


def _seen(flows: list[Flow]) -> Seen:
    seen = Seen()
    for flow in flows:
        seen.add(flow)
    return seen


def _group_key(item: tuple[tuple[str, str | None, tuple[int, ...]], Any]) -> tuple:
    (kind, proto, ports), _ = item
    return (kind, proto or "~", ports)


def _entry_key(entry: str) -> tuple:
    try:
        network = ipaddress.ip_network(entry)
    except ValueError:
        return (0, tuple(reversed(entry.split("."))), 0)
    return (network.version, (), int(network.network_address))


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


# ------------------------------------------------------------------------------ denied


@dataclass(frozen=True, slots=True)
class DeniedFlow:
    identity: Identity
    destination: str
    port: int
    proto: str
    clients: tuple[str, ...]  # which clients of the policy decided ("-" for none)
    rules: tuple[str, ...]  # which rules (or reasons, when no rule matched) denied
    seen: Seen


def flow_packet(flow: Flow) -> Packet:
    address = ipaddress.ip_address(flow.ip)
    number = _PROTO_NUMBERS.get(flow.proto, 255)
    return Packet(address.version, number, "0.0.0.0" if address.version == 4 else "::",
                  flow.ip, 0, flow.port, int(address), 0, 0, 0)


def decide(engine: Engine, flow: Flow) -> Decision:
    names = [(flow.domain, "dns")] if flow.domain is not None else []
    return engine.decide(flow_packet(flow), flow.process, names)


def policy_engine(policies: PolicySet, default: str = "deny",
                  resolvers: Resolvers | None = None, private: str = Private.ALLOW,
                  internal: Callable[[int, int], Internal] = classify) -> Engine:
    return Engine(EngineConfig(mode="enforce", default=default), CompiledPolicySet(policies),
                  resolvers=resolvers, private=private, internal=internal)


def denied(flows: Iterable[Flow], policies: PolicySet, default: str = "deny",
           resolvers: Resolvers | None = None, queries: Iterable[Query] = (),
           private: str = Private.ALLOW, internal: Callable[[int, int], Internal] = classify,
           ) -> list[DeniedFlow]:
    """The distinct (who, destination, port, proto) that `policies` would deny, the flows
    carrying `queries` to their resolver included ([names] private as `private` says, with
    `internal` telling what kind of address one is)."""
    flows = with_carriers(flows, queries)
    engine = policy_engine(policies, default, resolvers, private, internal)
    found: dict[tuple[Identity, str, int, str], tuple[Seen, set[str], set[str]]] = {}
    for flow in flows:
        decision = decide(engine, flow)
        if decision.action != "deny":
            continue
        key = (flow.identity, flow.destination, flow.port, flow.proto)
        seen, clients, rules = found.setdefault(key, (Seen(), set(), set()))
        seen.add(flow)
        clients.add(decision.client or "-")
        if decision.private is not None:  # the rule allowed, the DNS rebinding guard did not
            rules.add(f"reason={decision.reason} ({decision.private} address; "
                      f"rule={decision.rule} has no private = true)")
        else:
            rules.add(f"rule={decision.rule}" if decision.rule else f"reason={decision.reason}")
    out = [DeniedFlow(identity, dest, port, proto, tuple(sorted(clients)), tuple(sorted(rules)),
                      seen)
           for (identity, dest, port, proto), (seen, clients, rules) in found.items()]
    out.sort(key=lambda d: (d.identity.sort_key(), d.destination, d.proto, d.port))
    return out


@dataclass(frozen=True, slots=True)
class RefusedQuery:
    identity: Identity
    name: str
    qtypes: tuple[str, ...]
    clients: tuple[str, ...]  # which clients of the policy decided ("-" for none)
    rules: tuple[str, ...]  # which rules (or reasons, when no rule covered the name) refused
    seen: Seen


def judge_query(engine: Engine, judge: QueryJudge, query: Query) -> QueryDecision:
    """The decision the engine would give the query: its sender's client, then the judge."""
    client: Client | None = engine.client_for(query.carrier.process)
    return judge.decide(client, query.name)


def refused(queries: Iterable[Query], policies: PolicySet, default: str = "deny",
            judged: str = "policy") -> list[RefusedQuery]:
    """The distinct (who, name) whose queries `policies` would refuse ([names] queries =
    `judged`; a client's own `queries` overrides it, as in the engine)."""
    engine = policy_engine(policies, default)
    judge = QueryJudge(engine.policies, judged, default)
    found: dict[tuple[Identity, str], tuple[Seen, set[str], set[str], set[str]]] = {}
    for query in queries:
        decision = judge_query(engine, judge, query)
        if decision.action != "deny":
            continue
        seen, qtypes, clients, rules = found.setdefault(
            (query.identity, query.name), (Seen(), set(), set(), set()))
        seen.add(query)
        qtypes.add(query.qtype)
        clients.add(decision.client or "-")
        rules.add(f"rule={decision.rule}" if decision.rule else f"reason={decision.reason}")
    out = [RefusedQuery(identity, name, tuple(sorted(qtypes)), tuple(sorted(clients)),
                        tuple(sorted(rules)), seen)
           for (identity, name), (seen, qtypes, clients, rules) in found.items()]
    out.sort(key=lambda r: (r.identity.sort_key(), _entry_key(r.name)))
    return out


def render_denied(items: list[DeniedFlow], total: int, policy_dir: str, default: str,
                  queries: list[RefusedQuery] | None = None, total_queries: int = 0) -> str:
    flows = sum(d.seen.count for d in items)
    lines = [f"# {len(items)} distinct flows denied by the policy in {comment_text(policy_dir)} "
             f"({flows} of {total} observed flows; engine.default = {default})"]
    for d in items:
        dest = f"[{d.destination}]" if ":" in d.destination else d.destination
        lines.append(comment_text(
            f"deny {d.proto} {dest}:{d.port}  {d.seen.count} flow{'s' * (d.seen.count != 1)}"
            f"  from {d.identity.describe()}  client={','.join(d.clients)} "
            f"{' '.join(d.rules)}"))
    if queries is not None:
        count = sum(r.seen.count for r in queries)
        lines.append(f"# {len(queries)} distinct names refused to their clients ({count} of "
                     f"{total_queries} observed queries): each needs a rule whose `to` or "
                     "`resolve` names it")
        for r in queries:
            lines.append(comment_text(
                f"refuse {'/'.join(r.qtypes)} {r.name or '.'}  {r.seen.describe(*QUERY_NOUN)}"
                f"  from {r.identity.describe()}  client={','.join(r.clients)} "
                f"{' '.join(r.rules)}"))
    return "\n".join(lines) + "\n"
