"""Attacks: a flow may wait for its name only where a name could allow it.

A SYN to an address nothing allows, on a port a name rule covers, used to be let out as
pending: the handshake completed and a server-first protocol had a working channel (the
server pushes, the client never sends a byte before the hello timeout).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.adversary.test_unreadable_names import MARKER, POLICY
from tests.e2e.lab import ALLOWED_V4, OTHER_V4, OTHER_V6, Lab
from tests.e2e.test_names import DNS_RECORDS

# Connects, reads what the server pushes, sends only a bare FIN.
SERVER_FIRST = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(s.recv(4096).decode(errors="replace") or "closed")
    s.close()
except OSError as exc:
    print("error", exc)
"""


@pytest.mark.parametrize(("ip", "qtype"), [(OTHER_V4, None), (OTHER_V4, "A"),
                                          (OTHER_V6, "AAAA")],
                         ids=["ipv4-no-name", "ipv4-denied-name", "ipv6-denied-name"])
def test_server_first_channel_to_an_address_nothing_allows(named: Lab, ip: str,
                                                           qtype: str | None) -> None:
    """With no DNS name, or only names no rule allows (denied.test), nothing could let
    the flow through: it is denied on its SYN, and the server never hears of it."""
    named.serve_dns(*DNS_RECORDS)
    named.start_engine(named.write_config(POLICY))
    if qtype is not None:
        assert named.dig("denied.test", qtype) == [ip]
    recording = named.record_tcp(ip, 8443, banner=b"run " + MARKER)
    sniffed = named.sniff()
    out = named.exec(named.client, sys.executable, "-c", SERVER_FIRST, ip, "8443",
                     timeout=20).stdout
    assert MARKER.decode() not in out, f"the server's banner came back: {out}"
    event = named.wait_for_event(lambda e: e.get("destination", {}).get("port") == 8443)
    assert event["event"]["action"] == "deny"
    time.sleep(1)
    assert recording.records() == [], "a connection reached the server"
    assert not any(b"\x20\xfb" in frame[34:38] or b"\x20\xfb" in frame[54:58]
                   for frame in sniffed.payloads()), "a segment to port 8443 reached the server"


# On a connection that waits for its name (to an address whose DNS name is allowed),
# once the handshake is done: a payload-less ACK with the flow's own numbers, carrying
# the marker in an IP option, sent on a raw IP socket (through netfilter; scapy's own
# send() would use AF_PACKET, which never meets it). Conntrack takes it for the flow's.
COVERT_ACK = r"""
import socket, sys, time
from scapy.all import IP, TCP, AsyncSniffer, IPOption
ip, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
sniffer = AsyncSniffer(iface="veth0", lfilter=lambda p: TCP in p and p[TCP].dport == port)
sniffer.start()
time.sleep(0.5)
s = socket.create_connection((ip, port), timeout=3)
print("connected")
time.sleep(0.3)
sniffer.stop()
mine = [p for p in sniffer.results if p[IP].dst == ip]
last = mine[-1][TCP]
option = IPOption(bytes([0x9e, 2 + len(marker)]) + marker)
covert = IP(src=mine[-1][IP].src, dst=ip, options=[option]) / TCP(
    sport=last.sport, dport=port, flags="A", seq=last.seq, ack=last.ack)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.sendto(bytes(covert), (ip, 0))
time.sleep(0.5)
s.close()
"""


def test_a_waiting_flows_bare_segment_carrying_ip_options_is_cut(named: Lab) -> None:
    named.serve_dns(*DNS_RECORDS)
    named.start_engine(named.write_config(POLICY))
    assert named.dig("allowed.test") == [ALLOWED_V4]
    named.record_tcp(ALLOWED_V4, 8443)
    sniffed = named.sniff()
    marker = b"OPTS-5e1d7a"
    done = named.exec(named.client, sys.executable, "-c", COVERT_ACK, ALLOWED_V4, "8443",
                      marker.decode(), timeout=30)
    assert "connected" in done.stdout, done.stderr
    time.sleep(0.5)
    assert not sniffed.contains(marker), "the IP option reached the server"
    event = named.wait_for_event(lambda e: e.get("destination", {}).get("port") == 8443)
    assert (event["event"]["action"], event["nfguard"]["unreadable"]) == ("deny", "not_bare")


# Opens a connection that waits for its name and never sends a byte; TCP keepalive probes
# (bare segments, one a second) are all it sends, for as long as it likes.
SILENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 20)
print("connected", flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_a_waiting_flow_that_sends_nothing_is_cut_at_hello_timeout(named: Lab) -> None:
    """Its bare segments pass in the kernel while it waits; their header fields are a
    channel, so the wait must end even when no packet comes to carry a verdict."""
    named.serve_dns(*DNS_RECORDS)
    named.start_engine(named.write_config(POLICY, names={"hello_timeout": 1}))
    assert named.dig("allowed.test") == [ALLOWED_V4]
    named.record_tcp(ALLOWED_V4, 8443)
    sniffed = named.sniff()
    client = named.spawn(named.client, sys.executable, "-c", SILENT, ALLOWED_V4, "8443", "8",
                         stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdout.readline().strip() == "connected"

    def to_server() -> int:
        return sum(1 for frame in sniffed.payloads()
                   if frame[12:14] == b"\x08\x00" and frame[36:38] == (8443).to_bytes(2, "big"))

    event = named.wait_for_event(lambda e: e.get("destination", {}).get("port") == 8443)
    assert (event["event"]["action"], event["nfguard"]["unreadable"]) == ("deny",
                                                                          "hello_timeout")
    time.sleep(1.5)  # a probe already on its way when the verdict was written
    seen = to_server()
    time.sleep(3)
    assert to_server() == seen, "keepalive probes still reach the server after the cut"
