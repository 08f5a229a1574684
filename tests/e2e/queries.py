"""DNS clients for the query tests: dig's status and time, pipelined TCP, many on one socket.
Each returns what the client saw and how long it waited."""

from __future__ import annotations

import re
import sys
import time

from tests.e2e.lab import SERVER_V4, Lab

# Sends each name's A query: "udp" all on one socket, "udp-in-turn" the same, each after the
# last one's answer, "tcp" all pipelined in one segment;
# prints one rcode (or "timeout" / the error) per query, as answers come, then "took" and
# the seconds from the first query sent to the last answer (the interpreter's start-up and
# imports left out: under an emulated CPU they take seconds).
CLIENT = r"""
import socket, struct, sys, time
import dns.message, dns.rcode
transport, server, names = sys.argv[1], sys.argv[2], sys.argv[3:]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
queries = [dns.message.make_query(name, "A") for name in names]
started = time.monotonic()
try:
    if transport in ("udp", "udp-in-turn"):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.connect((server, 53))
        sock.settimeout(3)
        for query in queries:
            sock.send(query.to_wire())
            if transport == "udp-in-turn":  # each after the last one's answer
                print(dns.rcode.to_text(dns.message.from_wire(sock.recv(4096)).rcode()),
                      flush=True)
        for _ in queries if transport == "udp" else ():
            print(dns.rcode.to_text(dns.message.from_wire(sock.recv(4096)).rcode()), flush=True)
    else:
        sock = socket.create_connection((server, 53), timeout=3)
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w
                              for w in (q.to_wire() for q in queries)))
        buffer = b""
        for _ in queries:
            while len(buffer) < 2 or len(buffer) < 2 + struct.unpack("!H", buffer[:2])[0]:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed")
                buffer += chunk
            size = struct.unpack("!H", buffer[:2])[0]
            print(dns.rcode.to_text(dns.message.from_wire(buffer[2:2 + size]).rcode()),
                  flush=True)
            buffer = buffer[2 + size:]
except socket.timeout:
    print("timeout")
except OSError as error:
    print(type(error).__name__)
print("took", time.monotonic() - started)
"""


def dig(lab: Lab, name: str, ns: str | None = None, server: str = SERVER_V4,
        tcp: bool = False, qtype: str = "A") -> tuple[str, list[str], float]:
    """dig's status (NOERROR, REFUSED, ... or "timeout" / "error"), its answers, seconds."""
    started = time.monotonic()
    result = lab.exec(ns or lab.client, "dig", f"@{server}", "+tries=1", "+time=3",
                      "+noall", "+answer", "+comments", *(("+tcp",) if tcp else ()),
                      name, qtype)
    elapsed = time.monotonic() - started
    found = re.search(r"status: (\w+)", result.stdout)
    status = found.group(1) if found else (
        "timeout" if "timed out" in result.stdout else "error")
    answers = [line.split()[-1] for line in result.stdout.splitlines()
               if line and not line.startswith(";")]
    return status, answers, elapsed


def many(lab: Lab, transport: str, names: list[str], ns: str | None = None,
         server: str = SERVER_V4) -> tuple[list[str], float]:
    """The rcodes a client sending `names` on one socket ("udp", "udp-in-turn") or pipelined
    on one TCP connection ("tcp") got, and the seconds it took."""
    result = lab.exec(ns or lab.client, sys.executable, "-c", CLIENT, transport, server,
                      *names)
    *rcodes, took, seconds = result.stdout.split()
    assert took == "took", result.stdout + result.stderr
    return rcodes, float(seconds)
