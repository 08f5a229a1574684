"""Attacks: TCP Fast Open data in the SYN is read as the flow's first bytes.

The SYN's data starts at seq+1, the flow's first byte; it used to be fed one byte off, so
the hello was unreadable and the address's DNS names decided. With the client allowed to
send data without a cookie and the server accepting it, `curl --tcp-fastopen` puts the
whole ClientHello or request head in the SYN.
"""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from tests.e2e.adversary.test_unreadable_names import POLICY
from tests.e2e.lab import ALLOWED_V4, Lab, Recording
from tests.e2e.test_names import DNS_RECORDS


def syn_data(sniffed: Recording) -> list[bytes]:
    """The payloads of SYNs the server received."""
    out = []
    for frame in sniffed.payloads():
        packet = Ether(frame)
        if TCP in packet and packet[TCP].flags & 0x02 and bytes(packet[TCP].payload):
            out.append(bytes(packet[TCP].payload))
    return out


def fastopen(lab: Lab, scheme: str, name: str, port: int) -> None:
    lab.exec(lab.client, "curl", "-sS", "--tcp-fastopen", "--max-time", "3", "-k",
             "--resolve", f"{name}:{port}:{ALLOWED_V4}", f"{scheme}://{name}:{port}/",
             timeout=15)


@pytest.mark.parametrize(("scheme", "port"), [("https", 8443), ("http", 8080)])
def test_fastopen_data_is_read_for_its_name(named: Lab, scheme: str, port: int) -> None:
    named.exec(named.client, "sysctl", "-qw", "net.ipv4.tcp_fastopen=5", check=True)
    named.exec(named.server, "sysctl", "-qw", "net.ipv4.tcp_fastopen=1538", check=True)
    named.serve_dns(*DNS_RECORDS)
    named.start_engine(named.write_config(POLICY))
    assert named.dig("allowed.test") == [ALLOWED_V4]
    named.dig("denied.test")
    recording = named.record_tcp(ALLOWED_V4, port)
    sniffed = named.sniff()
    fastopen(named, scheme, "allowed.test", port)
    named.wait_until(lambda: recording.contains(b"allowed.test"))
    assert any(b"allowed.test" in data for data in syn_data(sniffed)), \
        "the allowed flow's name did not travel in its SYN: no Fast Open here"
    fastopen(named, scheme, "denied.test", port)
    event = named.wait_for_event(
        lambda e: e.get("destination", {}).get("domain") == "denied.test")
    assert event["event"]["action"] == "deny"  # read from the SYN: not the DNS name's
    assert event["nfguard"]["evidence"] != "dns"
    time.sleep(1)
    assert not recording.contains(b"denied.test"), "the denied name reached the server"
    assert not sniffed.contains(b"denied.test"), "the denied name was on the wire"
