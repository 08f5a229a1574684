"""Packets that are not a TCP or UDP flow, and packets that carry nfguard's own mark bits:
ICMP echo with a payload, protocols without ports (UDP-Lite, SCTP, GRE, an unassigned
number), fragments, IPv6 extension headers. Each is judged as a flow (by address, and
denied where no rule allows the address) or dropped: none of the attacker's bytes reaches
a destination its policy does not allow."""

from __future__ import annotations

import sys
import uuid

import pytest

from tests.e2e.adversary.raw import send_raw
from tests.e2e.lab import (
    CLIENT_V4,
    CLIENT_V6,
    CONTAINER_V4,
    OTHER_V4,
    OTHER_V6,
    Lab,
)
from tests.e2e.policies import ALLOWED_NET, everyone

scapy = pytest.importorskip("scapy.all")

POLICY = everyone(ALLOWED_NET)


def marker() -> bytes:
    return b"ODD-" + uuid.uuid4().hex.encode()


# Sends `marker` to `dst` on each socket kind an unprivileged process (or a default
# container's CAP_NET_RAW) can open without crafting headers: ICMP echo (ping socket or
# raw), UDP-Lite, SCTP, DCCP; prints which the kernel took.
SOCKETS = r"""
import socket, sys
dst, marker = sys.argv[1], sys.argv[2].encode()
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
six = family == socket.AF_INET6
echo = (b"\x80" if six else b"\x08") + b"\0\0\0\0\1\0\1" + marker
icmp = socket.IPPROTO_ICMPV6 if six else socket.IPPROTO_ICMP
kinds = [
    ("ping", socket.SOCK_DGRAM, icmp, echo, 0),
    ("icmp-raw", socket.SOCK_RAW, icmp, echo, 0),
    ("udplite", socket.SOCK_DGRAM, 136, marker, 4444),
    ("raw-253", socket.SOCK_RAW, 253, marker, 0),
    ("gre", socket.SOCK_RAW, 47, b"\0\0\x08\0" + marker, 0),
    ("esp", socket.SOCK_RAW, 50, b"\0\0\1\0\0\0\0\1" + marker, 0),
]
for name, kind, proto, data, port in kinds:
    try:
        s = socket.socket(family, kind, proto)
        s.settimeout(1)
        s.sendto(data, (dst, port))
        print(name, "sent")
    except OSError as exc:
        print(name, "refused", exc)
for name, kind, proto in (("sctp", socket.SOCK_STREAM, 132), ("dccp", 6, 33)):
    try:
        s = socket.socket(family, kind, proto)
        s.settimeout(1)
        s.connect((dst, 4444))
        s.send(marker)
        print(name, "sent")
    except OSError as exc:
        print(name, "refused", exc)
"""


@pytest.mark.parametrize("dst", [OTHER_V4, OTHER_V6])
def test_protocols_without_ports_and_echo_never_reach_a_denied_address(lab: Lab,
                                                                     dst: str) -> None:
    secret = marker()
    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    out = lab.exec(lab.client, sys.executable, "-c", SOCKETS, dst, secret.decode(),
                   timeout=60)
    lab.exec(lab.client, "sleep", "1")
    assert not sniffed.contains(secret), out.stdout + out.stderr


def fragments(src: str, dst: str, secret: bytes) -> list[object]:
    s = scapy
    data = bytes(s.UDP(sport=40010, dport=4444) / (secret * 8))
    first, rest = data[:16], data[16:]
    return [
        # the first fragment only the header, the data in later ones
        s.IP(src=src, dst=dst, id=7, proto=17, flags="MF") / first,
        s.IP(src=src, dst=dst, id=7, proto=17, frag=2) / rest,
        # a lone later fragment, never a first
        s.IP(src=src, dst=dst, id=8, proto=17, frag=10) / secret,
        # overlapping fragments: the second rewrites the first's ports
        s.IP(src=src, dst=dst, id=9, proto=17, flags="MF") / data[:24],
        s.IP(src=src, dst=dst, id=9, proto=17, frag=1) / (b"\0" * 8 + secret),
    ]


def v6_extensions(src: str, dst: str, secret: bytes) -> list[object]:
    s = scapy
    udp = s.UDP(sport=40020, dport=4444) / secret
    return [
        s.IPv6(src=src, dst=dst) / s.IPv6ExtHdrHopByHop() / udp,
        s.IPv6(src=src, dst=dst) / s.IPv6ExtHdrDestOpt() / udp,
        s.IPv6(src=src, dst=dst) / s.IPv6ExtHdrFragment(offset=0, m=0, id=5) / udp,
        s.IPv6(src=src, dst=dst) / s.IPv6ExtHdrRouting(type=0, addresses=[], segleft=0) / udp,
        s.IPv6(src=src, dst=dst) / s.IPv6ExtHdrFragment(offset=0, m=1, id=6)
        / bytes(s.UDP(sport=40021, dport=4444, len=8 + 2 * len(secret)))[:8],
        s.IPv6(src=src, dst=dst) / s.IPv6ExtHdrFragment(offset=1, m=0, id=6, nh=17)
        / (secret * 2)[: len(secret) * 2],
    ]


def test_fragments_and_extension_headers_never_reach_a_denied_address(lab: Lab) -> None:
    secret = marker()
    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    send_raw(lab, lab.client, fragments(CLIENT_V4, OTHER_V4, secret))
    send_raw(lab, lab.client, v6_extensions(CLIENT_V6, OTHER_V6, secret))
    lab.exec(lab.client, "sleep", "1")
    assert not sniffed.contains(secret)


def test_a_container_with_raw_sockets_reaches_no_denied_address(lab: Lab) -> None:
    secret = marker()
    lab.add_container()
    lab.start_engine(lab.write_config(POLICY, forward_from=["docker0"]))
    sniffed = lab.sniff()
    lab.exec(lab.container, sys.executable, "-c", SOCKETS, OTHER_V4, secret.decode(),
             timeout=60)
    send_raw(lab, lab.container, fragments(CONTAINER_V4, OTHER_V4, secret), interface="eth0")
    lab.exec(lab.client, "sleep", "1")
    assert not sniffed.contains(secret)


# A socket carrying nfguard's own mark bits (SO_MARK: CAP_NET_ADMIN, or CAP_NET_RAW since
# Linux 5.17, in the socket's network namespace).
MARKED = r"""
import socket, sys
dst, marker = sys.argv[1], sys.argv[2].encode()
for mark in (0x60000000, 0x10000000, 0x30000000, 0x50000000, 0x70000000):
    for sport in (53, 0):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if sport:
            s.bind(("", sport))
        try:
            s.sendto(marker + b"-%x" % mark, (dst, 4444))
        except OSError as exc:
            print(hex(mark), exc)
        s.close()
    t = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    t.settimeout(1)
    try:
        t.connect((dst, 4445))
        t.send(marker)
    except OSError as exc:
        print(hex(mark), exc)
"""


@pytest.mark.parametrize("dst", [OTHER_V4, OTHER_V6])
def test_a_socket_with_nfguards_mark_bits_reaches_no_denied_address(lab: Lab,
                                                                   dst: str) -> None:
    secret = marker()
    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    out = lab.exec(lab.client, sys.executable, "-c", MARKED, dst, secret.decode(), timeout=60)
    lab.exec(lab.client, "sleep", "1")
    assert not sniffed.contains(secret), out.stdout + out.stderr
