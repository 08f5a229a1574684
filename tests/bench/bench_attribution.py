"""Benchmark: what does `Attributor.lookup` cost per flow? (a script, not a pytest test)

Run as root:  python tests/bench/bench_attribution.py [--procs 500] [--samples 300] [--search]

Sets up ~2 live loopback sockets (one TCP connection, one UDP socket — half connected, half
unconnected) in each of N sleeping processes, all in one test cgroup (a service with many
workers), then times lookups:
- warm:         the flow was looked up before (inode cache hit + process info cache);
- new process:  a process forked into the big cgroup just now connects (a short-lived
                client: CI job step, cron, a shell's curl), caches otherwise warm; timed
                with process events (cn_proc) and without (cgroup.procs read per miss);
- hot worker:   one of 8 recently active workers opens another connection;
- random idle worker: a uniformly random one of the N workers opens a connection — the
                worst case, with no hint at all of who it is;
- busy client:  one process keeps 32 connections open and replaces one at a time (a
                connection pool, a load generator): its fd count never changes and the new
                socket reuses the freed fd number; the oldest connection closes first, or a
                random one;
- cold:         every cache emptied before each lookup (includes the cgroup walk);
- sockdiag:     the netlink request/answer alone, for reference.
Every new-flow lookup is a brand-new socket (inode never seen). Also checks that every
answer names the right pid. Cleans up its processes and cgroup.
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
from tests.bench.bench_connections import remove_cgroup

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
def client(*_):
    # a new process in this cgroup: connect, say who we are, leave when hung up on
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        s = socket.create_connection(("127.0.0.1", tport))
        s.sendall(struct.pack("=I", os.getpid()))
        s.recv(1)
        os._exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR2, client)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
print("ready", flush=True)
while True:
    signal.pause()
"""


BUSY = r"""
import os, random, socket, struct, sys
tport, cgdir = int(sys.argv[1]), sys.argv[2]
if cgdir:
    with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
me = struct.pack("=I", os.getpid())
def dial():
    s = socket.create_connection(("127.0.0.1", tport)); s.sendall(me); return s
conns = [dial() for _ in range(32)]
print("ready", flush=True)
for line in sys.stdin:
    i = 0 if line.startswith("oldest") else random.randrange(len(conns))
    conns.pop(i).close()
    conns.append(dial())
"""


def pct(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


def report(name: str, ns: list[int]) -> None:
    us = [v / 1000 for v in ns]
    print(
        f"{name:<36} n={len(us):5d}  median {statistics.median(us):9.1f} µs"
        f"  p99 {pct(us, 0.99):9.1f} µs  max {max(us):9.1f} µs"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5, help="warm passes over all flows")
    ap.add_argument("--root-cgroup", action="store_true", help="leave children in our cgroup")
    ap.add_argument("--search", action="store_true",
                    help="without the kernel's record of socket owners (eBPF): search /proc")
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
    busy: subprocess.Popen | None = None
    attr = Attributor(owners=not args.search)
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

        def new_flow(a: Attributor, trigger: int, sig: int, spin_ns: int = 0) -> int:
            """Make `trigger` open a brand-new connection; time its lookup with `a`.
            spin_ns: busy-wait first, as an engine busy with other packets would be."""
            nonlocal wrong
            os.kill(trigger, sig)
            conn, peer = lst.accept()
            (got,) = struct.unpack("=I", conn.recv(4))
            end = time.perf_counter_ns() + spin_ns
            while time.perf_counter_ns() < end:
                pass
            t0 = time.perf_counter_ns()
            info = a.lookup("tcp", socket.AF_INET, peer[0], peer[1], "127.0.0.1", tport)
            dt = time.perf_counter_ns() - t0
            if info.pid != got:
                wrong += 1
            if sig == signal.SIGUSR2:
                conn.close()  # the client exits
            else:
                accepted.append(conn)
            return dt

        def delta(before: dict[str, int], n: int) -> str:
            after = attr.stats()
            d = {k: after[k] - before[k] for k in ("pids_probed", "pids_scanned", "procs_reads")}
            return (
                f"per lookup: {d['pids_probed'] / n:.1f} pids probed, "
                f"{d['pids_scanned'] / n:.1f} fd lists read, "
                f"{d['procs_reads'] / n:.2f} cgroup.procs reads"
            )

        # reference: a warm lookup of a known flow, right after the same kind of wake-up
        # (blocked in accept/recv) the new-flow samples start from; on an idle VM a woken
        # thread runs its first microseconds of work several times slower
        wake = []
        for i in range(args.samples):
            os.kill(pids[(i * 7919) % len(pids)], signal.SIGUSR1)
            conn, _peer = lst.accept()
            conn.recv(4)
            accepted.append(conn)
            wake.append(timed(flows[(i * 31) % len(flows)]))

        time.sleep(0.2)
        attr.poll_events()
        b = attr.stats()
        newproc = [new_flow(attr, spawner.pid, signal.SIGUSR2) for _ in range(args.samples)]
        newproc_note = delta(b, args.samples)

        # the new-process route's own cost, CPU warm: one settled new process, its inode,
        # pid and fd-dir caches dropped before each lookup so the whole route runs
        os.kill(spawner.pid, signal.SIGUSR2)
        conn, peer = lst.accept()
        (got,) = struct.unpack("=I", conn.recv(4))
        time.sleep(0.05)
        attr.poll_events()
        flow_np = ("tcp", peer[0], peer[1], "127.0.0.1", tport, got)
        attr.lookup("tcp", socket.AF_INET, *flow_np[1:5])
        tight = []
        for _ in range(args.samples):
            inode = attr.lookup("tcp", socket.AF_INET, *flow_np[1:5]).inode
            assert inode is not None
            attr._inodes.pop(inode)
            attr._procs.pop(got)
            attr._fds.drop(got)
            tight.append(timed(flow_np))
        conn.close()

        spin = 500_000
        newproc_busy = [
            new_flow(attr, spawner.pid, signal.SIGUSR2, spin) for _ in range(args.samples)
        ]

        hot = pids[:8]
        b = attr.stats()
        hotw = [new_flow(attr, hot[i % 8], signal.SIGUSR1) for i in range(args.samples)]
        hot_note = delta(b, args.samples)

        b = attr.stats()
        randw = [
            new_flow(attr, pids[(i * 7919) % len(pids)], signal.SIGUSR1)
            for i in range(args.samples)
        ]
        rand_note = delta(b, args.samples)
        hotw_busy = [new_flow(attr, hot[i % 8], signal.SIGUSR1, spin) for i in range(args.samples)]
        randw_busy = [
            new_flow(attr, pids[(i * 7907) % len(pids)], signal.SIGUSR1, spin)
            for i in range(args.samples)
        ]

        busy = subprocess.Popen(
            [sys.executable, "-c", BUSY, str(tport), cgdir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert busy.stdin is not None and busy.stdout is not None
        busy.stdout.readline()
        for _ in range(32):
            accepted.append(lst.accept()[0])

        def busy_flow(a: Attributor, which: str) -> int:
            nonlocal wrong
            assert busy.stdin is not None
            busy.stdin.write(which + "\n")
            busy.stdin.flush()
            conn, peer = lst.accept()
            conn.recv(4)
            accepted.append(conn)
            t0 = time.perf_counter_ns()
            info = a.lookup("tcp", socket.AF_INET, peer[0], peer[1], "127.0.0.1", tport)
            dt = time.perf_counter_ns() - t0
            if info.pid != busy.pid:
                wrong += 1
            return dt

        busy_flow(attr, "oldest")
        b = attr.stats()
        busy_fifo = [busy_flow(attr, "oldest") for _ in range(args.samples)]
        busy_fifo_note = delta(b, args.samples)
        b = attr.stats()
        busy_rand = [busy_flow(attr, "random") for _ in range(args.samples)]
        busy_rand_note = delta(b, args.samples)

        # the same new-process case without process events (not the initial netns, or
        # no CAP_NET_ADMIN): cgroup.procs is read on every miss
        plain = Attributor(events=False, owners=not args.search)
        try:
            for f in flows:  # warm its caches like the main one
                plain.lookup(f[0], socket.AF_INET, f[1], f[2], f[3], f[4])
            noev = [new_flow(plain, spawner.pid, signal.SIGUSR2) for _ in range(args.samples)]
            busy_flow(plain, "oldest")
            busy_noev = [busy_flow(plain, "oldest") for _ in range(args.samples)]
        finally:
            plain.close()

        print(f"process events (cn_proc): {'on' if attr.live_members else 'unavailable'}; "
              f"socket owners recorded by eBPF: {'on' if attr.recorded_owners else 'off'}")
        report("sockdiag request alone", sd)
        report("cold (all caches empty)", cold)
        report("first pass (learning, in order)", first)
        report("warm (seen flow)", warm)
        print("-- timed as soon as the engine wakes (idle engine):")
        report("warm, right after a wake-up", wake)
        report("new flow: new process", newproc)
        print(f"{'':36}{newproc_note}")
        report("new flow: new process, no cn_proc", noev)
        report("new flow: hot worker (1 of 8)", hotw)
        print(f"{'':36}{hot_note}")
        report(f"new flow: random idle worker (of {len(pids)})", randw)
        print(f"{'':36}{rand_note}")
        report("new flow: busy client, oldest closed", busy_fifo)
        print(f"{'':36}{busy_fifo_note}")
        report("new flow: busy client, random closed", busy_rand)
        print(f"{'':36}{busy_rand_note}")
        report("new flow: busy client, no cn_proc", busy_noev)
        print("-- tight loop, CPU warm (the code path's own cost):")
        report("new flow: new process, route only", tight)
        print("-- timed after 0.5 ms of busy work (an engine busy with other packets):")
        report("new flow: new process", newproc_busy)
        report("new flow: hot worker (1 of 8)", hotw_busy)
        report(f"new flow: random idle worker (of {len(pids)})", randw_busy)
        print(f"wrong/unknown pids: {wrong}")
        print("cold counters:", cold_stats)
        print("final counters:", attr.stats())
        return 1 if wrong else 0
    finally:
        attr.close()
        if busy is not None:
            busy.kill()
            busy.wait()
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
            remove_cgroup(cgdir)


if __name__ == "__main__":
    sys.exit(main())
