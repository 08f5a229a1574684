"""Gateway mode end to end: nfguard on a router between two LAN clients and a server
(gateway_lab.py). Routed flows from `forward_from = ["lan*"]` take the egress path and
are judged by the client their original source address selects (match.source); names
come from the gateway's own dnsmasq, which the clients ask, and each client may resolve
only the names its policy covers. With masquerading and without, IPv4 and IPv6.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.conftest import make_certs
from tests.e2e.gateway_lab import (
    LAN_A_GATEWAY_V4,
    LAN_A_GATEWAY_V6,
    LAN_A_SPARE_V4,
    LAN_A_SPARE_V6,
    LAN_A_V4,
    LAN_A_V6,
    LAN_B_GATEWAY_V4,
    LAN_B_GATEWAY_V6,
    LAN_B_V4,
    LAN_B_V6,
    GatewayLab,
)
from tests.e2e.lab import (
    ALLOWED_V4,
    ALLOWED_V6,
    OTHER_V4,
    OTHER_V6,
    SERVER_V4,
    SERVER_V6,
    SLOWDOWN,
)
from tests.e2e.policies import gateway_policy

DNSMASQ = os.path.realpath(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq")  # as /proc shows it
CUT = {7, 35, 56}  # curl: reset during connect, the TLS handshake, or receive
SERVER_RECORDS = (
    f"--host-record=a.test,{ALLOWED_V4},{ALLOWED_V6}",
    f"--host-record=b.test,{OTHER_V4},{OTHER_V6}",
    f"--address=/attacker.test/{OTHER_V4}",
)


# Connects to port 80 and sends a request head for the path argv[2] (a whole head: the
# flow may wait for its Host); a cut connection is no error here.
SEND = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 80), timeout=3) as s:
        s.sendall(f"GET /{sys.argv[2]} HTTP/1.0\\r\\nHost: server\\r\\n\\r\\n".encode())
except OSError:
    pass
"""


class Family(NamedTuple):
    qtype: str
    a_address: str  # a.test's
    b_address: str  # b.test's
    server: str
    lan_a: str
    lan_a_spare: str
    lan_a_gateway: str
    lan_b: str
    lan_b_gateway: str


FAMILIES = {
    4: Family("A", ALLOWED_V4, OTHER_V4, SERVER_V4, LAN_A_V4, LAN_A_SPARE_V4,
              LAN_A_GATEWAY_V4, LAN_B_V4, LAN_B_GATEWAY_V4),
    6: Family("AAAA", ALLOWED_V6, OTHER_V6, SERVER_V6, LAN_A_V6, LAN_A_SPARE_V6,
              LAN_A_GATEWAY_V6, LAN_B_V6, LAN_B_GATEWAY_V6),
}


def start(gateway: GatewayLab, nat: bool, web: bool = True, *, records: tuple[str, ...] = (),
          a_names: tuple[str, ...] = ("a.test",), names: dict | None = None) -> Path:
    """Servers (the DNS server with `records` too), the gateway's dnsmasq and nfguard (LAN
    A allowed `a_names`, the config's [names] `names`); the server's DNS query log."""
    if nat:
        gateway.masquerade()
    else:
        gateway.route_back()
    log = gateway.workdir / "server-dns.log"
    gateway.serve_dns(*SERVER_RECORDS, *records, "--log-queries", f"--log-facility={log}")
    if web:
        _ca, cert, key = make_certs(gateway.workdir)
        gateway.serve_https(cert, key)
        gateway.serve_http(80, 8080, 8081)
    gateway.serve_lan_dns()
    gateway.start_engine(gateway.write_config(
        gateway_policy(DNSMASQ, (SERVER_V4, SERVER_V6), a_names), names=names,
        forward_from=["lan*"]))
    return log


def bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def fetch(gateway: GatewayLab, ns: str, url: str, name: str, ip: str,
          *options: str) -> tuple[int, str]:
    """curl of `url` with `name` resolved to `ip` (as the client's resolver said), from
    namespace `ns`: (exit code, body)."""
    scheme, port = ("https", 443) if url.startswith("https") else ("http", 80)
    result = gateway.exec(ns, "curl", "-sS", "-k", "--max-time", str(4 * SLOWDOWN), "--resolve",
                          f"{name}:{port}:{bracket(ip)}", *options, f"{scheme}://{url.split('://')[1]}",
                          timeout=15 * SLOWDOWN)
    return result.returncode, result.stdout.strip()


def event_of(gateway: GatewayLab, source: str, destination: str, port: int) -> dict:
    return gateway.wait_for_event(
        lambda e: e.get("source", {}).get("ip") == source
        and e.get("destination", {}).get("ip") == destination
        and e.get("destination", {}).get("port") == port and "dns" not in e)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_each_lan_client_reaches_only_its_own_names_and_networks(
        gateway: GatewayLab, family: int) -> None:
    f = FAMILIES[family]
    start(gateway, nat=True)
    a, b = gateway.lan_a, gateway.lan_b

    # Names are learnt on the gateway, from its dnsmasq's upstream answers; each client
    # resolves its own names there, and the other's is refused.
    assert gateway.dig("a.test", f.qtype, server=f.lan_a_gateway, ns=a) == [f.a_address]
    assert gateway.dig("b.test", f.qtype, server=f.lan_b_gateway, ns=b) == [f.b_address]
    assert gateway.dig("b.test", f.qtype, server=f.lan_a_gateway, ns=a) == []
    refused = gateway.wait_for_event(lambda e: e.get("dns", {}).get("question", {}).get(
        "name") == "b.test" and e["source"]["ip"] == f.lan_a)
    assert (refused["event"]["action"], refused["nfguard"]["client"]) == ("deny", "lan-a")

    # By SNI and by Host: each its own name only.
    assert fetch(gateway, a, "https://a.test/", "a.test", f.a_address) == (0, "https a.test")
    assert fetch(gateway, a, "http://a.test/", "a.test", f.a_address) == (0, "port 80")
    assert fetch(gateway, b, "https://b.test/", "b.test", f.b_address) == (0, "https b.test")
    assert fetch(gateway, a, "https://b.test/", "b.test", f.b_address)[0] in CUT
    assert fetch(gateway, b, "https://a.test/", "a.test", f.a_address)[0] in CUT
    allowed = gateway.wait_for_event(
        lambda e: e.get("source", {}).get("ip") == f.lan_a
        and e.get("destination", {}).get("domain") == "a.test"
        and e["destination"]["port"] == 443 and "dns" not in e)
    assert allowed["event"]["action"] == "allow"
    assert (allowed["nfguard"]["client"], allowed["nfguard"]["evidence"]) == ("lan-a", "sni")
    assert allowed["observer"]["ingress"]["interface"]["name"] == "lan1"

    # By CIDR: A the server's port 80, B its 8080.
    assert gateway.curl(f.server, 80, ns=a, timeout=3 * SLOWDOWN) == (0, "port 80\n")
    assert gateway.curl(f.server, 8080, ns=b, timeout=3 * SLOWDOWN) == (0, "port 8080\n")
    assert gateway.curl(f.server, 8080, ns=a)[0] in CUT
    assert gateway.curl(f.server, 80, ns=b)[0] in CUT
    assert event_of(gateway, f.lan_b, f.server, 8080)["nfguard"]["client"] == "lan-b"

    # Anti-fronting on routed flows: A's allowed name to b.test's address, by SNI or Host.
    assert fetch(gateway, a, "https://a.test/", "a.test", f.b_address)[0] in CUT
    assert fetch(gateway, a, "http://a.test/", "a.test", f.b_address)[0] in CUT
    fronted = event_of(gateway, f.lan_a, f.b_address, 443)
    assert fronted["event"]["action"] == "deny", fronted

    # A's spare address is in no client's networks: the default (deny).
    spare = fetch(gateway, a, "https://a.test/", "a.test", f.a_address,
                  "--interface", f.lan_a_spare)
    assert spare[0] in CUT, spare
    assert event_of(gateway, f.lan_a_spare, f.a_address, 443)["event"]["reason"] == (
        "no_client_match")

    # The gateway's own flows are the host's: no source, no LAN client.
    assert gateway.curl(f.server, 8081, timeout=3 * SLOWDOWN) == (0, "port 8081\n")
    assert gateway.curl(f.server, 80)[0] in CUT
    own = gateway.wait_for_event(lambda e: e.get("destination", {}).get("port") == 80
                                 and e["event"]["action"] == "deny"
                                 and e["nfguard"].get("client") == "gateway-root")
    assert "ingress" not in own["observer"]


def test_routed_without_nat_the_server_sees_each_clients_own_address(
        gateway: GatewayLab) -> None:
    start(gateway, nat=False, web=False)
    a, b = gateway.lan_a, gateway.lan_b
    for f in FAMILIES.values():
        recording = gateway.record_tcp(f.server, 80)
        assert gateway.dig("a.test", f.qtype, server=f.lan_a_gateway, ns=a) == [f.a_address]
        for ns, marker in ((a, f"from-a-{f.qtype}"), (b, f"from-b-{f.qtype}")):
            gateway.exec(ns, sys.executable, "-c", SEND, f.server, marker)
        gateway.wait_until(lambda rec=recording, f=f: any(  # type: ignore[misc]
            r["peer"][0] == f.lan_a for r in rec.records()))
        peers = {r["peer"][0]: r["data"] for r in recording.records()}
        assert list(peers) == [f.lan_a], peers
        assert peers[f.lan_a].startswith(f"GET /from-a-{f.qtype} ".encode())
        denied = event_of(gateway, f.lan_b, f.server, 80)
        assert (denied["event"]["action"], denied["nfguard"]["client"]) == ("deny", "lan-b")
