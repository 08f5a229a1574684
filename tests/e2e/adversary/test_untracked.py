"""Packets the kernel cannot track (no conntrack entry: raw sockets, malformed headers)
never leave: not from the host, not from a container behind the bridge (Docker gives
CAP_NET_RAW). They used to reach the engine, be judged "deny", and pass anyway: the
verdict was kept through a ct mark they do not have."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.adversary.raw import kernel_counter, send_raw
from tests.e2e.lab import (
    CLIENT_V4,
    CLIENT_V6,
    CONTAINER_V4,
    CONTAINER_V6,
    OTHER_V4,
    SERVER_V4,
    SERVER_V6,
    Lab,
)
from tests.e2e.policies import ALLOWED_NET, everyone

scapy = pytest.importorskip("scapy.all")

POLICY = everyone(ALLOWED_NET)


def untrackable(v4: str, v6: str, marker: bytes) -> list[object]:
    """Packets from (v4, v6) that conntrack gives no entry, each carrying `marker`."""
    s = scapy
    return [
        s.IP(src=v4, dst=SERVER_V4) / s.TCP(sport=40001, dport=4444, flags="SF") / marker,
        s.IP(src=v4, dst=OTHER_V4) / s.TCP(sport=40002, dport=4444, flags="FPU") / marker,
        s.IP(src=v4, dst=SERVER_V4) / s.TCP(sport=40003, dport=4444, flags="R") / marker,
        s.IP(src=v4, dst=SERVER_V4) / s.UDP(sport=40004, dport=4444, len=300) / marker,
        s.IP(src=v4, dst=SERVER_V4) / s.ICMP(type=99) / marker,
        s.IPv6(src=v6, dst=SERVER_V6) / s.TCP(sport=40005, dport=4444, flags="SF") / marker,
        s.IPv6(src=v6, dst=SERVER_V6) / s.UDP(sport=40006, dport=4444, len=300) / marker,
        s.IPv6(src=v6, dst=SERVER_V6) / s.ICMPv6Unknown(type=200) / marker,
        # a destination options header whose length runs past the packet's end
        s.IPv6(src=v6, dst=SERVER_V6, nh=60) / s.Raw(b"\x11\xff" + marker),
    ]


def test_untracked_packets_from_the_host_never_reach_the_server(lab: Lab) -> None:
    marker = b"UNTRACKED-" + uuid.uuid4().hex.encode()
    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    packets = untrackable(CLIENT_V4, CLIENT_V6, marker)
    send_raw(lab, lab.client, packets)
    send_raw(lab, lab.client, packets)
    lab.exec(lab.client, "sleep", "1")
    assert not sniffed.contains(marker), "an untracked packet left the host"
    assert kernel_counter(lab, "untracked_dropped") >= len(packets)


def test_untracked_packets_from_a_container_never_reach_the_server(lab: Lab) -> None:
    marker = b"UNTRACKED-" + uuid.uuid4().hex.encode()
    lab.add_container()
    lab.start_engine(lab.write_config(POLICY, forward_from=["docker0"]))
    sniffed = lab.sniff()
    packets = untrackable(CONTAINER_V4, CONTAINER_V6, marker)
    send_raw(lab, lab.container, packets, interface="eth0")
    send_raw(lab, lab.container, packets, interface="eth0")
    lab.exec(lab.client, "sleep", "1")
    assert not sniffed.contains(marker), "an untracked packet of the container was forwarded"
    assert kernel_counter(lab, "untracked_dropped") >= len(packets)


def test_tracked_traffic_still_flows_and_the_counter_is_exported(lab: Lab) -> None:
    """The drop takes only what has no conntrack entry: an allowed flow passes, and the
    counter shows in the metrics."""
    from tests.e2e.lab import ALLOWED_V4

    lab.serve_http(8080)
    port = 9818
    lab.start_engine(lab.write_config(POLICY, metrics={"listen": f"127.0.0.1:{port}"}))
    assert lab.curl(ALLOWED_V4, 8080)[0] == 0
    send_raw(lab, lab.client, [scapy.IP(dst=SERVER_V4) / scapy.TCP(dport=1, flags="SF")])
    metrics = lab.exec(lab.client, "curl", "-sS", f"http://127.0.0.1:{port}/metrics").stdout
    assert "nfguard_untracked_dropped_total 1.0" in metrics, metrics
