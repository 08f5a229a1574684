"""Attack: DNS rebinding through a gateway. LAN A's client may reach a public-looking name;
its DNS answer, which the gateway's dnsmasq fetches upstream, binds the name to the cloud
metadata address or into LAN B, the gateway's other connected network. With the gateway's
setting (`[names] private = "deny"`) the forwarded flow is refused on its SYN: the
recorders behind those addresses see nothing. A connection to the gateway's own address
is not forwarded, so not judged here (README: "Services on the gateway fetch as
themselves")."""

from __future__ import annotations

import time

from tests.e2e.gateway_lab import LAN_A_GATEWAY_V4, LAN_A_V4, LAN_B_V4, GatewayLab
from tests.e2e.lab import ALLOWED_V4, SERVER_V4, SLOWDOWN, run
from tests.e2e.test_gateway import event_of, fetch, start

METADATA_V4 = "169.254.169.254"
RECORDS = (f"--host-record=rebind.test,{METADATA_V4}",
           f"--host-record=lan.rebind.test,{LAN_B_V4}")
OK = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"  # curl is done at once


def test_a_public_name_never_leads_a_lan_client_inside(gateway: GatewayLab) -> None:
    run("ip", "-n", gateway.server, "addr", "add", f"{METADATA_V4}/32", "dev", "lo")
    run("ip", "-n", gateway.gateway, "route", "add", f"{METADATA_V4}/32", "via", SERVER_V4)
    metadata = gateway.record_tcp(METADATA_V4, 80, OK)
    lan_b = gateway.record_tcp(LAN_B_V4, 80, OK, ns=gateway.lan_b)
    public = gateway.record_tcp(ALLOWED_V4, 80, OK)
    start(gateway, nat=True, web=False, records=RECORDS,
          a_names=("a.test", "rebind.test", "*.rebind.test"), names={"private": "deny"})
    a = gateway.lan_a
    for name, address in (("a.test", ALLOWED_V4), ("rebind.test", METADATA_V4),
                          ("lan.rebind.test", LAN_B_V4)):
        assert gateway.dig(name, server=LAN_A_GATEWAY_V4, ns=a) == [address], name

    assert fetch(gateway, a, "http://a.test/", "a.test", ALLOWED_V4) == (0, "ok")
    fetch(gateway, a, "http://rebind.test/", "rebind.test", METADATA_V4)
    fetch(gateway, a, "http://lan.rebind.test/", "lan.rebind.test", LAN_B_V4)
    time.sleep(1.5 * SLOWDOWN)  # a recorder writes a connection's line as it closes
    assert public.contains(b"Host: a.test")
    assert metadata.records() == [], "the name reached the metadata address"
    assert lan_b.records() == [], "the name reached LAN B"
    for address, kind in ((METADATA_V4, "metadata"), (LAN_B_V4, "connected")):
        event = event_of(gateway, LAN_A_V4, address, 80)
        assert (event["event"]["action"], event["event"]["reason"]) == (
            "deny", "name_private_address"), event
        assert event["nfguard"]["client"] == "lan-a"
        assert event["nfguard"]["private"] == kind, event
