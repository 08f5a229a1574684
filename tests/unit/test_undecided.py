"""Flows made while the ruleset was gone: the conntrack dump the kernel answered (recorded
by record_nft_events.py) read back, the host's own outbound flows picked, and the
requests that ask for them and cut them."""

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
from nfguard.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSGHDR, attributes
from nfguard.undecided import (
    CTA_FILTER,
    CTA_MARK,
    CTA_MARK_MASK,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    NLM_F_DUMP,
    Flow,
    dump_request,
    flow_of,
    kernel_pending,
    parse_dump,
    started_here,
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
    assert {f.source for f in started_here(flows, local, ())} == {V4, V6}
    known = {f.id for f in flows if f.source == V4}
    assert [f.source for f in started_here(flows, local, known)] == [V6]
    assert started_here(flows, {LOOPBACK}, ()) == [], "not from here: forwarded, or inbound"
    inbound = [f._replace(destination=V4, source=ipaddress.ip_address("198.51.100.7"))
               for f in flows]
    assert started_here(inbound, local, ()) == []


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


def test_kernel_pending_walks_the_conntrack_table_once_for_both_families(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dump walks the kernel's whole table, whatever matches: one, of every family."""
    sent: list[bytes] = []

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def send(self, data: bytes) -> None:
            sent.append(data)

        def recv(self, _size: int) -> bytes:
            return NLMSGHDR.pack(NLMSGHDR.size, NLMSG_DONE, 0, 1, 0)

    monkeypatch.setattr(undecided_module, "_socket", Socket)
    assert kernel_pending() == []
    (request,) = sent
    assert request[NLMSGHDR.size] == socket.AF_UNSPEC
