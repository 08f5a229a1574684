"""What attribution costs per flow in the connection benchmark's daemon: `Attributor.lookup`
of new TCP connections from one process already known (wrk's case), by the route the
daemon takes there: the kernel's record of socket owners, no process events (the engine
runs in a network namespace of its own, where the process connector says nothing).

Counted, not timed, so that other load on the machine does not move the figures: the
difference of two runs under `valgrind --tool=callgrind` gives the instructions per
lookup, and of two runs under `strace -c` the system calls per lookup (their kernel work
is not in the first count). Needs root (the eBPF recorder); runs in a network namespace
of its own (`unshare --net`, loopback only).

    python -m tests.bench.bench_lookup --count 2000 6000
    python -m tests.bench.bench_lookup 20000        # wall-clock µs per lookup
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nfguard.procs import Attributor

CONNECTIONS = 64  # sockets looked up in turn (each lookup is as a new flow's: no cache by inode)


def run(lookups: int) -> float:
    """Seconds taken by `lookups` lookups of the process's own connections."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with Attributor(events=False) as attributor:  # first: it records the connects below
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(CONNECTIONS)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        ports = [c.getsockname()[1] for c in clients]
        if not attributor.recorded_owners:
            raise RuntimeError(f"no record of socket owners: {attributor.owners_error}")
        first = attributor.lookup("tcp", 4, "127.0.0.1", ports[0], "127.0.0.1", port)
        if first.pid != os.getpid() or first.unproven:
            raise RuntimeError(f"attributed to {first}")
        started = time.perf_counter()
        for n in range(lookups):
            attributor.lookup("tcp", 4, "127.0.0.1", ports[n % CONNECTIONS], "127.0.0.1", port)
        took = time.perf_counter() - started
        if attributor.counters.recorded != lookups + 1:
            raise RuntimeError(f"not all by the record: {attributor.stats()}")
    for c in clients:
        c.close()
    server.close()
    return took


def counted(tool: list[str], lookups: int, pattern: str) -> int:
    """A count the tool prints (in a file it writes) for a run of `lookups` lookups."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [arg.format(tmp=tmp) for arg in tool]
        subprocess.run(["unshare", "--net", *argv, sys.executable, "-m",
                        "tests.bench.bench_lookup", str(lookups)],
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": "0"})
        text = "".join(path.read_text() for path in Path(tmp).iterdir())
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        raise RuntimeError(text[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lookups", type=int, nargs="+")
    parser.add_argument("--count", action="store_true",
                        help="instructions (callgrind) and system calls (strace) per lookup, "
                             "from runs of the two sizes given")
    args = parser.parse_args()
    if not args.count:
        print(f"{run(args.lookups[0]) / args.lookups[0] * 1e6:.1f} µs per lookup")
        return
    low, high = args.lookups
    for tool in ("valgrind", "strace"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    callgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file={tmp}/cg.out"]
    # callgrind's totals are in its output file's last lines ("totals: N")
    small, big = (counted(callgrind, n, r"^totals: (\d+)") for n in (low, high))
    print(f"{(big - small) / (high - low):,.0f} instructions per lookup")
    strace = ["strace", "-c", "-o", "{tmp}/strace.txt"]
    small, big = (counted(strace, n, r"^100\.00\s+\S+\s+\S+\s+(\d+)") for n in (low, high))
    print(f"{(big - small) / (high - low):.2f} system calls per lookup")


if __name__ == "__main__":
    main()
