"""Flows made while the ruleset was gone: the conntrack dump the kernel answered (recorded
by record_nft_events.py) read back, the host's own outbound flows and its forwarded
clients' picked, and the requests that ask for them and cut them."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfguard import marks
from nfguard import undecided as undecided_module
from nfguard.hostnets import Route
from nfguard.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSGHDR, attributes
from nfguard.policy.internal import network
from nfguard.undecided import (
    CTA_FILTER,
    CTA_MARK,
    CTA_MARK_MASK,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    NLM_F_DUMP,
    NO_CLIENTS,
    Clients,
    Flow,
    dump_request,
    flow_of,
    kernel_pending,
    made_meanwhile,
    parse_dump,
    undecided,
    verdict_request,
)

RECORDED = json.loads(gzip.decompress(
    (Path(__file__).with_name("nft_events.json.gz")).read_bytes()))["conntrack_dump"]
V4, V6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def recorded() -> tuple[list[Flow], list[bool]]:
    flows, ends = [], []
    for text in (text for texts in RECORDED.values() for text in texts):
        found, done = parse_dump(base64.b64decode(text))
        flows += found
        ends.append(done)
    return flows, ends


def test_the_kernels_dump_is_read() -> None:
    flows, ends = recorded()
    assert ends.count(True) == len(RECORDED), "NLMSG_DONE ends each dump"
    by_source = {f.source: f for f in flows}
    assert set(by_source) == {V4, V6, LOOPBACK}
    assert by_source[V4][:1] == (socket.AF_INET,)
    assert by_source[V4].destination == ipaddress.ip_address("192.0.2.2")
    assert by_source[V4].protocol == 17 and by_source[LOOPBACK].protocol == 6
    assert by_source[V6].family == socket.AF_INET6
    assert by_source[V6].destination == ipaddress.ip_address("2001:db8::2")
    assert len({f.id for f in flows}) == 3 and all(f.id for f in flows)
    for flow in flows:  # its name is the original tuple attribute, whole
        (length, kind) = struct.unpack_from("=HH", flow.name)
        assert kind & 0x3FFF == CTA_TUPLE_ORIG and length <= len(flow.name)


def test_only_this_hosts_own_outbound_flows_not_known_before() -> None:
    flows, _ = recorded()
    local = {V4, V6, LOOPBACK}
    assert {f.source for f in made_meanwhile(flows, local, NO_CLIENTS, ())} == {V4, V6}
    known = {f.id for f in flows if f.source == V4}
    assert [f.source for f in made_meanwhile(flows, local, NO_CLIENTS, known)] == [V6]
    assert made_meanwhile(flows, {LOOPBACK}, NO_CLIENTS, ()) == [], "not from here"
    inbound = [f._replace(destination=V4, answerer=V4,
                          source=ipaddress.ip_address("198.51.100.7")) for f in flows]
    assert made_meanwhile(inbound, local, NO_CLIENTS, ()) == []


def test_the_reply_direction_tells_who_answers() -> None:
    flows, _ = recorded()
    assert all(f.answerer == f.destination for f in flows), "no NAT in the recording"


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def route(cidr: str, device: str, metric: int = 0, onlink: bool = True) -> Route:
    return Route(network(cidr), device, metric, onlink)


# A gateway: the uplink eth0 (default route), LAN ports lan1 (a network behind a router
# on it too) and lan2, a container bridge, a WireGuard tunnel not in forward_from.
ROUTES = [
    route("0.0.0.0/0", "eth0", onlink=False),
    route("192.0.2.0/24", "eth0"),
    route("10.1.0.0/24", "lan1"),
    route("10.50.0.0/16", "lan1", onlink=False),
    route("10.50.7.0/24", "eth0", onlink=False),  # more specific: back out the uplink
    route("10.2.0.0/24", "lan2"),
    route("10.2.0.0/24", "eth0", metric=100),  # the same network, a worse metric
    route("172.17.0.0/16", "docker0"),
    route("10.8.0.0/24", "wg0"),
    route("::/0", "eth0", onlink=False),
    route("2001:db8:1::/64", "lan1"),
    route("2001:db8:7::/48", "eth0", onlink=False),
]
FORWARD_FROM = ("lan*", "docker0")


def test_with_forwarded_clients_one_dump_of_every_undecided_flow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Their addresses are not this host's, so no dump by source finds them: one dump of
    both families, by mark; without them, one per IPv4 address and one of IPv6."""
    sent = fake_socket(monkeypatch)
    local = [V4, V6, LOOPBACK]
    assert list(undecided(local, forwarded=True)) == []
    (request,) = sent
    assert request[NLMSGHDR.size] == socket.AF_UNSPEC
    assert set(message(request)[2]) == {CTA_MARK, CTA_MARK_MASK}
    sent.clear()
    assert list(undecided(local, forwarded=False)) == []
    assert [r[NLMSGHDR.size] for r in sent] == [socket.AF_INET, socket.AF_INET6]


@pytest.mark.parametrize(("source", "forwarded"), [
    ("10.1.0.5", True), ("10.50.3.3", True), ("10.50.7.1", False), ("10.2.0.9", True),
    ("172.17.0.2", True), ("10.8.0.2", False), ("192.0.2.9", False), ("198.51.100.1", False),
    ("2001:db8:1::5", True), ("2001:db8:7::5", False), ("2001:db8:2::5", False)])
def test_clients_are_where_the_route_back_leaves_through_forward_from(
        source: str, forwarded: bool) -> None:
    clients = Clients(ROUTES, FORWARD_FROM)
    assert (address(source) in clients) is forwarded
    assert address(source) not in Clients(ROUTES, ())


def test_no_route_through_forward_from_no_clients() -> None:
    assert Clients(ROUTES, FORWARD_FROM)
    assert not Clients(ROUTES, ("podman*",)), "no such interface: the cheaper dumps"
    assert not NO_CLIENTS and address("10.1.0.5") not in NO_CLIENTS


def forwarded(source: str, destination: str, answerer: str | None = None,
              ident: int = 1) -> Flow:
    return Flow(socket.AF_INET6 if ":" in source else socket.AF_INET, ident, address(source),
                address(destination), 6, b"", 40000, 443,
                answerer=address(answerer or destination))


def test_forwarded_clients_flows_made_meanwhile_are_picked() -> None:
    """A LAN client's flow out (masqueraded or not) is egress; one that predates nfguard,
    one to this host itself (or redirected to it), one from the uplink to a LAN host, and
    one from a client on an interface not in forward_from are not."""
    gateway = {address("192.0.2.1"), address("10.1.0.1"), address("2001:db8:1::1")}
    clients = Clients(ROUTES, FORWARD_FROM)
    out = forwarded("10.1.0.5", "198.51.100.7", ident=1)
    out_v6 = forwarded("2001:db8:1::5", "2001:db8:9::7", ident=2)
    behind_router = forwarded("10.50.3.3", "198.51.100.7", ident=3)
    container = forwarded("172.17.0.2", "198.51.100.7", ident=4)
    flows = [
        out, out_v6, behind_router, container,
        forwarded("10.1.0.6", "198.51.100.7", ident=5),  # known: predates nfguard
        forwarded("10.1.0.5", "10.1.0.1", ident=6),  # to the gateway itself
        forwarded("10.1.0.5", "198.51.100.8", "10.1.0.1", ident=7),  # redirected to it
        forwarded("198.51.100.7", "10.1.0.5", ident=8),  # inbound, routed to a LAN host
        forwarded("10.8.0.2", "198.51.100.7", ident=9),  # wg0 is not in forward_from
    ]
    assert made_meanwhile(flows, gateway, clients, {5}) == [out, out_v6, behind_router,
                                                            container]
    assert made_meanwhile(flows, gateway, NO_CLIENTS, ()) == [], "forward_from empty"


def test_a_local_flow_redirected_to_this_host_is_left_alone() -> None:
    """A transparent proxy's redirect: from here, to a remote address, answered here (over
    loopback, never judged): not a flow that got out."""
    here = address("192.0.2.1")
    flows = [forwarded("192.0.2.1", "198.51.100.7", "192.0.2.1"),
             forwarded("192.0.2.1", "198.51.100.7", ident=2)]
    assert made_meanwhile(flows, {here}, NO_CLIENTS, ()) == flows[1:]


def test_a_membership_report_made_meanwhile_is_not_cut() -> None:
    """IGMP passes by its shape, never by a verdict (the ruleset's link_control): seen in
    the lab, a bridge that came up in the gap reported its groups, and was "cut"."""
    here = address("192.0.2.1")
    report = forwarded("192.0.2.1", "224.0.0.22")._replace(protocol=2, sport=0, dport=0)
    flows = [report, forwarded("192.0.2.1", "198.51.100.7", ident=2)]
    assert made_meanwhile(flows, {here}, NO_CLIENTS, ()) == flows[1:]


def message(data: bytes) -> tuple[int, int, dict[int, bytes]]:
    length, kind, flags, _seq, _pid = NLMSGHDR.unpack_from(data)
    assert length == len(data)
    found = {k: data[a:b] for k, a, b in attributes(data, NLMSGHDR.size + 4, len(data))}
    return kind, flags, found


def test_the_dump_asks_the_kernel_for_flows_from_an_address_without_a_verdict() -> None:
    request = dump_request(socket.AF_INET, V4)
    kind, flags, found = message(request)
    assert kind == 1 << 8 | 1 and flags == NLM_F_REQUEST | NLM_F_DUMP
    assert request[NLMSGHDR.size] == socket.AF_INET
    assert found[CTA_MARK] == struct.pack("!I", 0)
    assert found[CTA_MARK_MASK] == struct.pack("!I", marks.VERDICT_MASK)
    # the original tuple's source (CTA_TUPLE_IP > CTA_IP_V4_SRC), nested, and the filter
    # that says only it is compared (CTA_FILTER_ORIG_FLAGS: the source)
    assert found[CTA_TUPLE_ORIG] == struct.pack("=HHHH", 12, 1 | 0x8000, 8, 1) + V4.packed
    assert found[CTA_FILTER] == struct.pack("=HHI", 8, 1, 1)
    request = dump_request(socket.AF_INET6)
    assert request[NLMSGHDR.size] == socket.AF_INET6
    assert set(message(request)[2]) == {CTA_MARK, CTA_MARK_MASK}, "by family and mark only"


def test_the_kernel_filtered_by_source() -> None:
    for source, texts in RECORDED.items():
        flows = [f for text in texts for f in parse_dump(base64.b64decode(text))[0]]
        assert flows, source
        if source == "ipv6":
            assert {f.source for f in flows} == {V6}, "every IPv6 flow"
        else:
            assert {f.source for f in flows} == {ipaddress.ip_address(source)}, source


def test_a_cut_sets_deny_under_the_verdict_mask_and_never_creates() -> None:
    flow = recorded()[0][0]
    request = verdict_request(flow, marks.DENY, 7)
    kind, flags, found = message(request)
    assert kind == 1 << 8 | 0 and flags == NLM_F_REQUEST | NLM_F_ACK  # no NLM_F_CREATE
    assert request[NLMSGHDR.size] == flow.family
    assert flow.name in request
    assert found[CTA_MARK] == struct.pack("!I", marks.DENY)
    assert found[CTA_MARK_MASK] == struct.pack("!I", marks.VERDICT_MASK)


def test_a_flow_is_named_by_its_key_as_the_kernel_names_it() -> None:
    """flow_of builds, from the pipeline's key, the very CTA_TUPLE_ORIG bytes the kernel's
    dump carries for that flow, so an update finds it."""
    checked = 0
    for flow in recorded()[0]:
        ports = {kind & 0x7FFF: flow.name[start:stop]
                 for _, start, stop in attributes(flow.name, 0, len(flow.name))
                 for kind, inner, end in attributes(flow.name, start, stop)
                 if kind & 0x7FFF == CTA_TUPLE_PROTO
                 for kind, start, stop in attributes(flow.name, inner, end)}
        if CTA_PROTO_SRC_PORT not in ports:
            continue
        key = (flow.protocol, str(flow.source), *struct.unpack("!H", ports[CTA_PROTO_SRC_PORT]),
               str(flow.destination), *struct.unpack("!H", ports[CTA_PROTO_DST_PORT]))
        made = flow_of(key)
        assert (made.name, made.family, made.source) == (flow.name, flow.family, flow.source)
        checked += 1
    assert checked >= 3


@given(st.binary(max_size=512))
def test_garbage_never_raises(data: bytes) -> None:
    parse_dump(data)


def test_the_dump_tells_ports_time_left_and_tcp_state() -> None:
    """What kernel_pending needs of a flow: its key's ports, and how long it has been idle
    (conntrack's time left, read against the state's full timeout)."""
    flows, _ends = recorded()
    (tcp,) = [f for f in flows if f.protocol == 6]
    assert tcp.sport and tcp.dport and tcp.timeout > 0 and tcp.tcp_state > 0
    (udp,) = [f for f in flows if f.source == V4]
    assert udp.sport and udp.dport and udp.tcp_state == 0


def test_kernel_pending_flows_are_asked_for_by_their_whole_mark() -> None:
    _kind, _flags, attrs = message(dump_request(socket.AF_INET, mark=marks.KERNEL_PENDING,
                                                mask=marks.MASK))
    assert attrs[CTA_MARK] == struct.pack("!I", marks.KERNEL_PENDING)
    assert attrs[CTA_MARK_MASK] == struct.pack("!I", marks.MASK)
    assert CTA_FILTER not in attrs


def fake_socket(monkeypatch: pytest.MonkeyPatch,
                dump: bytes = NLMSGHDR.pack(NLMSGHDR.size, NLMSG_DONE, 0, 1, 0)) -> list[bytes]:
    """Netlink sockets that keep what is sent and answer every dump with `dump` (an empty
    one unless given), anything else with nothing (an acknowledgement)."""
    sent: list[bytes] = []

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def send(self, data: bytes) -> None:
            sent.append(data)

        def recv(self, _size: int) -> bytes:
            flags = NLMSGHDR.unpack_from(sent[-1])[2]
            return dump if flags & NLM_F_DUMP == NLM_F_DUMP else b""

    monkeypatch.setattr(undecided_module, "_socket", Socket)
    return sent


def test_forwarded_flows_are_remembered_at_start_and_cut_if_made_since(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded flows as a gateway's clients' (their network routed out lan1): known
    at start, left alone; made since (forgotten here), each gets DENY, named as the dump
    named it."""
    sent = fake_socket(monkeypatch, b"".join(
        base64.b64decode(text) for texts in RECORDED.values() for text in texts))
    monkeypatch.setattr(undecided_module, "local_addresses", lambda: {LOOPBACK})
    routes = [route("192.0.2.0/24", "lan1"), route("2001:db8::/64", "eth1"),
              route("0.0.0.0/0", "eth0", onlink=False)]
    gateway = undecided_module.Undecided(("lan*",), routes=lambda: routes)
    (v4,) = [f for f in recorded()[0] if f.source == V4]
    assert gateway.known == {v4.id}, "the v6 client is behind eth1, not forward_from"
    sent.clear()
    assert gateway.cut() == 0
    assert [r[NLMSGHDR.size] for r in sent] == [socket.AF_UNSPEC], "no update"
    gateway.known.clear()
    assert gateway.cut() == 1
    kind, _flags, found = message(sent[-1])
    assert kind == 1 << 8 | 0 and found[CTA_MARK] == struct.pack("!I", marks.DENY)
    assert v4.name in sent[-1]


def test_kernel_pending_walks_the_conntrack_table_once_for_both_families(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dump walks the kernel's whole table, whatever matches: one, of every family."""
    sent = fake_socket(monkeypatch)
    assert kernel_pending() == []
    (request,) = sent
    assert request[NLMSGHDR.size] == socket.AF_UNSPEC
