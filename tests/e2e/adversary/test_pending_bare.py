"""A flow that waits for its name is not a channel: the server of a pending flow cannot
push bytes to the client (a server-first protocol's "run this" before the client
presented any name), and the client's segments pass the kernel only if they carry
nothing."""

from __future__ import annotations

import sys
import uuid

import pytest

from tests.e2e.adversary.raw import kernel_counter
from tests.e2e.lab import ALLOWED_V4, ALLOWED_V6, SERVER_V4, Lab
from tests.e2e.policies import allow, dns_and

POLICY = dns_and(allow("web", "allowed.test", ports=(443,)))

# Connects and never sends a byte (a server-first protocol's client waiting for its
# orders); prints, hex, whatever arrived within the time given.
SILENT_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(0.2)
got, end = b"", time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        data = s.recv(65536)
    except TimeoutError:
        continue
    except OSError:
        break
    if not data:
        break
    got += data
print(got.hex())
"""


def listen_to_a_pending_flow(lab: Lab, address: str, ns: str, seconds: float = 3) -> bytes:
    """What a silent client in `ns` receives from a server-first server at `address`:443,
    on a flow the engine holds as pending (the address has a DNS name a name rule allows,
    so only the name the client presents could decide)."""
    result = lab.exec(ns, sys.executable, "-c", SILENT_CLIENT, address, "443", str(seconds),
                      timeout=seconds + 20)
    assert result.returncode == 0, result.stderr
    return bytes.fromhex(result.stdout.strip())


@pytest.mark.parametrize("address", [ALLOWED_V4, ALLOWED_V6])
def test_a_pending_flows_server_cannot_push_bytes_to_the_client(lab: Lab, address: str) -> None:
    marker = b"RUN-THIS-" + uuid.uuid4().hex.encode()
    lab.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4},{ALLOWED_V6}")
    lab.record_tcp(address, 443, banner=marker)
    lab.start_engine(lab.write_config(POLICY, names={"hello_timeout": 8.0}))
    assert lab.dig("allowed.test", "AAAA" if ":" in address else "A") == [address]
    got = listen_to_a_pending_flow(lab, address, lab.client)
    assert marker not in got, "the server's banner reached a flow still waiting for its name"
    assert kernel_counter(lab, "pending_replies_dropped") >= 1, "the flow was not pending"


def test_a_pending_flows_server_cannot_push_bytes_to_a_container(lab: Lab) -> None:
    marker = b"RUN-THIS-" + uuid.uuid4().hex.encode()
    lab.add_container()
    lab.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4},{ALLOWED_V6}")
    lab.record_tcp(ALLOWED_V4, 443, banner=marker)
    lab.start_engine(lab.write_config(POLICY, names={"hello_timeout": 8.0},
                                      forward_from=["docker0"]))
    assert lab.dig("allowed.test", ns=lab.container, server=SERVER_V4) == [ALLOWED_V4]
    got = listen_to_a_pending_flow(lab, ALLOWED_V4, lab.container)
    assert marker not in got, "the banner reached a container's flow waiting for its name"
    assert kernel_counter(lab, "pending_replies_dropped") >= 1, "the flow was not pending"
