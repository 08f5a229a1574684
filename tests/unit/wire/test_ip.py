"""IPv4/IPv6 + TCP/UDP header parsing against packets built with scapy."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from nfguard.wire.errors import WireError
from nfguard.wire.ip import ICMP as ICMP_PROTO
from nfguard.wire.ip import ICMPV6, Packet, parse_packet
from nfguard.wire.ip import TCP as TCP_NUM
from nfguard.wire.ip import UDP as UDP_NUM


def test_ipv4_tcp_syn() -> None:
    raw = bytes(IP(src="10.0.0.2", dst="198.51.100.7") / TCP(sport=40000, dport=443, flags="S"))
    p = parse_packet(raw)
    assert p == Packet(4, TCP_NUM, "10.0.0.2", "198.51.100.7", 40000, 443,
                       int(ipaddress.ip_address("198.51.100.7")), 40, 40, 0x02)
    assert p.transport == "tcp" and p.network_type == "ipv4"


def test_ipv4_tcp_with_options_and_payload_offset() -> None:
    tcp = TCP(sport=1, dport=2, flags="PA",
              options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8") / tcp / Raw(b"hello"))
    p = parse_packet(raw)
    assert p.payload_offset == 20 + TCP(bytes(tcp)).dataofs * 4
    assert p.payload_offset > 40
    assert raw[p.payload_offset:] == b"hello"
    assert p.tcp_flags == 0x18
    assert p.total_length == len(raw)


def test_ipv4_udp() -> None:
    raw = bytes(IP(src="192.168.1.2", dst="9.9.9.9") / UDP(sport=5353, dport=53) / Raw(b"q" * 12))
    p = parse_packet(raw)
    assert (p.version, p.proto, p.src, p.dst, p.sport, p.dport) == (
        4, UDP_NUM, "192.168.1.2", "9.9.9.9", 5353, 53)
    assert p.transport == "udp"
    assert p.payload_offset == 28 and raw[p.payload_offset:] == b"q" * 12
    assert p.tcp_flags == 0


def test_ipv4_icmp_has_no_ports() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    p = parse_packet(raw)
    assert (p.proto, p.sport, p.dport, p.transport, p.payload_offset) == (
        ICMP_PROTO, 0, 0, "icmp", 20)


def test_ipv4_options_ihl_more_than_5() -> None:
    ip = IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR(routers=["1.1.1.1"]),
                                                     IPOption_NOP()])
    raw = bytes(ip / TCP(sport=1234, dport=80, flags="S"))
    assert raw[0] & 0x0F > 5
    ihl = (raw[0] & 0x0F) * 4
    p = parse_packet(raw)
    assert (p.sport, p.dport, p.dst) == (1234, 80, "10.0.0.2")
    assert p.payload_offset == ihl + 20


def test_ipv4_total_length_vs_captured_length() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=999) / Raw(b"x" * 4000))
    # NFQUEUE cut the copy: the header still tells the full length.
    p = parse_packet(raw[:1000])
    assert p.total_length == len(raw) == 4028
    assert p.dport == 999
    # Trailing bytes after the datagram (padding) don't change the IP total length.
    assert parse_packet(raw + b"\0" * 6).total_length == 4028


def test_ipv4_first_fragment_parses_non_first_does_not() -> None:
    base = IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP(sport=1, dport=2) / Raw(b"a" * 64)
    assert parse_packet(bytes(base)).dport == 2
    later = bytes(IP(src="10.0.0.1", dst="10.0.0.2", frag=8, proto=17) / Raw(b"a" * 64))
    with pytest.raises(WireError, match="non-first fragment"):
        parse_packet(later)


def test_ipv6_tcp_syn() -> None:
    raw = bytes(IPv6(src="2001:db8::2", dst="2001:db8::1:7")
                / TCP(sport=50000, dport=8443, flags="S"))
    p = parse_packet(raw)
    assert p == Packet(6, TCP_NUM, "2001:db8::2", "2001:db8::1:7", 50000, 8443,
                       int(ipaddress.ip_address("2001:db8::1:7")), 60, 60, 0x02)
    assert p.network_type == "ipv6"


def test_ipv6_udp_and_icmpv6() -> None:
    p = parse_packet(bytes(IPv6(src="::1", dst="::2") / UDP(sport=3, dport=53) / Raw(b"abc")))
    assert (p.proto, p.sport, p.dport, p.payload_offset, p.total_length) == (
        UDP_NUM, 3, 53, 48, 51)
    p = parse_packet(bytes(IPv6(src="::1", dst="::2") / ICMPv6EchoRequest()))
    assert (p.proto, p.sport, p.dport, p.transport) == (ICMPV6, 0, 0, "ipv6-icmp")


def test_ipv6_extension_headers_are_walked() -> None:
    pkt = (IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop()
           / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / TCP(sport=7, dport=443, flags="S"))
    raw = bytes(pkt)
    p = parse_packet(raw)
    assert (p.proto, p.sport, p.dport, p.tcp_flags) == (TCP_NUM, 7, 443, 0x02)
    assert p.payload_offset == len(raw)
    assert p.total_length == len(raw)


def test_ipv6_long_destination_options() -> None:
    from scapy.layers.inet6 import PadN

    pkt = (IPv6(src="::1", dst="::2") / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 20)])
           / UDP(sport=1, dport=2))
    raw = bytes(pkt)
    assert raw[41] >= 2  # more than one 8-octet unit
    p = parse_packet(raw)
    assert (p.proto, p.dport, p.payload_offset) == (UDP_NUM, 2, len(raw))


def test_ipv6_first_fragment_parses_non_first_does_not() -> None:
    first = bytes(IPv6(src="::1", dst="::2") / IPv6ExtHdrFragment(offset=0, m=1, id=9)
                  / UDP(sport=5, dport=6) / Raw(b"z" * 32))
    p = parse_packet(first)
    assert (p.proto, p.sport, p.dport, p.payload_offset) == (UDP_NUM, 5, 6, 56)
    later = bytes(IPv6(src="::1", dst="::2") / IPv6ExtHdrFragment(offset=5, m=0, id=9, nh=17)
                  / Raw(b"z" * 32))
    with pytest.raises(WireError, match="non-first fragment"):
        parse_packet(later)


def test_ipv6_seven_extension_headers_are_fine() -> None:
    pkt = IPv6(src="::1", dst="::2")
    for _ in range(7):
        pkt = pkt / IPv6ExtHdrDestOpt()
    assert parse_packet(bytes(pkt / TCP(dport=9))).dport == 9


def test_ipv6_endless_extension_headers_are_refused() -> None:
    pkt = IPv6(src="::1", dst="::2")
    for _ in range(20):
        pkt = pkt / IPv6ExtHdrDestOpt()
    with pytest.raises(WireError, match="too many"):
        parse_packet(bytes(pkt / TCP(dport=9)))


def test_ipv6_eight_extension_headers_are_the_maximum() -> None:
    pkt = IPv6(src="::1", dst="::2")
    for _ in range(8):
        pkt = pkt / IPv6ExtHdrDestOpt()
    assert parse_packet(bytes(pkt / TCP(dport=9))).dport == 9


def _v4_tcp() -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="S"))


def _v6_ext_tcp() -> bytes:
    return bytes(IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop()
                 / IPv6ExtHdrFragment(offset=0, m=1) / TCP(sport=1, dport=2, flags="S"))


@pytest.mark.parametrize("cut", [1, 10, 19, 20, 25, 39])
def test_truncated_ipv4_raises(cut: int) -> None:
    with pytest.raises(WireError):
        parse_packet(_v4_tcp()[:cut])


@pytest.mark.parametrize("cut", [1, 39, 40, 41, 47, 48, 55, 56, 75])
def test_truncated_ipv6_raises(cut: int) -> None:
    raw = _v6_ext_tcp()
    assert len(raw) == 76
    with pytest.raises(WireError):
        parse_packet(raw[:cut])


def test_truncated_udp_raises() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    with pytest.raises(WireError, match="UDP"):
        parse_packet(raw[:27])


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "empty"),
    (b"\x00" * 40, "not an IP packet"),
    (b"\x55" + b"\x00" * 40, "not an IP packet"),
])
def test_not_ip(raw: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_packet(raw)


def test_bad_ipv4_header_fields() -> None:
    raw = bytearray(_v4_tcp())
    raw[0] = 0x44  # ihl 4 words: less than the fixed header
    with pytest.raises(WireError, match="header length"):
        parse_packet(bytes(raw))
    raw = bytearray(_v4_tcp())
    raw[0] = 0x4F  # ihl 60 bytes: more than was captured
    with pytest.raises(WireError, match="header length"):
        parse_packet(bytes(raw))
    raw = bytearray(_v4_tcp())
    struct.pack_into("!H", raw, 2, 19)  # total length below the header length
    with pytest.raises(WireError, match="total length"):
        parse_packet(bytes(raw))


def test_bad_tcp_data_offset() -> None:
    raw = bytearray(_v4_tcp())
    raw[20 + 12] = 0x40  # 4 words
    with pytest.raises(WireError, match="data offset"):
        parse_packet(bytes(raw))


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


# ---------------------------------------------------------------- fuzz


def _only_packet_or_wire_error(data: bytes) -> None:
    try:
        p = parse_packet(data)
    except WireError:
        return
    assert isinstance(p, Packet)
    assert p.version in (4, 6)
    assert 0 <= p.sport <= 65535 and 0 <= p.dport <= 65535
    assert 0 <= p.dst_int < (1 << (32 if p.version == 4 else 128))
    if p.proto in (TCP_NUM, UDP_NUM):
        assert p.payload_offset <= len(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _only_packet_or_wire_error(data)


@settings(max_examples=400, deadline=None)
@given(version=st.sampled_from([0x45, 0x46, 0x4F, 0x60]), rest=st.binary(max_size=120))
def test_fuzz_ip_looking_bytes(version: int, rest: bytes) -> None:
    _only_packet_or_wire_error(bytes([version]) + rest)


_SEEDS = [_v4_tcp(), _v6_ext_tcp(),
          bytes(IPv6(src="::1", dst="::2") / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2))]


@settings(max_examples=400, deadline=None)
@given(seed=st.sampled_from(_SEEDS),
       edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 90))
def test_fuzz_mutated_packets(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    _only_packet_or_wire_error(bytes(data[:cut]))
