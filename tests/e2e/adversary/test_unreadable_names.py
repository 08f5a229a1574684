"""Attacks: a name nfguard cannot read must never borrow the address's DNS names.

Every case goes to ALLOWED_V4, whose DNS name (allowed.test) the policy allows, while the
client presents denied.test in a form the reader cannot (or could not) read. The server
side records what arrives: the attacker's marker must never be among it.
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.e2e.lab import ALLOWED_V4, Lab
from tests.e2e.policies import names_policy
from tests.e2e.test_names import DNS_RECORDS

# denied.test resolves: the flow's name is what is judged here.
POLICY = names_policy(80, 443, 8080, 8443, queries="any")

MARKER = b"EXFIL-7f3c9a"

# Sends one of the crafted openings, then the marker, over a plain TCP socket (every
# send its own segment), and prints what the server sent back.
ATTACKER = r"""
import socket, ssl, struct, sys, time
ip, port, mode, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()

def hello(name):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    out = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()

def h2c(name):
    block = b"\x82\x86\x84\x01" + bytes([len(name)]) + name.encode()
    settings = struct.pack("!I", 0)[1:] + b"\x04\x00" + struct.pack("!I", 0)
    headers = len(block).to_bytes(3, "big") + b"\x01\x05" + struct.pack("!I", 1) + block
    return [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + headers]

def parts():
    if mode == "empty-record":
        return [b"\x16\x03\x01\x00\x00" + hello("denied.test")]
    if mode == "one-byte-segments":
        return [bytes([b]) for b in hello("denied.test")]
    if mode == "urgent":
        return ["urgent"]
    if mode == "method":
        return [b"FROB / HTTP/1.1\r\nHost: denied.test\r\n\r\n"]
    if mode == "leading-crlf":
        return [b"\r\nGET / HTTP/1.1\r\nHost: denied.test\r\n\r\n"]
    if mode == "h2c":
        return h2c("denied.test")
    raise SystemExit(f"unknown mode {mode}")

s = socket.create_connection((ip, port), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    for part in parts():
        if part == "urgent":
            data = hello("denied.test")
            s.send(data[:60])
            time.sleep(0.05)
            s.send(b"\xff", socket.MSG_OOB)  # the server drops it from the stream
            time.sleep(0.05)
            s.send(data[60:])
        else:
            s.send(part)
        time.sleep(0.005 if len(part) == 1 else 0.1)
    time.sleep(0.3)
    s.send(marker)
    time.sleep(0.3)
    s.send(marker)
    print(s.recv(4096))
except OSError as exc:
    print("error", exc)
"""


def start(lab: Lab) -> None:
    lab.serve_dns(*DNS_RECORDS)
    lab.start_engine(lab.write_config(POLICY))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    assert lab.dig("denied.test")  # the engine knows denied.test is elsewhere


def attack(lab: Lab, port: int, mode: str) -> None:
    recording = lab.record_tcp(ALLOWED_V4, port)
    sniffed = lab.sniff()
    lab.exec(lab.client, sys.executable, "-c", ATTACKER, ALLOWED_V4, str(port), mode,
             MARKER.decode(), timeout=30)
    time.sleep(0.5)
    assert not recording.contains(MARKER), f"{mode}: the marker reached the server"
    assert not sniffed.contains(MARKER), f"{mode}: the marker was on the wire"
    assert not recording.contains(b"denied.test"), f"{mode}: the denied name reached it"
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == port)
    assert event["event"]["action"] == "deny", event


@pytest.mark.parametrize("mode", ["empty-record", "urgent", "one-byte-segments"])
def test_unreadable_hello_for_a_denied_name_never_borrows_dns_names(named: Lab,
                                                                   mode: str) -> None:
    start(named)
    attack(named, 8443, mode)


@pytest.mark.parametrize("mode", ["method", "leading-crlf", "h2c"])
def test_http_head_for_a_denied_host_never_borrows_dns_names(named: Lab, mode: str) -> None:
    start(named)
    attack(named, 8080, mode)


# One UDP datagram to udp/443 that a QUIC reader cannot open, carrying the marker.
QUIC_ATTACKER = r"""
import os, socket, sys
ip, mode, marker = sys.argv[1], sys.argv[2], sys.argv[3].encode()
if mode == "unknown-version":
    dcid = os.urandom(8)
    first = b"\xc0" + b"\x1a\x2a\x3a\x4a" + bytes([len(dcid)]) + dcid + b"\x00"
else:  # a short header
    first = b"\x40" + os.urandom(8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((ip, 443))
s.send(first + marker + b"\x00" * 1100)
s.send(b"\x40" + marker)
"""


@pytest.mark.parametrize("mode", ["unknown-version", "short-header"])
def test_quic_datagram_that_cannot_be_read_never_borrows_dns_names(named: Lab,
                                                                  mode: str) -> None:
    start(named)
    recording = named.record_udp(ALLOWED_V4, 443)
    named.exec(named.client, sys.executable, "-c", QUIC_ATTACKER, ALLOWED_V4, mode,
               MARKER.decode())
    event = named.wait_for_event(
        lambda e: e.get("destination", {}).get("port") == 443
        and e.get("network", {}).get("transport") == "udp", timeout=8)
    time.sleep(0.5)
    assert not recording.contains(MARKER)
    assert event["event"]["action"] == "deny"
