"""The engine's own work per flow decided by name, without the kernel: `Pipeline.handle`
driven directly with the packets the queue would hand it for wrk's flows in the connection
benchmark (the per-exe client, the server allowed by a DNS-learnt name behind 1,000
rules, audit log on), the sender found by a stand-in attributor (what sock_diag and /proc
would say, for free).

With the one-trip sets (marks.KERNEL_PENDING exists) the engine sees a flow once, at its
first data segment; without them (older commits: run this file there to compare) the SYN
comes first. Under `valgrind --tool=callgrind` the difference of two runs gives the
instructions per flow, a count that does not drift with the machine's load:

    python -m tests.bench.bench_pipeline --callgrind 2000 4000
    python -m tests.bench.bench_pipeline 20000        # wall-clock µs per flow
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import Engine
from nfguard.hostnets import HostNetworks
from nfguard.metrics.counts import Stats
from nfguard.pipeline import LOCAL_OUT, Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import ProcessInfo
from tests.bench.policies import BODY, allow_rule, body_rules, client
from tests.bench.report import Figure

WRK = "/usr/bin/wrk"
CLIENT, SERVER, NAME = "198.18.0.1", "198.18.1.1", "web.bench.test"
REQUEST = (f"GET / HTTP/1.1\r\nHost: {NAME}\r\nUser-Agent: wrk\r\nConnection: close\r\n\r\n"
           .encode())
ONE_TRIP = hasattr(marks, "KERNEL_PENDING")


class Attributor:
    """Says wrk sent every flow (the real one asks the kernel and /proc)."""

    def __init__(self) -> None:
        self.sender = ProcessInfo(uid=0, user="root", inode=1, pid=4242, exe=WRK,
                                  cmdline=(WRK, "-c32"), ppid=1, parent_exe="/usr/bin/sh",
                                  cgroup="/bench.scope", gids=(0,), groups=("root",))

    def lookup(self, *_args: Any, **_kw: Any) -> ProcessInfo:
        return self.sender


def segment(sport: int, flags: int, seq: int, data: bytes = b"") -> bytes:
    """An IPv4 TCP segment from the client to the server (checksums left zero)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 1, 0x4000, 64, 6, 0,
                     bytes(map(int, CLIENT.split("."))), bytes(map(int, SERVER.split("."))))
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, 1, 5 << 4, flags, 64240, 0, 0)
    return ip + tcp + data


def make_pipeline(audit_path: str) -> Pipeline:
    policy = "\n".join([client("wrk", [BODY, "web"], exe=WRK), client("rest", ["none"]),
                        body_rules(1000), allow_rule("web", "server", [NAME], [80], "tcp"),
                        '[[policy]]\nname = "none"\n'])
    # The address kinds remembered, as the daemon's engine has them (build_engine).
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("b.toml", policy)])),
                    internal=HostNetworks(lambda: ()).kind)
    released: list[int] = []
    pipeline = Pipeline(engine, AuditLog(audit_path), Stats(), settings=NamesConfig(),
                        attributor=Attributor(),  # type: ignore[arg-type]
                        release=lambda _token, mark: released.append(mark))
    pipeline.learn(time.time(), [(SERVER, NAME, 3600)])
    return pipeline


def run(flows: int, audit_path: str) -> float:
    """Decide `flows` flows; seconds taken."""
    pipeline = make_pipeline(audit_path)
    handle, flush = pipeline.handle, getattr(pipeline, "flush_events", None)
    queued = marks.QUEUED
    # One trip: the data segment comes as the flow's first sight; else as a pending flow's.
    pending = getattr(marks, "UNSEEN", marks.QUEUED | marks.PENDING)
    packets = []
    for n in range(flows):
        sport = 1024 + n % 64000
        syn = segment(sport, 0x02, n * 7)
        data = segment(sport, 0x18, n * 7 + 1, REQUEST)
        packets.append((syn, data))
    gc.freeze()  # the harness's own objects stay out of the collections the flows cause
    started = time.perf_counter()
    for n, (syn, data) in enumerate(packets):
        if not ONE_TRIP:
            assert handle(syn, queued, LOCAL_OUT, n) & marks.VERDICT_MASK == marks.PENDING
        assert handle(data, pending, LOCAL_OUT, n) is marks.HOLD
        if flush is not None:
            flush()
    return time.perf_counter() - started


def callgrind(counts: list[int]) -> list[int]:
    """Instructions callgrind counts for a run of each size (the whole process)."""
    found = []
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                 sys.executable, "-m", "tests.bench.bench_pipeline", str(count)],
                capture_output=True, text=True, check=True, env={**os.environ,
                                                                 "PYTHONHASHSEED": "0"})
            refs = re.search(r"Collected : (\d+)", out.stderr)
            if refs is None:
                raise RuntimeError(out.stderr)
            found.append(int(refs.group(1)))
    return found


def instructions(low: int = 500, high: int = 1500) -> Figure:
    """The benchmark table's row: instructions per flow decided by name."""
    if shutil.which("valgrind") is None:
        return Figure("Instructions per flow decided by name", "valgrind is not installed")
    small, big = callgrind([low, high])
    path = "one trip: its first data segment" if ONE_TRIP else "two trips"
    return Figure(f"Instructions per flow decided by name through Pipeline.handle ({path}; "
                  "per-exe client, name behind 1,000 rules, audit on; callgrind)",
                  f"{(big - small) / (high - low):,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flows", type=int, nargs="+")
    parser.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    if args.callgrind:
        low, high = args.flows
        small, big = callgrind([low, high])
        print(f"{(big - small) / (high - low):,.0f} instructions per flow "
              f"({'one trip' if ONE_TRIP else 'two trips'})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        took = run(args.flows[0], f"{tmp}/audit.jsonl")
    print(f"{took / args.flows[0] * 1e6:.1f} µs per flow "
          f"({'one trip' if ONE_TRIP else 'two trips'})")


if __name__ == "__main__":
    main()
