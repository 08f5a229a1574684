"""Attacks: DNS rebinding. A rule names a public service; its DNS answers bind the name to
an address inside (the cloud metadata address, a link-local one, this host's own network,
RFC 1918): the allowed name would be a door to the inside.

The lab's dnsmasq answers names the policy allows with such addresses, and the server
namespace holds them (on its loopback, routed from the client through the server), with
recorders behind them. Every way a name can allow a flow is tried: its DNS names
(a binary protocol), the HTTP Host, the TLS SNI and the SNI in a QUIC Initial. What is
refused must not even connect: the recorders see nothing at all.
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.e2e.lab import (
    ALLOWED_V4,
    SERVER_V4,
    SERVER_V6,
    SLOWDOWN,
    Lab,
    Recording,
    run,
)
from tests.e2e.policies import DENY_REST, allow, dns, everyone, policy

METADATA_V4, METADATA_V6 = "169.254.169.254", "fd00:ec2::254"
# RFC 1918 hosts: one public names are bound to, one a CIDR rule names, one whose own
# name's rule opts in (apart: a flow by DNS names carries every name of its address)
INSIDE_V4, CIDR_V4, OPTED_V4 = "10.9.9.9", "10.9.9.10", "10.9.9.11"
MARKER = b"REBIND-5e1f07"
WEB_PORTS = (80, 443, 5000)  # Host, SNI, and a binary protocol (decided by DNS names)
EVIDENCE = ("dns", "host", "sni", "quic")
PORT_OF = {"dns": 5000, "host": 80, "sni": 443, "quic": 443}

POLICY = everyone(
    policy("p", dns(),
           allow("web", "allowed.test", "*.allowed.test", ports=WEB_PORTS),
           allow("web-udp", "allowed.test", "*.allowed.test", ports=(443,), proto="udp"),
           allow("inside", "inside.test", ports=WEB_PORTS, private=True),
           allow("inside-udp", "inside.test", ports=(443,), proto="udp", private=True),
           allow("net", f"{CIDR_V4}/32", ports=WEB_PORTS)),
    DENY_REST, queries="any")

DNS_RECORDS = (
    f"--host-record=allowed.test,{METADATA_V4},{METADATA_V6}",
    f"--host-record=lan.allowed.test,{SERVER_V4},{SERVER_V6}",  # the client's own network
    f"--host-record=ten.allowed.test,{INSIDE_V4}",
    f"--host-record=mixed.allowed.test,{ALLOWED_V4}",
    f"--host-record=mixed.allowed.test,{INSIDE_V4}",  # one answer, a public and a private
    f"--host-record=cidr.allowed.test,{CIDR_V4}",
    f"--host-record=inside.test,{OPTED_V4}",
    f"--host-record=db.internal.test,{INSIDE_V4}",
    "--cname=cdn.allowed.test,db.internal.test",  # a public name CNAMEd inside
)

# Connects to ADDRESS:PORT and sends what a client of that kind sends first (naming NAME),
# then the marker; prints "sent", or "cut" when the connection failed.
SEND = r"""
import socket, ssl, sys, time
ip, port, how, name, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
marker = marker.encode()

def hello():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()

family = socket.AF_INET6 if ":" in ip else socket.AF_INET
try:
    if how == "quic":
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
        conn = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], server_name=name))
        conn.connect((ip, port), now=time.time())
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.connect((ip, port))
        for data, _addr in conn.datagrams_to_send(now=time.time()):
            s.send(data)
        time.sleep(0.5)
        s.send(marker)
    else:
        first = {"dns": b"\x00" + marker,
                 "host": b"GET / HTTP/1.1\r\nHost: " + name.encode() + b"\r\n\r\n",
                 "sni": hello()}[how]
        s = socket.create_connection((ip, port), timeout=3)
        s.sendall(first)
        time.sleep(0.3)
        s.sendall(marker)
        time.sleep(0.3)
    print("sent")
except OSError as exc:
    print("cut", exc)
"""


def send(lab: Lab, ip: str, how: str, name: str) -> str:
    return lab.exec(lab.client, sys.executable, "-c", SEND, ip, str(PORT_OF[how]), how, name,
                    MARKER.decode(), timeout=30 * SLOWDOWN).stdout.strip()


def host_inside(lab: Lab, *addresses: str) -> None:
    """The addresses on the server's loopback, routed to from the client through it."""
    for address in addresses:
        v6 = ":" in address
        run("ip", "-n", lab.server, "addr", "add", f"{address}/{128 if v6 else 32}", "dev",
            "lo", *(("nodad",) if v6 else ()))
        run("ip", "-n", lab.client, "route", "add", f"{address}/{128 if v6 else 32}", "via",
            SERVER_V6 if v6 else SERVER_V4)


def recorders(lab: Lab, ip: str) -> dict[str, Recording]:
    """A recorder for every kind of client, at `ip`."""
    return {"dns": lab.record_tcp(ip, 5000), "host": lab.record_tcp(ip, 80),
            "sni": lab.record_tcp(ip, 443), "quic": lab.record_udp(ip, 443)}


def settle() -> None:
    time.sleep(1.5 * SLOWDOWN)  # a recorder writes a connection's line as it closes


def start(lab: Lab, **names: object) -> None:
    lab.serve_dns(*DNS_RECORDS)
    lab.start_engine(lab.write_config(POLICY, names=names or None))


def refused_event(lab: Lab, ip: str, port: int) -> dict:
    return lab.wait_for_event(
        lambda e: e.get("destination", {}).get("ip") == ip
        and e.get("destination", {}).get("port") == port and e["event"]["action"] == "deny")


@pytest.mark.parametrize(("qtype", "metadata"), [("A", METADATA_V4), ("AAAA", METADATA_V6)],
                         ids=["ipv4", "ipv6"])
def test_an_allowed_name_never_reaches_the_metadata_address(
        lab: Lab, qtype: str, metadata: str) -> None:
    """The host's default ([names] private = "allow"): internal names work, but a name
    alone never reaches the cloud metadata address (nor loopback or link-local ones)."""
    host_inside(lab, metadata)
    recorded = recorders(lab, metadata)
    start(lab)
    assert lab.dig("allowed.test", qtype) == [metadata]
    for how in EVIDENCE:
        send(lab, metadata, how, "allowed.test")
    settle()
    for how, recording in recorded.items():
        assert recording.records() == [], f"{how}: the name reached {metadata}"
    for how in EVIDENCE:
        event = refused_event(lab, metadata, PORT_OF[how])
        assert event["event"]["reason"] == "name_private_address", event
        assert event["nfguard"]["private"] == "metadata"
        assert event["rule"]["name"] in ("p/web", "p/web-udp")


def test_private_addresses_by_name_work_on_a_host_and_are_counted(lab: Lab) -> None:
    """[names] private = "allow": an RFC 1918 address by an allowed name is reached as
    before; the binding is counted, and `status` says so."""
    host_inside(lab, INSIDE_V4)
    recorded = recorders(lab, INSIDE_V4)
    start(lab)
    assert lab.dig("ten.allowed.test") == [INSIDE_V4]
    assert send(lab, INSIDE_V4, "sni", "ten.allowed.test") == "sent"
    lab.wait_until(lambda: recorded["sni"].contains(MARKER))
    status = lab.nfguard("status", "--config", str(lab.workdir / "nfguard.toml")).stdout
    assert "DNS bound names to internal addresses 1 time (private 1); last " \
        "ten.allowed.test -> 10.9.9.9 (private)" in status, status


def test_with_private_deny_a_name_alone_never_leads_inside(lab: Lab) -> None:
    """The gateway's setting: this host's own network, RFC 1918 and ULA addresses are
    reached by name only with the rule's `private = true` or a CIDR rule naming them."""
    host_inside(lab, INSIDE_V4, CIDR_V4, OPTED_V4)
    lan, inside, cidr, opted = (recorders(lab, ip)
                                for ip in (SERVER_V4, INSIDE_V4, CIDR_V4, OPTED_V4))
    allowed = lab.record_tcp(ALLOWED_V4, 443)
    lan6 = lab.record_tcp(SERVER_V6, 443)
    start(lab, private="deny")
    for name in ("lan.allowed.test", "ten.allowed.test", "cdn.allowed.test",
                 "cidr.allowed.test", "inside.test"):
        assert lab.dig(name), name
    assert sorted(lab.dig("mixed.allowed.test")) == sorted([ALLOWED_V4, INSIDE_V4])
    assert lab.dig("lan.allowed.test", "AAAA") == [SERVER_V6]
    for how in EVIDENCE:
        send(lab, SERVER_V4, how, "lan.allowed.test")  # the client's connected network
        send(lab, INSIDE_V4, how, "ten.allowed.test")  # RFC 1918
    send(lab, SERVER_V6, "sni", "lan.allowed.test")  # ULA, and connected
    send(lab, INSIDE_V4, "dns", "cdn.allowed.test")  # CNAME chain: dns names both
    assert send(lab, ALLOWED_V4, "sni", "mixed.allowed.test") == "sent"  # its public address
    send(lab, INSIDE_V4, "host", "mixed.allowed.test")  # ... and its private one
    settle()
    for where in (lan, inside):
        for how, recording in where.items():
            assert recording.records() == [], f"{how}: {recording.path.name}"
    assert lan6.records() == []
    assert allowed.contains(MARKER)
    for ip, port in ((SERVER_V4, 443), (INSIDE_V4, 5000), (SERVER_V6, 443), (INSIDE_V4, 80)):
        event = refused_event(lab, ip, port)
        assert event["event"]["reason"] == "name_private_address", event
    # The opt-ins: a rule with `private = true`, and a CIDR rule naming the address.
    for how in EVIDENCE:
        assert send(lab, OPTED_V4, how, "inside.test") == "sent"
        assert send(lab, CIDR_V4, how, "cidr.allowed.test") == "sent"
    lab.wait_until(lambda: all(r.contains(MARKER) for r in (*opted.values(), *cidr.values())))
