"""Engine memory after a million distinct flows: is it bounded? (pure, no kernel)

`Pipeline.handle` is driven directly with packets built here (struct, no scapy: a million
of them must be cheap to make), the way the queue adapter calls it, with the policy of the
connection benchmark's body. Per four flows: one DNS answer teaching a new name for the
next flow's address; two SYNs to port 443, which name rules cover, so they wait for a
presented name (pending); two SYNs to port 22, decided at once. One flow in sixteen also
sends the first segment of a ClientHello and so holds a packet. Every flow has its own
address. Reports RSS and the size of every table at checkpoints.

    .venv/bin/python -m tests.bench --parts memory [--flows 1000000]
"""

from __future__ import annotations

import gc
import struct
import sys
import time

from nfguard import marks
from nfguard import pending as flow_limits
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import Engine
from nfguard.metrics.counts import Stats
from nfguard.pipeline import LOCAL_IN, LOCAL_OUT, MAX_CHAINS, Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from tests.bench.policies import scale_policy
from tests.bench.report import Figure, rss_mib

CLIENT = 0xC6120001  # 198.18.0.1
RESOLVER = 0xC6120002
FLOW_BASE = 10 << 24  # flow i goes to 10.0.0.0 + i
_SYN, _PSH_ACK = 0x02, 0x18
# The start of a TLS handshake record announcing 512 bytes: the reader waits for more.
HELLO_START = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]) + \
    bytes(32)


def ipv4(proto: int, src: int, dst: int, body: bytes) -> bytes:
    return struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(body), 0, 0x4000, 64, proto, 0,
                       src, dst) + body


def tcp(sport: int, dport: int, seq: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + data


def dns_answer(ident: int, name: str, address: int, ttl: int = 300) -> bytes:
    """A UDP datagram (header included) answering `name A` with one address."""
    qname = b"".join(bytes([len(label)]) + label for label in name.encode().split(b"."))
    message = (struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + qname + b"\0" +
               struct.pack("!HHHHHIHI", 1, 1, 0xC00C, 1, 1, ttl, 4, address))
    return struct.pack("!HHHH", 53, 5353, 8 + len(message), 0) + message


def flow_memory(flows: int = 1_000_000, checkpoints: int = 4) -> Figure:
    policy = CompiledPolicySet(parse_policy_texts([("body.toml", scale_policy(1000))]))
    stats = Stats()
    released = 0

    def release(_token: object, _mark: int) -> None:
        nonlocal released
        released += 1

    # verify off: every flow on a port a name rule covers waits, whatever its address.
    pipeline = Pipeline(Engine(EngineConfig(), policy, verify=False), AuditLog("/dev/null"),
                        stats,
                        settings=NamesConfig(resolvers=("198.18.0.2/32",)), release=release)
    handle = pipeline.handle
    queued, pending = marks.QUEUED, marks.QUEUED | marks.PENDING
    marks_seen = {marks.ALLOW: 0, marks.DENY: 0, marks.PENDING: 0, None: 0}
    stops = sorted({flows * k // checkpoints for k in range(1, checkpoints + 1)} |
                   {min(flows, 100_000)})
    gc.collect()
    samples = [(0, rss_mib(), sys.getallocatedblocks())]
    start = time.perf_counter()
    for i in range(flows):
        dst = FLOW_BASE + i
        sport = 1024 + i % 60000
        if i % 4 == 0:
            answer = dns_answer(i & 0xFFFF, f"n{i}.mem.example", dst)
            handle(ipv4(17, RESOLVER, CLIENT, answer), marks.ANSWER, LOCAL_IN)
        port = 443 if i % 4 < 2 else 22
        verdict = handle(ipv4(6, CLIENT, dst, tcp(sport, port, i, _SYN)), queued, LOCAL_OUT)
        marks_seen[None if verdict is marks.HOLD else verdict & marks.VERDICT_MASK] += 1
        if i % 16 == 0:
            data = tcp(sport, port, i + 1, _PSH_ACK, HELLO_START)
            if handle(ipv4(6, CLIENT, dst, data), pending, LOCAL_OUT, object()) is marks.HOLD:
                marks_seen[None] += 1
        if i + 1 == stops[0]:
            stops.pop(0)
            samples.append((i + 1, rss_mib(), sys.getallocatedblocks()))
    elapsed = time.perf_counter() - start
    tables = {
        "pending flows": (len(pipeline.flows), flow_limits.MAX_FLOWS),
        "held packets": (pipeline.flows.held_packets, flow_limits.MAX_HELD),
        "names": (len(pipeline.names), pipeline.names.max_entries),
        "CNAME chains": (len(pipeline._chains), MAX_CHAINS),
    }
    assert stats.errors == 0, f"{stats.errors} engine errors"
    half_flows = flows // 2 - 1
    assert marks_seen[marks.PENDING] >= half_flows and marks_seen[marks.DENY] >= half_flows, \
        f"the flow mix did not happen: {marks_seen}"
    assert marks_seen[None] >= flows // 16 - 1, f"no packet was held: {marks_seen}"
    # Bounded: every table at or under its cap, and in the second half of the run (all
    # tables full) the objects Python holds stayed as many (within 1 %).
    half = next(blocks for count, _rss, blocks in samples if count >= flows // 2)
    bounded = (all(size <= cap for size, cap in tables.values())
               and samples[-1][2] <= half * 1.01)
    return Figure(
        f"Engine RSS after N distinct flows ({flows // 4:,} DNS answers, {flows // 2:,} "
        f"pending, {released:,} held packets released; {elapsed / flows * 1e6:.0f} µs "
        "per flow)",
        ", ".join(f"{count:,}: {rss:.0f} MiB ({blocks / 1e6:.2f} M objects)"
                  for count, rss, blocks in samples)
        + "; tables " + ", ".join(f"{name} {size:,}/{cap:,}"
                                  for name, (size, cap) in tables.items()),
        "bounded", bounded,
    )
