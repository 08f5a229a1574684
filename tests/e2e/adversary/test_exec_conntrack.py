"""`nfguard exec`: a command must not ride a conntrack entry someone else made.

A flow's later packets pass in the kernel on the strength of its conntrack entry (its
verdict in the ct mark, or "established" for flows older than the ruleset). An entry
another process made (a UDP flow lives on for 30-180 s after its last packet) is not a
judgement of the command: a command that binds the same source port and sends to the
same destination matches that entry. It must be judged, or cut, as a new flow would.
"""

from __future__ import annotations

import sys

from tests.e2e.lab import OTHER_V4, Lab
from tests.e2e.test_exec import nfguard_exec

PORT = 5353
# Sends from a fixed source port to the echo server; prints what it got back.
SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(2)
try:
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    print("ok" if s.recv(64) == b"ping" else "bad")
except (TimeoutError, OSError) as exc:
    print(f"blocked {exc}")
"""


def test_a_udp_flow_another_process_made_is_not_the_command_s_to_reuse(lab: Lab) -> None:
    lab.serve_udp_echo(OTHER_V4, PORT)
    # The host tracks connections (any stateful firewall, the service's table): here a
    # table of the test's own that only counts.
    lab.exec(lab.client, "nft", "add table inet host_firewall; add chain inet host_firewall "
             "out { type filter hook output priority 0; }; add rule inet host_firewall out "
             "ct state new counter", check=True)
    outside = lab.exec(lab.client, sys.executable, "-c", SEND, OTHER_V4, str(PORT), "40123")
    assert outside.stdout.strip() == "ok"  # the host's own flow: no exec, no judgement
    done = nfguard_exec(lab, "--", sys.executable, "-c", SEND, OTHER_V4, str(PORT), "40123")
    assert done.stdout.strip().startswith("blocked"), (done.stdout, done.stderr)
