"""Benchmark: what `nfguard exec` adds to a command (no service: the private engine).

- start-up: `nfguard exec --allow-all -- true` against `true`, both run in the lab's client
  namespace (the median of several runs);
- 1,000 connections: one process opening 1,000 TCP connections one after the other to
  the lab's server, alone and under `nfguard exec --allow ADDRESS` (each connection's SYN
  goes through the command's own queue and engine).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.report import Figure
from tests.e2e.lab import ALLOWED_V4, Lab, in_netns, with_resolv_conf

PORT = 8080
# The server speaks first and closes first (it keeps the TIME_WAIT), with a deep backlog:
# the client's own timing is all that is measured.
SERVER = f"""
import socket
s = socket.create_server(("", {PORT}), backlog=1024)
while True:
    c = s.accept()[0]
    c.sendall(b"x")
    c.close()
"""
CONNECT = f"""
import socket
for _ in range({{n}}):
    with socket.create_connection(("{ALLOWED_V4}", {PORT})) as c:
        c.recv(1)
"""


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def exec_costs(runs: int = 10, connections: int = 1000) -> list[Figure]:
    with tempfile.TemporaryDirectory() as workdir:
        lab = Lab(Path(workdir)).start()
        try:
            lab.spawn(lab.server, sys.executable, "-c", SERVER, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
            lab.wait_listening(PORT, "tcp")
            prefix = [*in_netns(lab.client), *with_resolv_conf(lab.resolv_conf)]
            nfguard = [*prefix, sys.executable, "-m", "nfguard", "exec", "--config",
                       str(Path(workdir) / "none.toml")]
            bare = statistics.median(_timed([*prefix, "true"]) for _ in range(runs))
            under = statistics.median(_timed([*nfguard, "--allow-all", "--", "true"])
                                      for _ in range(runs))
            script = [sys.executable, "-c", CONNECT.format(n=connections)]
            alone = statistics.median(_timed([*prefix, *script]) for _ in range(3))
            judged = statistics.median(_timed([*nfguard, "--quiet", "--allow", ALLOWED_V4,
                                               "--", *script]) for _ in range(3))
        finally:
            lab.close()
    return [
        Figure("`nfguard exec --allow-all -- true` against `true` (start-up and clean-up "
               "added)", f"{under * 1000:.0f} ms against {bare * 1000:.0f} ms "
               f"(+{(under - bare) * 1000:.0f} ms)"),
        Figure(f"{connections:,} sequential TCP connections, alone and under `nfguard exec "
               "--allow ADDRESS`", f"{alone:.2f} s against {judged:.2f} s "
               f"(+{(judged - alone - (under - bare)) / connections * 1e6:.0f} µs a "
               "connection, start-up aside)"),
    ]
