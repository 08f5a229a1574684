"""Audit events read back: who sent which flow, and which DNS query it asked.

`read_flows` turns audit lines (JSON, as `nfguard.audit` writes them) into `Flow`s and
`Query`s (events with `dns.type = "query"`) and counts the lines that are neither.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson

from nfguard.config import DEFAULT_FORWARD_FROM
from nfguard.policy.patterns import is_pattern_text, normalize_name, parse_name_pattern
from nfguard.procs import ProcessInfo
from nfguard.procs.containers import Container, image_id
from nfguard.suggest.text import fnmatch_escape

Resolvers = Callable[[str], bool]  # whether an address is one of the host's DNS resolvers


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
                None if dns else usable_name(destination.get("domain")), identity, process)
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


def usable_name(value: Any) -> str | None:
    """A name (a destination.domain, a question) that a rule can name; None for any other."""
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
