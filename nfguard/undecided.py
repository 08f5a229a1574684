"""Flows that got out while nfguard's ruleset was gone, cut when it is back.

Between a flush and the restore no rule marks new flows, so a connection made in that
gap has no verdict in its ct mark, and the ruleset lets such established flows pass (as
it does the flows that predate nfguard). Left alone, it would stay open as a channel. At a
restore (enforce mode, fail closed) the kernel's conntrack table is asked for flows with
no verdict that this host started (original source one of its own addresses, not
loopback) or forwarded from a client behind engine.forward_from (see `Clients`), and that
do not end here; each gets DENY in its ct mark: its next packet is cut. Flows that were
there before nfguard started are remembered by conntrack id and left alone.

Conntrack over netlink (NETLINK_NETFILTER, NFNL_SUBSYS_CTNETLINK): a dump filtered by
mark in the kernel, then one update per flow naming it by its original tuple.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from fnmatch import fnmatchcase
from typing import NamedTuple, cast

from nfguard import marks
from nfguard.hostnets import Route, read_routes
from nfguard.netlink import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    Buffer,
    attribute,
    attributes,
)

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
NLM_F_DUMP = 0x300
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_PROTOINFO, CTA_TIMEOUT, CTA_MARK, CTA_ID, CTA_ZONE = 4, 7, 8, 12, 18
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
CTA_MARK_MASK, CTA_FILTER = 21, 25
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_F_IP_SRC = 1 << 0
NLA_F_NESTED = 1 << 15
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NFGENMSG = struct.Struct("!BBH")
_BE32 = struct.Struct("!I")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


class Flow(NamedTuple):
    """A conntrack entry as the dump gave it."""

    family: int
    id: int
    source: Address | None  # original direction
    destination: Address | None
    protocol: int
    name: bytes  # its CTA_TUPLE_ORIG (and CTA_ZONE) attributes, to name it in an update
    sport: int = 0  # original direction
    dport: int = 0
    timeout: int = 0  # seconds left before conntrack forgets it (reset by each packet)
    tcp_state: int = 0  # conntrack's TCP state (TCP_CONNTRACK_*), 0 for others
    answerer: Address | None = None  # the reply direction's source: who answers, after NAT

    def ends_here(self, local: Collection[Address]) -> bool:
        """Whether this host answers it (addressed to it, or redirected to it): the flow
        never leaves."""
        answerer = self.answerer or self.destination
        return answerer is None or answerer in local


def dump_request(family: int, source: Address | None = None, seq: int = 1,
                 mark: int = 0, mask: int = marks.VERDICT_MASK) -> bytes:
    """The conntrack entries of `family` (AF_UNSPEC: of every family) whose ct mark has
    no verdict (CTA_MARK under CTA_MARK_MASK) and, given a `source`, whose original source
    it is (CTA_FILTER, Linux 5.8+; an older kernel ignores it and sends all, which
    made_meanwhile sorts out): the kernel filters, so a server's many inbound flows are not
    read. IPv4 only: up to 6.18 at least, the kernel's IPv6 address filter matches every
    address but the one given."""
    filters = b""
    if source is not None:
        filters = (attribute(CTA_TUPLE_ORIG | NLA_F_NESTED, attribute(
                       CTA_TUPLE_IP | NLA_F_NESTED, attribute(CTA_IP_V4_SRC, source.packed)))
                   + attribute(CTA_FILTER | NLA_F_NESTED, attribute(
                       CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_F_IP_SRC))))
    body = (NFGENMSG.pack(family, 0, 0) + filters + attribute(CTA_MARK, _BE32.pack(mark))
            + attribute(CTA_MARK_MASK, _BE32.pack(mask)))
    return NLMSGHDR.pack(NLMSGHDR.size + len(body),
                         NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def verdict_request(flow: Flow, verdict: int, seq: int) -> bytes:
    """Set `verdict` (marks.DENY, marks.ALLOW) in the flow's ct mark, keeping the bits
    outside the verdict (acknowledged; no create flag: a flow gone meanwhile stays gone)."""
    body = (NFGENMSG.pack(flow.family, 0, 0) + flow.name
            + attribute(CTA_MARK, _BE32.pack(verdict))
            + attribute(CTA_MARK_MASK, _BE32.pack(marks.VERDICT_MASK)))
    return NLMSGHDR.pack(NLMSGHDR.size + len(body),
                         NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW,
                         NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def flow_of(key: Hashable) -> Flow:
    """The conntrack entry of a flow by the pipeline's key (proto, source, source port,
    destination, destination port): its original tuple, to name it in an update."""
    proto, src, sport, dst, dport = cast(tuple[int, str, int, str, int], key)
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v4 = source.version == 4
    ip = attribute(CTA_TUPLE_IP | NLA_F_NESTED,
                   attribute(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, source.packed)
                   + attribute(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, destination.packed))
    ports = attribute(CTA_TUPLE_PROTO | NLA_F_NESTED,
                      attribute(CTA_PROTO_NUM, bytes([proto]))
                      + attribute(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
                      + attribute(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return Flow(socket.AF_INET if v4 else socket.AF_INET6, 0, source, destination, proto,
                attribute(CTA_TUPLE_ORIG | NLA_F_NESTED, ip + ports))


def set_verdicts(verdicts: Iterable[tuple[Hashable, int]]) -> int:
    """Write each (flow key, verdict bits) into that flow's ct mark; how many were sent."""
    return _set(((flow_of(key), verdict) for key, verdict in verdicts))


def _set(verdicts: Iterable[tuple[Flow, int]]) -> int:
    sent = 0
    with _socket() as sock:
        for seq, (flow, verdict) in enumerate(verdicts, 1):
            sock.send(verdict_request(flow, verdict, seq))
            sent += 1
        for _ in range(sent):  # one acknowledgement (or ENOENT: it ended) each
            sock.recv(4096)
    return sent


def parse_dump(data: Buffer) -> tuple[list[Flow], bool]:
    """The flows in one datagram of the dump's answer, and whether it was the last."""
    flows, offset, done = [], 0, False
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            break
        end, body = offset + length, offset + NLMSGHDR.size
        offset = (end + 3) & ~3
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            done = True
        elif kind == NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW and \
                end - body >= NFGENMSG.size:
            flows.append(_flow(data, body, end))
    return flows, done


def _flow(data: Buffer, body: int, end: int) -> Flow:
    family = data[body]
    ident = protocol = sport = dport = timeout = state = 0
    source = destination = answerer = None
    name = b""
    for kind, start, stop in attributes(data, body + NFGENMSG.size, end):
        if kind == CTA_TUPLE_ORIG:
            name += bytes(data[start - 4:(stop + 3) & ~3])
            source, destination, protocol, sport, dport = _tuple(data, start, stop)
        elif kind == CTA_TUPLE_REPLY:
            answerer = _tuple(data, start, stop)[0]
        elif kind == CTA_ZONE:
            name += bytes(data[start - 4:(stop + 3) & ~3])
        elif kind == CTA_ID and stop - start == 4:
            (ident,) = _BE32.unpack_from(data, start)
        elif kind == CTA_TIMEOUT and stop - start == 4:
            (timeout,) = _BE32.unpack_from(data, start)
        elif kind == CTA_PROTOINFO:
            for field, at, until in attributes(data, start, stop):
                if field == CTA_PROTOINFO_TCP:
                    for item, value, last in attributes(data, at, until):
                        if item == CTA_PROTOINFO_TCP_STATE and last > value:
                            state = data[value]
    return Flow(family, ident, source, destination, protocol, name, sport, dport, timeout,
                state, answerer)


def _tuple(data: Buffer, start: int,
           end: int) -> tuple[Address | None, Address | None, int, int, int]:
    source = destination = None
    protocol = sport = dport = 0
    for kind, value, stop in attributes(data, start, end):
        if kind == CTA_TUPLE_IP:
            for field, at, until in attributes(data, value, stop):
                raw = bytes(data[at:until])
                if field in (CTA_IP_V4_SRC, CTA_IP_V6_SRC) and len(raw) in (4, 16):
                    source = ipaddress.ip_address(raw)
                elif field in (CTA_IP_V4_DST, CTA_IP_V6_DST) and len(raw) in (4, 16):
                    destination = ipaddress.ip_address(raw)
        elif kind == CTA_TUPLE_PROTO:
            for field, at, until in attributes(data, value, stop):
                if field == CTA_PROTO_NUM and until > at:
                    protocol = data[at]
                elif field == CTA_PROTO_SRC_PORT and until - at == 2:
                    sport = data[at] << 8 | data[at + 1]
                elif field == CTA_PROTO_DST_PORT and until - at == 2:
                    dport = data[at] << 8 | data[at + 1]
    return source, destination, protocol, sport, dport


class Clients:
    """Where the clients behind engine.forward_from are: the addresses whose route leaves
    through one of those interfaces (longest prefix first, then the lowest metric; the
    main table). The forward hook drops a packet from such an interface whose source is
    not routed back through it (strict reverse path), so a flow that could still send
    once the table is back has its source here, whatever a client wrote in it; an inbound
    flow from the uplink to a LAN host has not, and is not egress."""

    def __init__(self, routes: Iterable[Route], interfaces: Collection[str]) -> None:
        best: dict[tuple[int, int, int], Route] = {}
        for route in routes:
            net = route.network
            key = (net.version, net.mask, net.address)
            if key not in best or route.metric < best[key].metric:
                best[key] = route
        tables: dict[tuple[int, int], dict[int, bool]] = {}
        for (version, mask, address), route in best.items():
            tables.setdefault((version, mask), {})[address] = any(
                fnmatchcase(route.device, pattern) for pattern in interfaces)
        # Per family, the masks longest first, each with its networks.
        self._tables = {version: [(mask, table) for (v, mask), table
                                  in sorted(tables.items(), key=lambda kv: -kv[0][1])
                                  if v == version] for version in (4, 6)}

    def __bool__(self) -> bool:
        return any(forwarded for tables in self._tables.values()
                   for _mask, table in tables for forwarded in table.values())

    def __contains__(self, address: Address) -> bool:
        value = int(address)
        for mask, table in self._tables[address.version]:
            forwarded = table.get(value & mask)
            if forwarded is not None:
                return forwarded
        return False


NO_CLIENTS = Clients((), ())


# Tracked by conntrack, but the ruleset passes it by its shape (link_control), never by a
# verdict: a mark on its entry would change nothing, and the cut would only be noise.
_IGMP = 2


def made_meanwhile(flows: Iterable[Flow], local: Collection[Address], clients: Clients,
                   known: Collection[int]) -> list[Flow]:
    """The flows that leave this host (that it does not answer itself), started by it
    (from one of its addresses, not loopback) or by a client behind engine.forward_from,
    not among `known` (ids of flows that predate nfguard), and judged by a verdict (not
    IGMP membership reports)."""
    return [f for f in flows
            if f.source is not None and f.protocol != _IGMP and not f.ends_here(local)
            and f.id not in known
            and ((f.source in local and not f.source.is_loopback)
                 or (f.source not in local and f.source in clients))]


def local_addresses() -> set[Address]:
    import psutil  # type: ignore[import-untyped]

    found: set[Address] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found.add(ipaddress.ip_address(entry.address.split("%")[0]))
    return found


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)
    sock.settimeout(2.0)
    sock.bind((0, 0))
    return sock


def undecided(local: Iterable[Address], forwarded: bool) -> Iterator[Flow]:
    """The flows with no verdict in their ct mark that may be from `local` addresses, or,
    when some clients are `forwarded`, from anywhere: then one dump of every such flow
    (inbound ones too, which the per-address dumps spare a server), else one per IPv4
    address (not loopback) and one of all IPv6 flows."""
    if forwarded:
        requests = [dump_request(socket.AF_UNSPEC)]
    else:
        requests = [dump_request(socket.AF_INET, address) for address in local
                    if address.version == 4 and not address.is_loopback]
        if any(address.version == 6 and not address.is_loopback for address in local):
            requests.append(dump_request(socket.AF_INET6))
    with _socket() as sock:
        for request in requests:
            sock.send(request)
            done = False
            while not done:
                flows, done = parse_dump(sock.recv(1 << 17))
                yield from flows


ESTABLISHED_TIMEOUT = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"


def kernel_pending(clock: Callable[[], float] = time.time) -> list[tuple[Hashable, float]]:
    """The flows the ruleset made pending at their SYN that the engine has not given a
    verdict yet (ct mark marks.KERNEL_PENDING, filtered in the kernel), as (the pipeline's
    flow key, when the flow opened at the latest). That time is the flow's last packet,
    from what is left of conntrack's established timeout: for a flow that sent nothing
    since its handshake, its opening."""
    try:
        with open(ESTABLISHED_TIMEOUT) as file:
            established = int(file.read())
    except (OSError, ValueError):
        established = 0
    now = clock()
    found: list[tuple[Hashable, float]] = []
    with _socket() as sock:
        # Both families in one dump: each walks the kernel's whole conntrack hash table
        # (every namespace's, ~20 ms at 262,144 buckets) however few flows match.
        sock.send(dump_request(socket.AF_UNSPEC, mark=marks.KERNEL_PENDING, mask=marks.MASK))
        done = False
        while not done:
            flows, done = parse_dump(sock.recv(1 << 17))
            for flow in flows:
                if flow.source is None or flow.destination is None:
                    continue
                idle = (established - flow.timeout
                        if flow.tcp_state == TCP_CONNTRACK_ESTABLISHED
                        and 0 < flow.timeout <= established else 0)
                found.append(((flow.protocol, str(flow.source), flow.sport,
                               str(flow.destination), flow.dport), now - idle))
    return found


class Undecided:
    """Remembers the flows that predate nfguard; cuts the ones made since that have no
    verdict (those that got out while the ruleset was gone). `forward_from`: the
    interfaces whose clients' flows are egress too (engine.forward_from)."""

    def __init__(self, forward_from: Collection[str] = (),
                 routes: Callable[[], list[Route]] = read_routes) -> None:
        self.forward_from = forward_from
        self.routes = routes
        try:
            self.known = {f.id for f in self._undecided(())}
        except OSError as exc:
            log.warning("conntrack could not be read (%s): flows that predate nfguard "
                        "are cut too if the ruleset is ever restored", exc)
            self.known = set()

    def _undecided(self, known: Collection[int]) -> list[Flow]:
        local = local_addresses()
        clients = Clients(self.routes(), self.forward_from) if self.forward_from \
            else NO_CLIENTS
        return made_meanwhile(undecided(local, bool(clients)), local, clients, known)

    def cut(self) -> int:
        """DENY in the ct mark of each such flow; how many."""
        flows = self._undecided(self.known)
        if not flows:
            return 0
        _set((flow, marks.DENY) for flow in flows)
        for flow in flows:
            log.warning("cut a flow made while the ruleset was gone: %s %s -> %s",
                        _PROTOCOLS.get(flow.protocol, flow.protocol), flow.source,
                        flow.destination)
        return len(flows)
