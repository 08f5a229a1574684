"""A LAN client claims another's source address: clients by source (match.source) hold
for the address a packet says it comes from, so A, writing B's address into its own
datagrams (a raw socket: root on its own machine), would get B's policy, and one-way UDP
is enough to carry data out. A packet from a forwarded interface whose source is not
routed back through that interface is dropped before any policy sees it (strict reverse
path, IPv4 and IPv6, whatever the gateway's rp_filter sysctl says). Two clients on one
segment can still claim each other's addresses: the README's limits say so."""

from __future__ import annotations

import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from tests.e2e.adversary.raw import kernel_counter, send_raw
from tests.e2e.gateway_lab import LAN_A_V4, LAN_A_V6, LAN_B_V4, LAN_B_V6, GatewayLab
from tests.e2e.lab import SERVER_V4, SERVER_V6
from tests.e2e.test_gateway import start


@pytest.mark.parametrize(("layer", "server", "b", "a"), [
    (IP, SERVER_V4, LAN_B_V4, LAN_A_V4), (IPv6, SERVER_V6, LAN_B_V6, LAN_A_V6)],
    ids=["ipv4", "ipv6"])
def test_a_lan_client_cannot_borrow_anothers_source_address(
        gateway: GatewayLab, layer: type, server: str, b: str, a: str) -> None:
    start(gateway, nat=False, web=False)
    for key in ("all", "default", "lan1", "lan2"):  # a gateway without the kernel's check
        gateway.exec(gateway.gateway, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0",
                     check=True)
    recording = gateway.record_udp(server, 9999)
    spoofed, honest = f"spoofed-{uuid.uuid4().hex}", f"honest-{uuid.uuid4().hex}"
    assert send_raw(gateway, gateway.lan_a, [
        layer(src=b, dst=server) / UDP(sport=40000 + n, dport=9999) / f"{spoofed}-{n}"
        for n in range(3)], interface="eth0") == 3
    # B itself is allowed; A as itself is not
    send_raw(gateway, gateway.lan_b, [layer(src=b, dst=server) / UDP(sport=40100, dport=9999)
                                      / honest], interface="eth0")
    send_raw(gateway, gateway.lan_a, [layer(src=a, dst=server) / UDP(sport=40200, dport=9999)
                                      / f"{spoofed}-as-a"], interface="eth0")
    gateway.wait_until(lambda: recording.contains(honest.encode()))
    assert not recording.contains(spoofed.encode()), "A's datagram left under B's policy"
    assert kernel_counter(gateway, "spoofed_sources_dropped") >= 3
