"""Gateway mode: forwarded new TCP connections per second through a router running
nfguard, against the same router forwarding with no filter, in one run (needs root,
nginx, wrk, dnsmasq).

The gateway lab (tests/e2e/gateway_lab.py): wrk opens a new connection per request
(`Connection: close`) to nginx on the server, from a namespace behind LAN client A, which
A masquerades: so the gateway sees A's address, whose namespace holds no process, as a
real LAN host is no namespace of the gateway's. (wrk in A's own namespace would have the
engine read that namespace's socket table, tens of thousands of TIME_WAIT lines, for
every flow, as it does a container's: 60 ms a flow.) The gateway masquerades too.
nfguard on the gateway judges every forwarded flow by the client A's source address
selects, among `--gateway-clients` client networks (10,000 by default: the index makes
their number cost nothing), either by CIDR (decided at the SYN) or by a name learnt from
the gateway's dnsmasq (the flow waits for its Host). Every nfguard figure is checked
against the audit log.

    sudo .venv/bin/python -m tests.bench --parts gateway
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.bench.bench_connections import NGINX_CONF, WRK_CONNECTIONS, WrkRun, parse_wrk
from tests.bench.report import Figure
from tests.e2e.gateway_lab import LAN_A_GATEWAY_V4, LAN_A_V4, GatewayLab
from tests.e2e.lab import ALLOWED_V4, SERVER_V4

WEB_NAME = "web.gateway.bench.test"
LAN_A_NETWORK = str(ipaddress.ip_interface(f"{LAN_A_V4}/24").network)
DNSMASQ = os.path.realpath(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq")  # as /proc shows it


@contextlib.contextmanager
def gateway_lab() -> Iterator[BenchGateway]:
    """The gateway lab with nginx behind it, dnsmasq on both sides, masquerading; the
    client and the gateway tuned for ~10^5 connections a round (TIME_WAIT reuse, short
    conntrack TIME_WAIT)."""
    with tempfile.TemporaryDirectory() as tmp:
        lab = BenchGateway(Path(tmp))
        try:
            lab.start()
            lab.masquerade()
            (Path(tmp) / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, addr=ALLOWED_V4))
            lab.spawn(lab.server, "nginx", "-c", f"{tmp}/nginx.conf",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.wait_listening(80, "tcp")
            lab.serve_dns(f"--host-record={WEB_NAME},{ALLOWED_V4}")
            lab.serve_lan_dns()
            behind_a(lab)
            lab.exec(lab.behind_a, "sysctl", "-qw",
                     "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1",
                     check=True)
            for ns in (lab.lan_a, lab.gateway):
                lab.exec(ns, "sysctl", "-qw",
                         "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5", check=True)
            yield lab
        finally:
            lab.close()


@dataclass
class BenchGateway(GatewayLab):
    @property
    def behind_a(self) -> str:
        """wrk's namespace, behind LAN client A."""
        return f"{self.tag}i"

    def namespace_names(self) -> tuple[str, ...]:
        return (*super().namespace_names(), self.behind_a)


def behind_a(lab: BenchGateway) -> None:
    """A namespace behind LAN client A (10.77.0.2 on A's `inner`), masqueraded by A."""
    inner = lab.behind_a
    lab._add_netns(inner)
    lab._run("ip", "link", "add", "eth0", "netns", inner, "type", "veth", "peer",
                    "name", "inner", "netns", lab.lan_a)
    for ns, link, address in ((inner, "eth0", "10.77.0.2/24"), (lab.lan_a, "inner",
                                                                 "10.77.0.1/24")):
        lab._run("ip", "-n", ns, "link", "set", link, "up")
        lab._run("ip", "-n", ns, "addr", "add", address, "dev", link)
    lab._run("ip", "-n", inner, "link", "set", "lo", "up")
    lab._run("ip", "-n", inner, "route", "add", "default", "via", "10.77.0.1")
    lab.exec(lab.lan_a, "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    lab.exec(lab.lan_a, "nft", "-f", "-", check=True, input=(
        "table ip behind {\n chain postrouting {\n  type nat hook postrouting priority srcnat;\n"
        '  oifname "eth0" masquerade\n }\n}\n'))


def gateway_policy(clients: int, by_name: bool) -> str:
    """`clients` clients of one /32 each, out of A's network, then A's: allowed the web
    server by name or by CIDR; the gateway's dnsmasq asks upstream."""
    others = "".join(
        f'[[client]]\nname = "host{n}"\nmatch = {{ source = "'
        f'{ipaddress.ip_address("10.128.0.0") + n}" }}\npolicies = ["web"]\n\n'
        for n in range(clients - 1))
    to = f'"{WEB_NAME}"' if by_name else f'"{ALLOWED_V4}/32"'
    return (f'[[client]]\nname = "dnsmasq"\nmatch = {{ exe = "{DNSMASQ}" }}\n'
            f'policies = ["dns"]\nqueries = "any"\n\n{others}'
            f'[[client]]\nname = "lan-a"\nmatch = {{ source = "{LAN_A_NETWORK}" }}\n'
            'policies = ["web"]\n\n'
            f'[[policy]]\nname = "dns"\n[[policy.rule]]\nname = "upstream"\naction = "allow"\n'
            f'to = ["{SERVER_V4}"]\nports = [53]\n\n'
            f'[[policy]]\nname = "web"\n[[policy.rule]]\nname = "server"\naction = "allow"\n'
            f'to = [{to}]\nports = [80]\nproto = "tcp"\n')


def wrk(lab: BenchGateway, seconds: int) -> WrkRun:
    out = lab.exec(lab.behind_a, "wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s",
                   "--timeout", "30s", "-H", "Connection: close", "-H", f"Host: {WEB_NAME}",
                   f"http://{ALLOWED_V4}/", timeout=seconds + 60).stdout
    return parse_wrk(out)


def filtered_rate(lab: BenchGateway, seconds: int, clients: int,
                  by_name: bool) -> tuple[WrkRun, str, bool]:
    """wrk through the gateway with nfguard running; whether the audit log shows its
    flows allowed by lan-a's rule, and how many."""
    lab.audit_path.unlink(missing_ok=True)
    config = lab.write_config(gateway_policy(clients, by_name), forward_from=["lan*"],
                              new_flows_per_user=0)  # one source: the meter would measure it
    lab.start_engine(config)
    try:
        answer = lab.dig(WEB_NAME, server=LAN_A_GATEWAY_V4, ns=lab.lan_a) if by_name else [
            ALLOWED_V4]  # by CIDR the name is not A's to resolve
        if answer != [ALLOWED_V4]:
            raise RuntimeError(f"{WEB_NAME} did not resolve through the gateway: {answer}")
        run = wrk(lab, seconds)
    finally:
        lab.stop_engine()
        lab.nfguard("uninstall", "--config", str(config))
    time.sleep(1.2)  # the audit log's last flush
    decided = [(e["nfguard"].get("client"), e.get("rule", {}).get("name"),
                e["event"]["action"]) for e in lab.audit_events()
               if e.get("destination", {}).get("port") == 80]
    intended = decided.count(("lan-a", "web/server", "allow"))
    ok = intended >= run.requests and len(decided) - intended <= WRK_CONNECTIONS
    return run, f"audit: {intended:,} of {len(decided):,} by lan-a -> web/server", ok


def gateway_rates(seconds: int = 10, clients: int = 10_000) -> list[Figure]:
    """Forwarded new connections/s: no filter, nfguard by CIDR, by name, no filter again."""
    with gateway_lab() as lab:
        wrk(lab, 2)  # warm up
        plain = wrk(lab, seconds)
        cidr = filtered_rate(lab, seconds, clients, by_name=False)
        name = filtered_rate(lab, seconds, clients, by_name=True)
        control = wrk(lab, seconds)

    def shown(result: tuple[WrkRun, str, bool]) -> str:
        run, note, ok = result
        return (f"{run.rate:,.0f}/s ({run.rate / plain.rate:.2f})"
                + ("" if ok else " **not verified**")
                + (f"; wrk errors: {run.errors}" if run.errors else "") + f"; {note}")

    how = (f"{seconds} s, wrk -t2 -c{WRK_CONNECTIONS} behind a LAN client, masquerading "
           "gateway")
    return [
        Figure(f"Forwarded new TCP connections/s through the gateway, no filter ({how})",
               f"{plain.rate:,.0f}/s (1.00)"),
        Figure(f"... nfguard on the gateway, client by source among {clients:,} client "
               "networks, server allowed by CIDR (decided at the SYN)", shown(cidr)),
        Figure("... the same, server allowed by a name learnt from the gateway's dnsmasq "
               "(the flow waits for its Host: 2 queued packets)", shown(name)),
        Figure("... no filter again (control for drift)",
               f"{control.rate:,.0f}/s ({control.rate / plain.rate:.2f})"),
    ]
