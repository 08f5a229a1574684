"""`nfguard explain`: the chain of reasoning for a hypothetical flow, and for the DNS query
that comes before it, without the kernel."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
from collections.abc import Callable
from typing import Any

from nfguard.config import Config
from nfguard.engine import SNI, Engine
from nfguard.policy.build import build_engine
from nfguard.policy.internal import PUBLIC
from nfguard.policy.match import Destination, destination_names
from nfguard.policy.model import ALLOW, IMAGE_ID_PREFIX, Mode
from nfguard.policy.patterns import normalize_name
from nfguard.policy.resolve import Queries, QueryEvidence, QueryJudge, QueryMatch
from nfguard.procs import ProcessInfo
from nfguard.procs.containers import Container
from nfguard.wire.ip import TCP, UDP, Packet

Resolver = Callable[..., list[tuple[Any, ...]]]


def explain(
    config: Config, host: str, port: int | None, proto: str, *, exe: str | None = None,
    user: str | None = None, interface: str | None = None, container: str | None = None,
    image: str | None = None, source: str | None = None,
    resolve: Resolver = socket.getaddrinfo,
) -> str:
    """`source`: a routed or forwarded flow's original source address (match.source);
    without `interface` it came in on an interface no client names."""
    engine = build_engine(config)
    sender = _process(exe, user)
    inside = (Container("", "", container, *_image(image))
              if container is not None or image is not None else None)
    origin = None if source is None else str(ipaddress.ip_address(source))
    process = sender if interface is None and inside is None and origin is None else (
        sender or ProcessInfo())._replace(interface=interface, container=inside,
                                          source=origin)
    addresses, names = _addresses(host, resolve)
    lines = [f"flow: {proto} to {host}{f':{port}' if port is not None else ' (any port)'}"]
    if names:
        lines.append(f"  {host} resolves to {', '.join(str(a) for a in addresses) or 'nothing'}"
                     " (evidence: dns)")
    if interface is not None:
        lines.append(f"  forwarded from interface {interface} (a container, VM or routed "
                     "network)")
    if origin is not None:
        lines.append(f"  forwarded from source address {origin}"
                     + ("" if interface is not None else " (no --interface: clients with "
                        "`interface` do not match)"))
    if inside is not None:
        lines.append(f"  in container name={container or '-'} image={image or '-'}")
    if sender is not None:
        lines.append(f"  from exe={sender.exe or '-'} user={sender.user or sender.uid or '-'}")
    elif interface is None and inside is None:
        lines.append("  from any process (no --exe/--user: only clients without a match "
                     "table can match)")
    judge = QueryJudge(engine.policies, config.names.queries, config.engine.default)
    lines.extend(_explain_query(engine, judge, host, process, config.engine.mode))
    for address in addresses:
        lines.extend(_explain_one(engine, address, port or 0, proto, names, process))
    return "\n".join(lines)


def _explain_query(engine: Engine, judge: QueryJudge, host: str, process: ProcessInfo | None,
                   mode: str) -> list[str]:
    """Whether the client may resolve the name (an address: its PTR name), and which rule
    decides: the policies `QueryJudge.walk` tries, in order."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = normalize_name(host)
        out = [f"query: {name or '.'} (any type: the name is judged)"]
    else:
        name = address.reverse_pointer
        out = [f"query: PTR {name} (the reverse name of {address})"]
    client = engine.client_for(process)
    decision = judge.decide(client, name)
    mode = (client.mode if client is not None else None) or mode
    if client is not None:
        out.append(f"  client: {client.name}")
        if decision.reason != "queries_any":
            for policy, found in judge.walk(client.policies, decision.name):
                out.append(f"  policy {policy}: " + (
                    "covers no such name" if found is None else _covering(found, decision.name)))
    else:
        out.append("  client: none matched")
    where = (f"client {client.name}'s queries" if client is not None and client.queries
             else "[names] queries")
    if decision.reason == "queries_any":
        out.append(f"  {where} = \"{Queries.ANY}\": every query passes, unjudged")
    elif decision.rule is None and client is not None:
        out.append("  no rule covers it: engine.default decides")
    outcome = ("it goes to the resolver" if decision.action == ALLOW
               else "answered REFUSED at once, nothing leaves the host" if mode != Mode.AUDIT
               else "audit mode: it goes to the resolver, recorded as refused")
    out.append(f"  resolving: {decision.action} ({decision.reason}, evidence "
               f"{decision.evidence}); {outcome}")
    return out


def _covering(found: QueryMatch, name: str) -> str:
    """"rule R [where] covers it (evidence pattern) -> action"."""
    rule = found.rule
    if found.evidence in (QueryEvidence.NAME, QueryEvidence.RESOLVE):
        patterns = rule.names if found.evidence == QueryEvidence.NAME else rule.resolve
        via = f"{found.evidence} " + next((p.text for p in patterns if p.matches(name)), "?")
    elif found.evidence == QueryEvidence.CIDR:
        via = "cidr: the address is inside its `to` networks"
    else:
        via = "any: a rule without `to` covers every name"
    return f"rule {rule.name} [{rule.location}] covers it ({via}) -> {rule.action}"


def _image(image: str | None) -> tuple[str | None, str | None]:
    """(reference, id) of an --image: "sha256:..." names the image by its id."""
    if image is not None and image.lower().startswith(IMAGE_ID_PREFIX):
        return None, image.lower()
    return image, None


def _explain_one(
    engine: Engine, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
    proto: str, names: tuple[tuple[str, str], ...], process: ProcessInfo | None,
) -> list[str]:
    packet = Packet(address.version, TCP if proto == "tcp" else UDP, "0.0.0.0", str(address),
                    0, port, int(address), 0, 0, 0)
    out = [f"destination {address}:"]
    client = engine.client_for(process)
    if client is None:
        out.append("  client: none matched")
    else:
        match = " ".join([*(f"{k}={v}" for k, v in client.match),
                          *(f"source={n}" for n in client.sources
                            if process is not None and process.source is not None
                            and ipaddress.ip_address(process.source) in ipaddress.ip_network(
                                str(n)))]) or "(everyone)"
        out.append(f"  client: {client.name} [{client.location}] matched on {match}")
        dest = engine.destination(packet, destination_names(names))
        if dest.resolver:
            out.append(f"  {address} is one of the host's DNS resolvers (@resolvers)")
        out.extend(_inside(engine, address, dest))
        for policy, found in engine.policies.walk(client.policies, dest):
            name = policy.policy.name
            if found is None:
                out.append(f"  policy {name}: no rule matches")
                continue
            via = f"{found.evidence} {found.name}" if found.name else found.evidence
            out.append(f"  policy {name}: rule {found.rule.name} [{found.rule.location}] "
                       f"matches ({via}) -> {found.rule.action}")
    if engine.assess(packet, process, names) is None:
        # The engine would hold the flow for the name the client presents (see pipeline).
        out.append("  first packet: pending; the name the client presents decides")
        for presented, _ in names:
            named = engine.decide_named(packet, presented, SNI, process,
                                        resolved=lambda _ip, _name: True)
            out.append(f"  if it presents {presented} (TLS SNI / HTTP Host): {named.action} "
                       f"({named.reason}, rule {named.rule or '-'})")
        unread = engine.decide_unreadable(packet, "no_name", process)
        out.append(f"  if its name cannot be read (TLS or HTTP without a readable name): "
                   f"{unread.action} (address rules only, rule {unread.rule or '-'})")
        out.append("  if it is clearly another protocol (SSH, binary): decided as below")
    decision = engine.decide(packet, process, names)
    out.append(f"  decision: {decision.action} ({decision.reason}, evidence {decision.evidence})"
               f"; mode {decision.mode}, the kernel is told {decision.verdict}")
    return out


def _inside(engine: Engine, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
            dest: Destination) -> list[str]:
    """Whether the address is inside, and whether [names] private keeps a name alone from
    it (the DNS rebinding guard)."""
    kind = engine.internal(dest.version, dest.address)
    if kind is PUBLIC:
        return []
    setting = f'[names] private = "{engine.private}"'
    if engine.kept_from(dest) is PUBLIC:
        return [f"  {address} is inside ({kind}); {setting} lets names reach it"]
    return [f"  {address} is inside ({kind}): {setting} keeps a name alone from it; only a "
            "rule with private = true, or one naming the address (CIDR), reaches it "
            "(name_private_address)"]


def _process(exe: str | None, user: str | None) -> ProcessInfo | None:
    if exe is None and user is None:
        return None
    uid = None
    name = user
    gids: tuple[int, ...] = ()
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            uid, name = entry.pw_uid, entry.pw_name
            # as after login: the primary group first, then the supplementary ones
            gids = tuple(dict.fromkeys([entry.pw_gid,
                                        *os.getgrouplist(entry.pw_name, entry.pw_gid)]))
        except KeyError:
            uid = int(user) if user.isdigit() else None
    groups = tuple(_group_name(gid) for gid in gids)
    return ProcessInfo(uid=uid, user=name, exe=exe, gids=gids,
                       groups=tuple(g for g in groups if g is not None))


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _addresses(
    host: str, resolve: Resolver
) -> tuple[list[ipaddress.IPv4Address | ipaddress.IPv6Address], tuple[tuple[str, str], ...]]:
    try:
        return [ipaddress.ip_address(host)], ()
    except ValueError:
        pass
    try:
        infos = resolve(host, None, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    seen = dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos)
    return list(seen), destination_names([(host, "dns")])
