"""Benchmark: what does `Attributor.lookup` cost per flow? (a script, not a pytest test)

Run as root:  /tmp/v/bin/python tests/bench/bench_attribution.py [--procs 500] [--samples 300]

Sets up ~2 live loopback sockets (one TCP connection, one UDP socket — half connected, half
unconnected) in each of N sleeping processes, all in one test cgroup (a service with many
workers), then times lookups:
- warm:     the flow was looked up before (inode cache hit + process info cache);
- new flow: a sleeping process opens a new TCP connection just before the lookup, caches
            otherwise warm — the per-new-flow cost the engine actually pays;
- cold:     every cache emptied before each lookup (includes the cgroup walk);
- sockdiag: the netlink request/answer alone, for reference.
Also checks that every answer names the right pid. Cleans up its processes and cgroup.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfguard.procs import Attributor
from nfguard.procs.cgroups import find_cgroup2_root

SPAWNER = r"""
import os, signal, socket, struct, sys, time
n, tport, uport, cgdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if cgdir:
    with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
kids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        me = struct.pack("=I", os.getpid())
        keep = []
        def more(*_):
            s = socket.create_connection(("127.0.0.1", tport)); s.sendall(me); keep.append(s)
        signal.signal(signal.SIGUSR1, more)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        t = socket.create_connection(("127.0.0.1", tport)); t.sendall(me)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if i % 2:
            u.connect(("127.0.0.1", uport)); u.send(me)
        else:
            u.sendto(me, ("127.0.0.1", uport))
        while True:
            signal.pause()
    kids.append(pid)
def stop(*_):
    for k in kids:
        try: os.kill(k, signal.SIGKILL)
        except OSError: pass
    for k in kids:
        try: os.waitpid(k, 0)
        except OSError: pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    signal.pause()
"""


def pct(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


def report(name: str, ns: list[int]) -> None:
    us = [v / 1000 for v in ns]
    print(
        f"{name:<34} n={len(us):5d}  median {statistics.median(us):9.1f} µs"
        f"  p99 {pct(us, 0.99):9.1f} µs  max {max(us):9.1f} µs"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5, help="warm passes over all flows")
    ap.add_argument("--root-cgroup", action="store_true", help="leave children in our cgroup")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2

    cgroot = find_cgroup2_root()
    cgdir = ""
    if cgroot and not args.root_cgroup:
        cgdir = os.path.join(cgroot, f"nfguard-bench-{os.getpid()}.scope")
        os.mkdir(cgdir)

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usrv.bind(("127.0.0.1", 0))
    usrv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tport, uport = lst.getsockname()[1], usrv.getsockname()[1]
    spawner = subprocess.Popen(
        [sys.executable, "-c", SPAWNER, str(args.procs), str(tport), str(uport), cgdir],
        stdout=subprocess.PIPE,
        text=True,
    )
    accepted: list[socket.socket] = []
    attr = Attributor()
    try:
        assert spawner.stdout is not None
        spawner.stdout.readline()
        flows: list[tuple[str, str, int, str, int, int]] = []
        for _ in range(args.procs):
            conn, peer = lst.accept()
            accepted.append(conn)
            (pid,) = struct.unpack("=I", conn.recv(4))
            flows.append(("tcp", peer[0], peer[1], "127.0.0.1", tport, pid))
        for _ in range(args.procs):
            data, peer = usrv.recvfrom(16)
            (pid,) = struct.unpack("=I", data)
            flows.append(("udp", peer[0], peer[1], "127.0.0.1", uport, pid))
        pids = sorted({f[5] for f in flows})
        print(
            f"{len(flows)} flows in {len(pids)} processes, cgroup "
            f"{'/' + os.path.basename(cgdir) if cgdir else '(ours)'}, cgroup2 at {cgroot}"
        )

        wrong = 0

        def timed(f: tuple[str, str, int, str, int, int]) -> int:
            nonlocal wrong
            t0 = time.perf_counter_ns()
            info = attr.lookup(f[0], socket.AF_INET, f[1], f[2], f[3], f[4])
            dt = time.perf_counter_ns() - t0
            if info.pid != f[5]:
                wrong += 1
            return dt

        # sockdiag alone
        diag = attr._diag
        sd = []
        for f in flows[: args.samples]:
            t0 = time.perf_counter_ns()
            diag.find(f[0], socket.AF_INET, f[1], f[2], f[3], f[4])
            sd.append(time.perf_counter_ns() - t0)

        # cold: everything forgotten before each lookup
        cold = []
        step = max(1, len(flows) // args.samples)
        for f in flows[::step][: args.samples]:
            attr.clear_caches()
            cold.append(timed(f))
        cold_stats = attr.stats()

        # prime, then warm passes
        attr.clear_caches()
        first = [timed(f) for f in flows]
        warm = []
        for _ in range(args.rounds):
            warm.extend(timed(f) for f in flows)

        # new flows: a sleeping worker opens a connection right before the lookup
        newf = []
        before = attr.stats()
        for i in range(args.samples):
            pid = pids[(i * 7919) % len(pids)]
            os.kill(pid, signal.SIGUSR1)
            conn, peer = lst.accept()
            accepted.append(conn)
            (got,) = struct.unpack("=I", conn.recv(4))
            newf.append(timed(("tcp", peer[0], peer[1], "127.0.0.1", tport, got)))
        after = attr.stats()

        report("sockdiag request alone", sd)
        report("cold (all caches empty)", cold)
        report("first pass (learning, in order)", first)
        report("warm (seen flow)", warm)
        report("new flow (caches warm)", newf)
        print(f"wrong/unknown pids: {wrong}")
        print("cold counters:", cold_stats)
        new_scanned = after["pids_scanned"] - before["pids_scanned"]
        print(
            f"new flows: {args.samples} lookups, {new_scanned} pids' fds read "
            f"({new_scanned / args.samples:.1f}/lookup), fallbacks "
            f"{after['fallbacks'] - before['fallbacks']}"
        )
        print("final counters:", attr.stats())
        return 1 if wrong else 0
    finally:
        attr.close()
        spawner.send_signal(signal.SIGTERM)
        try:
            spawner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spawner.kill()
            spawner.wait()
        for c in accepted:
            c.close()
        lst.close()
        usrv.close()
        if cgdir:
            kill = os.path.join(cgdir, "cgroup.kill")
            if os.path.exists(kill):
                Path(kill).write_text("1")
            for _ in range(100):
                try:
                    os.rmdir(cgdir)
                    break
                except OSError:
                    time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
