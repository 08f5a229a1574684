"""This host's networks (nfguard.hostnets): the kernel's routes and addresses parsed, too
wide ones left out, and the reader followed on a timer."""

from __future__ import annotations

import ipaddress
import sys

from nfguard.hostnets import (
    HostNetworks,
    Route,
    address_networks,
    parse_routes_v4,
    parse_routes_v6,
    routes_v4,
    routes_v6,
)
from nfguard.policy.internal import PUBLIC, Internal, network


def _word(ip: str) -> str:
    """An IPv4 address as /proc/net/route prints it: the network-order word, native."""
    return f"{int.from_bytes(ipaddress.IPv4Address(ip).packed, sys.byteorder):08X}"


def _route(iface: str, dest: str, gateway: str, flags: int, mask: str, metric: int = 0) -> str:
    return (f"{iface}\t{_word(dest)}\t{_word(gateway)}\t{flags:04X}\t0\t0\t{metric}"
            f"\t{_word(mask)}\t0\t0\t0")


ROUTES_V4 = "\n".join([
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
    _route("eth0", "0.0.0.0", "192.0.2.1", 0x0003, "0.0.0.0"),  # default via a gateway
    _route("eth0", "192.0.2.0", "0.0.0.0", 0x0001, "255.255.255.0"),  # on-link
    _route("wg0", "10.8.0.0", "0.0.0.0", 0x0001, "255.255.0.0", 7),  # a VPN's network
    _route("eth0", "198.51.100.0", "192.0.2.1", 0x0003, "255.255.255.0"),  # via a gateway
    _route("lo", "203.0.113.0", "0.0.0.0", 0x0201, "255.255.255.0"),  # unreachable
    _route("tun0", "0.0.0.0", "0.0.0.0", 0x0001, "128.0.0.0"),  # a VPN's half of it all
    _route("ppp0", "0.0.0.0", "0.0.0.0", 0x0001, "0.0.0.0"),  # an on-link default
    "garbage line",
]) + "\n"

ROUTES_V6 = """\
20010db8000500000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000500000000000000000001 00000400 00000002 00000000 00000003     eth0
20010db8009900000000000000000000 40 00000000000000000000000000000000 00 20010db8000500000000000000000001 00000400 00000002 00000000 00000003     eth0
20010db8000500000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""  # noqa: E501


def _texts(networks: list) -> list[str]:
    out = []
    for net in networks:
        kind = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        out.append(f"{kind(net.address)}/{bin(net.mask).count('1')}")
    return out


def test_on_link_ipv4_routes_without_the_internet() -> None:
    assert _texts(parse_routes_v4(ROUTES_V4)) == ["192.0.2.0/24", "10.8.0.0/16"]


def test_on_link_ipv6_routes() -> None:
    assert _texts(parse_routes_v6(ROUTES_V6)) == ["2001:db8:5::/64", "fe80::/64",
                                                  "2001:db8:5::2/128"]


def test_every_route_with_its_interface_and_metric() -> None:
    """What tells a forwarded client's address (nfguard.undecided.Clients): gateway routes
    too, reject ones not."""
    found = [(_texts([r.network])[0], r.device, r.metric, r.onlink)
             for r in routes_v4(ROUTES_V4)]
    assert found == [("0.0.0.0/0", "eth0", 0, False), ("192.0.2.0/24", "eth0", 0, True),
                     ("10.8.0.0/16", "wg0", 7, True), ("198.51.100.0/24", "eth0", 0, False),
                     ("0.0.0.0/1", "tun0", 0, True), ("0.0.0.0/0", "ppp0", 0, True)]
    v6 = routes_v6(ROUTES_V6)
    assert all(isinstance(r, Route) for r in v6)
    assert [(_texts([r.network])[0], r.device, r.metric, r.onlink) for r in v6] == [
        ("2001:db8:5::/64", "eth0", 256, True), ("fe80::/64", "eth0", 256, True),
        ("::/0", "eth0", 1024, False), ("2001:db8:99::/64", "eth0", 1024, False),
        ("2001:db8:5::2/128", "eth0", 0, True)]


def test_address_networks_from_getifaddrs() -> None:
    found = address_networks([
        ("192.0.2.2", "255.255.255.0", None),
        ("fd00::2", "ffff:ffff:ffff:ffff::", None),
        ("fe80::fc:ff:fe00:1%eth0", "ffff:ffff:ffff:ffff::", None),
        ("10.8.0.6", "255.255.255.255", "10.8.0.5"),  # point-to-point: its peer too
        ("203.0.113.7", None, None),  # no netmask: nothing to say
        ("bogus", "255.0.0.0", None),
        ("100.100.0.1", "0.0.0.0", None),  # a /0 is not a network of the host's
    ])
    assert _texts(found) == ["192.0.2.0/24", "fd00::/64", "fe80::/64", "10.8.0.6/32",
                             "10.8.0.5/32"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_networks_are_read_on_a_timer_and_kinds_follow_them() -> None:
    clock = Clock()
    current = [(network("203.0.113.0/24"),)]
    reads = []

    def read() -> tuple:
        reads.append(clock.now)
        return current[0]

    nets = HostNetworks(read, interval=1.0, clock=clock)
    assert nets.kind_of("203.0.113.5") is Internal.CONNECTED
    assert nets.kind_of("10.0.0.1") is Internal.PRIVATE
    assert nets.describe() == "203.0.113.0/24"
    current[0] = (network("198.51.100.0/24"),)
    clock.now += 0.5
    assert not nets.tend() and len(reads) == 1  # not yet
    assert nets.kind_of("203.0.113.5") is Internal.CONNECTED
    clock.now += 0.6
    assert nets.tend() and len(reads) == 2
    assert nets.kind_of("203.0.113.5") is PUBLIC  # what was remembered is forgotten
    assert nets.kind_of("198.51.100.9") is Internal.CONNECTED
    clock.now += 1.1
    assert not nets.tend() and len(reads) == 3  # read, unchanged


def test_a_failed_read_keeps_the_last_networks() -> None:
    clock = Clock()
    answers: list = [(network("203.0.113.0/24"),), OSError("gone")]

    def read() -> tuple:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    nets = HostNetworks(read, clock=clock)
    clock.now += 5
    assert not nets.tend()
    assert nets.kind_of("203.0.113.1") is Internal.CONNECTED


def test_this_host_is_read() -> None:
    nets = HostNetworks()
    assert nets.kind_of("127.0.0.1") is Internal.LOOPBACK
    assert all(n.version in (4, 6) for n in nets.networks)
