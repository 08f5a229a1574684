"""Which addresses are inside (nfguard.policy.internal): every kind, the IPv6 forms that
carry an IPv4 address, and this host's networks."""

from __future__ import annotations

import ipaddress

import pytest

from nfguard.policy.internal import (
    NEVER_BY_NAME,
    PUBLIC,
    Internal,
    classify,
    classify_text,
    embedded_v4,
    network,
)


@pytest.mark.parametrize(("ip", "kind"), [
    ("169.254.169.254", Internal.METADATA),
    ("fd00:ec2::254", Internal.METADATA),
    ("fd20:ce::254", Internal.METADATA),
    ("100.100.100.200", Internal.METADATA),
    ("168.63.129.16", Internal.METADATA),
    ("127.0.0.1", Internal.LOOPBACK),
    ("127.255.0.9", Internal.LOOPBACK),
    ("0.0.0.0", Internal.LOOPBACK),  # Linux connects it to the host itself
    ("0.1.2.3", Internal.LOOPBACK),
    ("::1", Internal.LOOPBACK),
    ("::", Internal.LOOPBACK),
    ("169.254.0.1", Internal.LINK_LOCAL),
    ("169.254.170.2", Internal.LINK_LOCAL),  # ECS task metadata: link-local anyway
    ("fe80::1", Internal.LINK_LOCAL),
    ("febf::1", Internal.LINK_LOCAL),
    ("224.0.0.251", Internal.LINK_LOCAL),  # mDNS
    ("255.255.255.255", Internal.LINK_LOCAL),
    ("ff02::fb", Internal.LINK_LOCAL),
    ("ff01::1", Internal.LINK_LOCAL),
    ("10.0.0.1", Internal.PRIVATE),
    ("172.16.0.1", Internal.PRIVATE),
    ("172.31.255.255", Internal.PRIVATE),
    ("192.168.1.1", Internal.PRIVATE),
    ("fc00::1", Internal.PRIVATE),
    ("fdff:ffff::1", Internal.PRIVATE),
    ("fec0::1", Internal.PRIVATE),
    ("100.64.0.1", Internal.SHARED),
    ("100.127.255.254", Internal.SHARED),
    ("239.1.2.3", Internal.MULTICAST),
    ("ff05::2", Internal.MULTICAST),
    ("ff0e::1", Internal.MULTICAST),
    ("8.8.8.8", PUBLIC),
    ("172.32.0.1", PUBLIC),
    ("100.128.0.1", PUBLIC),
    ("192.0.2.1", PUBLIC),
    ("198.18.0.1", PUBLIC),  # benchmarking, not inside
    ("2606:4700::1111", PUBLIC),
    ("fe00::1", PUBLIC),
])
def test_kinds(ip: str, kind: Internal) -> None:
    assert classify_text(ip) is kind


@pytest.mark.parametrize(("ip", "kind"), [
    ("::ffff:10.0.0.1", Internal.PRIVATE),  # IPv4-mapped: the kernel sends it as IPv4
    ("::ffff:169.254.169.254", Internal.METADATA),
    ("::ffff:127.0.0.1", Internal.LOOPBACK),
    ("::ffff:8.8.8.8", PUBLIC),
    ("::10.0.0.1", Internal.PRIVATE),  # IPv4-compatible
    ("::a9fe:a9fe", Internal.METADATA),
    ("64:ff9b::10.0.0.1", Internal.PRIVATE),  # NAT64's well-known prefix
    ("64:ff9b::169.254.169.254", Internal.METADATA),
    ("64:ff9b::8.8.8.8", PUBLIC),
    ("64:ff9b:1:a9fe:a9:fe00::", Internal.METADATA),  # local-use NAT64, RFC 6052 /48 form
    ("64:ff9b:1:0a00:0:0100::", Internal.PRIVATE),  # 10.0.0.1 in it
    ("64:ff9b:1:0808:8:0800::", PUBLIC),  # 8.8.8.8 in it
    ("2002:a00:1::1", Internal.PRIVATE),  # 6to4 through 10.0.0.1
    ("2002:808:808::1", PUBLIC),
])
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_carry(ip: str, kind: Internal) -> None:
    assert classify_text(ip) is kind


def test_the_nat64_local_use_form_round_trips() -> None:
    for v4 in ("10.0.0.1", "169.254.169.254", "203.0.113.77"):
        packed = int(ipaddress.IPv4Address(v4))
        # prefix 64:ff9b:1::/48, v4 bits 0-15 at 48-63, u octet zero, v4 bits 16-31 at 72-87
        v6 = ((0x0064FF9B0001 << 80) | ((packed >> 16) << 64) | ((packed & 0xFFFF) << 40))
        assert embedded_v4(v6) == packed


def test_connected_networks_are_inside_after_the_fixed_ranges() -> None:
    connected = (network("203.0.113.0/24"), network("2001:db8:5::/64"),
                 network("169.254.0.0/16"))
    assert classify_text("203.0.113.9", connected) is Internal.CONNECTED
    assert classify_text("203.0.114.9", connected) is PUBLIC
    assert classify_text("2001:db8:5::77", connected) is Internal.CONNECTED
    assert classify_text("::ffff:203.0.113.9", connected) is Internal.CONNECTED
    assert classify_text("169.254.1.1", connected) is Internal.LINK_LOCAL
    assert classify_text("10.0.0.1", connected) is Internal.PRIVATE
    v6 = ipaddress.ip_address("2001:db8:5::1")
    assert classify(6, int(v6), connected) is Internal.CONNECTED
    assert classify(4, int(ipaddress.ip_address("203.0.113.9"))) is PUBLIC  # none given


def test_never_by_name_is_the_host_its_link_and_metadata() -> None:
    assert {Internal.METADATA, Internal.LOOPBACK, Internal.LINK_LOCAL} == NEVER_BY_NAME


def test_a_network_holds_only_its_own_family() -> None:
    net = network("10.0.0.0/8")
    assert (4, int(ipaddress.ip_address("10.9.9.9"))) in net
    assert (6, int(ipaddress.ip_address("10.9.9.9"))) not in net
    assert "10.9.9.9" not in net
