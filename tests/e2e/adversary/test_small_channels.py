"""Small channels outside any flow: neighbour discovery, MLD and IGMP (not tracked by
conntrack, so they never meet the flow path) leave only in their protocol's shape, and a
DNS answer forged over loopback teaches the engine nothing."""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid

import pytest

from tests.e2e.adversary.raw import kernel_counter, send_raw
from tests.e2e.lab import (
    ALLOWED_V6,
    CLIENT_V4,
    CLIENT_V6,
    OTHER_V4,
    OTHER_V6,
    SERVER_V4,
    SERVER_V6,
    Lab,
)
from tests.e2e.policies import allow, dns_and

scapy = pytest.importorskip("scapy.all")

POLICY = dns_and(allow("web", "allowed.test", "fd00:18:1::1", ports=(80,)))
LINK_LOCAL = "fe80::1"


def marker() -> bytes:
    return uuid.uuid4().bytes  # 16 bytes: as much as an IPv6 address carries


def address(data: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, data)


def test_neighbour_discovery_carries_nothing_beyond_the_protocol(lab: Lab) -> None:
    s = scapy
    lab.serve_http(80)
    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    markers = [marker() for _ in range(6)]
    lladdr = s.ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
    solicited = "ff02::1:ff00:2"
    send_raw(lab, lab.client, [
        # a unicast solicitation to a global address, with payload, and with data as target
        s.IPv6(src=CLIENT_V6, dst=SERVER_V6, hlim=255) / s.ICMPv6ND_NS(tgt=SERVER_V6)
        / lladdr / markers[0],
        s.IPv6(src=CLIENT_V6, dst=SERVER_V6, hlim=255) / s.ICMPv6ND_NS(tgt=address(markers[1])),
        # the solicited-node address, but with payload beyond the options, or hop limit 64
        s.IPv6(src=CLIENT_V6, dst=solicited, hlim=255) / s.ICMPv6ND_NS(tgt=SERVER_V6)
        / lladdr / markers[2],
        s.IPv6(src=CLIENT_V6, dst=solicited, hlim=64) / s.ICMPv6ND_NS(tgt=address(markers[3])),
        # an advertisement with payload; a router solicitation with payload
        s.IPv6(src=CLIENT_V6, dst=SERVER_V6, hlim=255) / s.ICMPv6ND_NA(tgt=CLIENT_V6)
        / markers[4],
        s.IPv6(src=LINK_LOCAL, dst="ff02::2", hlim=255) / s.ICMPv6ND_RS() / markers[5],
    ])
    time.sleep(1)
    leaked = [m.hex() for m in markers if sniffed.contains(m)]
    assert not leaked, f"neighbour discovery carried {leaked}"
    assert kernel_counter(lab, "link_control_dropped") >= len(markers)
    # The kernel's own neighbour discovery still works: resolve the server afresh.
    lab.exec(lab.client, "ip", "-6", "neigh", "flush", "all", check=True)
    assert lab.curl(ALLOWED_V6, 80)[0] == 0


def mld_report(group: str, dst: str, hlim: int, src: str = LINK_LOCAL) -> object:
    s = scapy
    return (s.IPv6(src=src, dst=dst, hlim=hlim)
            / s.IPv6ExtHdrHopByHop(options=[s.RouterAlert()])
            / s.ICMPv6MLReport2(records=[s.ICMPv6MLDMultAddrRec(dst=group)]))


def igmp_report(data: bytes, ttl: int, dst: str = "224.0.0.22") -> object:
    """An IGMPv3 report whose record's group, and what follows it, are `data`."""
    s = scapy
    body = bytes([0x22, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]) + data
    return s.IP(src=CLIENT_V4, dst=dst, ttl=ttl, proto=2,
                options=[s.IPOption_Router_Alert()]) / body


def test_membership_reports_stay_on_the_link_and_are_rate_limited(lab: Lab) -> None:
    lab.exec(lab.client, "ip", "route", "add", "224.0.0.0/4", "dev", "veth0", check=True)
    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    off_link = [marker() for _ in range(4)]
    send_raw(lab, lab.client, [
        mld_report(address(off_link[0]), SERVER_V6, 1),  # unicast
        mld_report(address(off_link[1]), "ff02::16", 255),  # would be routed
        mld_report(address(off_link[2]), "ff02::16", 1, src=CLIENT_V6),  # not link-local
        igmp_report(off_link[3], ttl=2),
    ])
    time.sleep(1)
    assert not [m.hex() for m in off_link if sniffed.contains(m)]
    # In shape, each family's reports pass at 10/s after a burst of 50.
    flood6 = [marker() for _ in range(200)]
    flood4 = [marker() for _ in range(200)]
    start = time.monotonic()
    send_raw(lab, lab.client, [mld_report(address(m), "ff02::16", 1) for m in flood6])
    send_raw(lab, lab.client, [igmp_report(m, ttl=1) for m in flood4])
    elapsed = time.monotonic() - start
    time.sleep(1)
    allowed = 50 + 10 * (elapsed + 1)
    for flood in (flood6, flood4):
        arrived = sum(sniffed.contains(m) for m in flood)
        assert 1 <= arrived <= allowed, (arrived, allowed)
    assert kernel_counter(lab, "link_control_dropped") >= 200


# Sends one DNS query for allowed.test from a UDP socket of its own; prints the port and
# the query's id, and keeps the socket until stdin closes.
QUERY = """
import socket, struct, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
question = b"".join(bytes([len(p)]) + p.encode() for p in "allowed.test".split(".")) + b"\\0"
s.sendto(struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + question + b"\\0\\1\\0\\1",
         (sys.argv[2], 53))
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(("client", "resolver", "other"), [
    (CLIENT_V4, SERVER_V4, OTHER_V4), (CLIENT_V6, SERVER_V6, OTHER_V6)])
def test_an_answer_forged_over_loopback_teaches_nothing(
        lab: Lab, client: str, resolver: str, other: str) -> None:
    """A raw socket sends a "reply" from the resolver's address to a local port of this
    host's: it arrives on lo, matches the query's conntrack entry as its reply, and was
    learnt as if the resolver had said it."""
    s = scapy
    lab.serve_http(80)
    lab.record_udp(resolver, 53)  # the resolver says nothing
    config = lab.write_config(POLICY)
    lab.start_engine(config)
    import subprocess

    query = lab.spawn(lab.client, sys.executable, "-c", QUERY, client, resolver,
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert query.stdout is not None and query.stdin is not None
    port = int(query.stdout.readline())
    ip, record = (s.IPv6, "AAAA") if ":" in client else (s.IP, "A")
    forged = (ip(src=resolver, dst=client) / s.UDP(sport=53, dport=port)
              / s.DNS(id=0x4242, qr=1, aa=1, qd=s.DNSQR(qname="allowed.test"),
                      an=s.DNSRR(rrname="allowed.test", type=record, ttl=300, rdata=other)))
    send_raw(lab, lab.client, [forged, forged], interface="lo")
    time.sleep(1)
    query.stdin.close()
    status = json.loads(lab.nfguard("status", "--json", "--config", str(config)).stdout)
    assert status["names"]["entries"] == 0, "the forged answer was learnt"
    assert kernel_counter(lab, "forged_answers_dropped") >= 1
    # and so the forged name allows nothing
    host = f"[{other}]" if ":" in other else other
    result = lab.exec(lab.client, "curl", "-sS", "--max-time", "3", "-H", "Host: allowed.test",
                      f"http://{host}/", timeout=15)
    assert result.returncode != 0, "the forged binding let a flow out"
