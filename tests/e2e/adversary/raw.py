"""Raw packets from an attacker's namespace: built with scapy in the test, sent through an
IPPROTO_RAW socket (so they meet netfilter's OUTPUT or FORWARD hooks, as an attacker's
raw socket would; scapy's own sender uses AF_PACKET, which netfilter never sees)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tests.e2e.lab import Lab

SENDER = """
import socket, sys
interface, packets = sys.argv[1], sys.argv[2:]
sent = 0
for text in packets:
    packet = bytes.fromhex(text)
    if packet[0] >> 4 == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        target = (socket.inet_ntop(socket.AF_INET, packet[16:20]), 0)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        target = (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0, 0,
                  socket.if_nametoindex(interface))
    try:
        s.sendto(packet, target)
        sent += 1
    except OSError as exc:
        print("refused:", exc, file=sys.stderr)
    s.close()
print(sent)
"""


def send_raw(lab: Lab, ns: str, packets: Iterable[object], interface: str = "veth0") -> int:
    """Send scapy packets from namespace `ns` through raw sockets; how many the kernel took
    (a packet netfilter drops in OUTPUT is refused with EPERM)."""
    texts = [bytes(packet).hex() for packet in packets]  # type: ignore[call-overload]
    result = lab.exec(ns, sys.executable, "-c", SENDER, interface, *texts, check=True,
                      timeout=60)
    return int(result.stdout.strip() or 0)


def kernel_counter(lab: Lab, name: str) -> int:
    """Packets counted by the ruleset's named counter `name` in the client namespace."""
    out = lab.exec(lab.client, "nft", "list", "counter", "inet", "nfguard", name).stdout
    words = out.split()
    return int(words[words.index("packets") + 1]) if "packets" in words else -1
