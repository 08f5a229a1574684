"""New TCP connections per second through nfguard versus no filter, in the same run.

nginx serves in one namespace; wrk opens a new connection per request (`Connection: close`)
from another, where the ruleset and the engine run. Three rounds: no filter, a bare
accept-all NetfilterQueue loop (the ceiling for any Python engine), and nfguard with a
CIDR policy (and its audit log). Prints the rates and the ratios. Needs root, nginx, wrk.

    sudo .venv/bin/python -m tests.bench.bench_connections [--seconds 10] [--rules 1000]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from tests.e2e.lab import ALLOWED_V4, Lab

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 0;
    server {{
        listen {addr}:80 reuseport backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

ACCEPT_ALL = """
import sys
from netfilterqueue import NetfilterQueue
from nfguard import marks
def accept(packet):
    packet.set_mark(marks.with_verdict(packet.get_mark(), marks.ALLOW))
    packet.accept()
q = NetfilterQueue()
q.bind(0, accept, max_len=4096, range=4016)
print("bound", flush=True)
q.run()
"""


def policy(extra_cidrs: int) -> str:
    """An allow rule for the server among `extra_cidrs` other networks in deny rules."""
    rng = random.Random(7)
    nets = sorted({str(ipaddress.ip_network((rng.getrandbits(32) & 0xFFFFFF00, 24)))
                   for _ in range(extra_cidrs)} - {"198.18.1.0/24"})
    to = ", ".join(f'"{n}"' for n in nets) or '"203.0.113.0/24"'
    return textwrap.dedent(f"""
        [[client]]
        name = "everyone"
        policies = ["blocklist", "web"]

        [[policy]]
        name = "blocklist"
        [[policy.rule]]
        name = "bad-nets"
        action = "deny"
        to = [{to}]

        [[policy]]
        name = "web"
        [[policy.rule]]
        name = "server"
        action = "allow"
        to = ["198.18.1.0/24"]
        ports = [80]
        proto = "tcp"
    """)


def wrk(lab: Lab, seconds: int) -> float:
    out = lab.exec(lab.client, "wrk", "-t2", "-c32", f"-d{seconds}s", "-H", "Connection: close",
                   f"http://{ALLOWED_V4}/", timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk said:\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"    wrk socket errors: {errors.group(1)}", file=sys.stderr)
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rules", type=int, default=1000, help="CIDRs in the deny rule")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp)).start()
        try:
            (Path(tmp) / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, addr=ALLOWED_V4))
            lab.spawn(lab.server, "nginx", "-c", f"{tmp}/nginx.conf",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.wait_listening(80, "tcp")
            # Every round leaves ~10^5 TIME_WAIT sockets; without these the later rounds
            # measure the kernel's hunt for a free port, not the filter.
            lab.exec(lab.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535",
                     "net.ipv4.tcp_tw_reuse=1", check=True)
            wrk(lab, 2)  # warm up
            results = {"no filter": wrk(lab, args.seconds)}

            config = lab.write_config(policy(args.rules))
            lab.nfguard("install", "--config", str(config))
            bare = lab.spawn(lab.client, sys.executable, "-c", ACCEPT_ALL,
                             stdout=subprocess.PIPE, text=True)
            assert bare.stdout is not None and bare.stdout.readline().strip() == "bound"
            results["accept-all NetfilterQueue loop"] = wrk(lab, args.seconds)
            bare.kill()
            bare.wait()

            lab.start_engine(config)
            time.sleep(0.5)
            results[f"nfguard, CIDR policy ({args.rules} CIDRs), audit log"] = wrk(
                lab, args.seconds)
            lab.stop_engine()
            events = sum(1 for _ in lab.audit_path.open())
            lab.nfguard("uninstall", "--config", str(config))
            results["no filter, again (control for drift)"] = wrk(lab, args.seconds)
        finally:
            lab.close()
    base = results["no filter"]
    print(f"\nnew TCP connections/s, {args.seconds}s each, wrk -t2 -c32, Connection: close")
    print(f"{'':44} {'conn/s':>10} {'ratio':>7}")
    for name, rate in results.items():
        print(f"{name:44} {rate:10.0f} {rate / base:7.2f}")
    print(f"audit events written by nfguard: {events}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
