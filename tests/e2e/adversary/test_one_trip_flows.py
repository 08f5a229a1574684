"""A flow the kernel made pending at its SYN (one trip) is no channel either: it gets only
bare segments both ways, a silent one is decided at hello_timeout though the engine never
saw a packet of it, and the one-trip sets are global: a client whose policy does not allow
the name gets its handshake, but not one byte of data to the server."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from tests.e2e.adversary.raw import kernel_counter
from tests.e2e.adversary.test_pending_bare import listen_to_a_pending_flow
from tests.e2e.lab import ALLOWED_V4, OTHER_V4, Lab
from tests.e2e.policies import names_for_exe, names_policy
from tests.e2e.test_one_trip import elements, get, queued

PYTHON = os.path.realpath(sys.executable)


@pytest.mark.parametrize("one_trip", [True, False], ids=["one-trip", "two-trips"])
def test_a_silent_pending_flow_gets_no_channel_and_is_cut_at_hello_timeout(
        lab: Lab, one_trip: bool) -> None:
    """The server pushes a banner to a client that never speaks: nothing of it arrives
    while the flow waits, nor after it was cut at hello_timeout (before, the server's
    retransmission reached the denied flow's socket). One trip: the engine never sees a
    packet of the flow. Two trips: anti-fronting off lets allowed.test be presented to
    an address it was never learnt for, so the flow waits, but its SYN went to the engine."""
    marker = b"RUN-THIS-" + uuid.uuid4().hex.encode()
    address = ALLOWED_V4 if one_trip else OTHER_V4
    lab.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4}")
    recording = lab.record_tcp(address, 443, banner=marker)
    lab.start_engine(lab.write_config(names_policy(443, queries="any"),
                                      names={"hello_timeout": 2.0, "verify": one_trip}))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    lab.wait_until(lambda: f"{ALLOWED_V4} . 443" in elements(lab))
    before = queued(lab)
    got = listen_to_a_pending_flow(lab, address, lab.client, seconds=6)
    assert marker not in got, "the server's banner reached a flow waiting for its name or cut"
    assert kernel_counter(lab, "pending_replies_dropped") >= 1, "the flow was not pending"
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 443)
    assert (event["event"]["action"], event["nfguard"]["unreadable"]) == ("deny",
                                                                         "hello_timeout")
    assert queued(lab) - before == (0 if one_trip else 1)
    assert all(not record["data"] for record in recording.records())


def test_a_client_whose_policy_denies_the_name_is_denied_at_its_first_data(lab: Lab) -> None:
    """curl's client allows allowed.test, so its address is in the set; python's client
    allows nothing: its SYN passes, its request does not."""
    marker = "secret-" + uuid.uuid4().hex
    lab.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4}")
    recording = lab.record_tcp(ALLOWED_V4, 80)
    curl = os.path.realpath("/usr/bin/curl")
    lab.start_engine(lab.write_config(names_for_exe(curl, 80)))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" in elements(lab))
    assert get(lab, ALLOWED_V4, f"allowed.test/{marker}") in ("ConnectionResetError",
                                                              "closed")
    event = lab.wait_for_event(lambda e: e.get("process", {}).get("executable") == PYTHON
                               and e.get("destination", {}).get("port") == 80)
    assert (event["event"]["action"], event["nfguard"]["client"]) == ("deny", "others")
    assert not recording.contains(marker.encode()), "the request reached the server"


# An allowed request, the connection reset, and another at once from the same port to the
# same server (a new conntrack entry on the same tuple, its sequence numbers near the
# first's) asking for another name; prints what each got.
REUSED_TUPLE = r"""
import socket, struct, sys
host, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
def ask(sock, name):
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    try:
        return sock.recv(4096).split(b"\r\n")[0].decode() or "closed"
    except OSError as exc:
        return type(exc).__name__
a = socket.socket()
a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("0.0.0.0", 0))
port = a.getsockname()[1]
a.settimeout(5)
a.connect((host, 80))
print(ask(a, first))
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
a.close()
b = socket.socket()
b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
b.bind(("0.0.0.0", port))
b.settimeout(5)
try:
    b.connect((host, 80))
    print(ask(b, second))
except OSError as exc:
    print(type(exc).__name__)
"""


def test_a_connection_on_a_reused_tuple_is_judged_by_its_own_name(lab: Lab) -> None:
    """Both connections skip the engine at their SYN; the second must not inherit the
    first's verdict (the engine knows the tuple, decided): the ruleset marks each flow's
    first packet to the engine as a new flow's."""
    lab.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4}")
    lab.serve_http(80)
    lab.start_engine(lab.write_config(names_policy(80, queries="any")))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" in elements(lab))
    before = queued(lab)
    got = lab.exec(lab.client, sys.executable, "-c", REUSED_TUPLE, ALLOWED_V4,
                   "allowed.test", "denied.test", timeout=30).stdout.split("\n")
    assert got[0] == "HTTP/1.0 200 OK"
    assert got[1] in ("ConnectionResetError", "closed"), got
    assert queued(lab) - before == 2, "not two one-trip flows"
