"""A LAN client behind the gateway opens a flow while another program has flushed the
gateway's ruleset (nftables.service, iptables-restore): no rule judges it then, and what
it sends in that gap gets out (README's limits). Once nfguard's table is back the flow
must not stay open as a channel: its next packet is cut, and the log says so. The gap is
held open here by stopping the daemon across the flush (its change events wait in its
socket), so a handshake always fits in it. A forwarded flow that predates nfguard's start
is left alone, as the host's own are."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.adversary.gap import Flow, gap, recorder
from tests.e2e.gateway_lab import LAN_A_V4, LAN_A_V6, GatewayLab
from tests.e2e.lab import CONTAINER_V4, SERVER_V4, SERVER_V6
from tests.e2e.policies import gateway_policy
from tests.e2e.test_gateway import DNSMASQ

PORT = 7200  # no client's policy allows it (tests.e2e.policies.gateway_policy)
# (server, the client's address, masquerade or routed as they are, a container on the
# gateway's docker0 rather than LAN A)
FAMILIES = {"ipv4-nat": (SERVER_V4, LAN_A_V4, True, False),
            "ipv6-routed": (SERVER_V6, LAN_A_V6, False, False)}
CASES = {**FAMILIES, "container-ipv4-nat": (SERVER_V4, CONTAINER_V4, True, True)}


def host_ruleset(gateway: GatewayLab, nat: bool) -> str:
    """The gateway's own firewall (it tracks connections, as a router's does: conntrack
    stays on while nfguard's table is gone) and its NAT, as /etc/nftables.conf has them."""
    firewall = (f"table inet {gateway.tag}fw {{\n chain forward {{\n"
                "  type filter hook forward priority filter; policy accept;\n"
                "  ct state established,related accept\n }\n}\n")
    return firewall + (gateway.nat_rules() if nat else "")


def start(gateway: GatewayLab, nat: bool, container: bool = False) -> str:
    """The gateway's own ruleset, masquerading or routing the LANs as they are (no DNS
    needed here), and a container behind its docker0 if asked; the client's namespace."""
    gateway.exec(gateway.gateway, "nft", "-f", "-", check=True,
                 input=host_ruleset(gateway, nat))
    if not nat:
        gateway.route_back()
    if container:
        gateway.add_container("docker0")
        return gateway.container
    return gateway.lan_a


def start_engine(gateway: GatewayLab) -> None:
    gateway.start_engine(gateway.write_config(
        gateway_policy(DNSMASQ, (SERVER_V4, SERVER_V6)), forward_from=["lan*", "docker0"]))


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_forwarded_flow_opened_in_the_gap_is_cut_at_the_restore(
        gateway: GatewayLab, case: str, proto: str) -> None:
    server, source, nat, container = CASES[case]
    client = start(gateway, nat, container)
    recording = recorder(gateway, server, PORT, proto)
    start_engine(gateway)
    tag = uuid.uuid4().hex
    with gap(gateway, gateway.gateway, host_ruleset(gateway, nat)):
        flow = Flow(gateway, client, server, PORT, proto, tag)
    after = f"after-{tag}"
    assert flow.send(after).startswith("cut"), "the flow made in the gap was not cut"
    gateway.wait_until(lambda: recording.contains(f"first-{tag}".encode()), timeout=10)
    assert not recording.contains(after.encode()), "the flow made in the gap kept sending"
    log = gateway.engine_log.read_text()
    assert f"cut a flow made while the ruleset was gone: {proto} {source} -> {server}" in log
    assert "1 flow(s) made meanwhile cut" in log


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_forwarded_flow_that_predates_nfguard_is_left_alone(
        gateway: GatewayLab, family: str) -> None:
    server, _source, nat, _container = FAMILIES[family]
    client = start(gateway, nat)
    recording = recorder(gateway, server, PORT, "tcp")
    tag = uuid.uuid4().hex
    old = Flow(gateway, client, server, PORT, "tcp", tag)
    start_engine(gateway)
    with gap(gateway, gateway.gateway, host_ruleset(gateway, nat)):
        pass
    after = f"after-{tag}"
    assert old.send(after) == "sent"
    gateway.wait_until(lambda: recording.contains(after.encode()), timeout=10)
    assert "0 flow(s) made meanwhile cut" in gateway.engine_log.read_text()
