"""A gateway lab: the two-host lab (lab.py) whose client host is a router for two LAN
clients, each in a namespace of its own behind a plain routed port (no bridge):

    lan A (eth0) ── lan1 ┐
                         gateway (nfguard, dnsmasq) veth0 ── veth0 server
    lan B (eth0) ── lan2 ┘

The gateway forwards (ip_forward, IPv6 forwarding) and either masquerades toward the
server (`masquerade`) or routes the LANs' addresses as they are (`route_back`: the server
routes them to the gateway). `serve_lan_dns` runs the gateway's dnsmasq on its LAN
addresses, asking the lab's DNS server upstream: the clients' resolver. Every name is the
lab's tag plus a letter; `close()` removes all four namespaces, whatever was made.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from tests.e2e.lab import CLIENT_V4, CLIENT_V6, SERVER_V4, Lab

# LAN A: 198.18.8.0/24 and fd00:18:8::/64 on the gateway's lan1; A's second address (.200,
# ::200) is one the tests' client networks leave out. LAN B: 198.18.9.0/24, fd00:18:9::/64
# on lan2. The gateway has .1 / ::1 on each.
LAN_A_V4, LAN_A_SPARE_V4, LAN_A_GATEWAY_V4 = "198.18.8.2", "198.18.8.200", "198.18.8.1"
LAN_A_V6, LAN_A_SPARE_V6, LAN_A_GATEWAY_V6 = "fd00:18:8::2", "fd00:18:8::200", "fd00:18:8::1"
LAN_B_V4, LAN_B_GATEWAY_V4 = "198.18.9.2", "198.18.9.1"
LAN_B_V6, LAN_B_GATEWAY_V6 = "fd00:18:9::2", "fd00:18:9::1"
LAN_NETWORKS = ("198.18.8.0/24", "fd00:18:8::/64", "198.18.9.0/24", "fd00:18:9::/64")
LAN_PORTS = ("lan1", "lan2")  # the gateway's ends; engine.forward_from = ["lan*"]
UPLINK = "veth0"


@dataclass
class GatewayLab(Lab):
    @property
    def gateway(self) -> str:
        """The namespace running nfguard: the base lab's client host."""
        return self.client

    @property
    def lan_a(self) -> str:
        return f"{self.tag}a"

    @property
    def lan_b(self) -> str:
        return f"{self.tag}b"

    @property
    def nat_table(self) -> str:
        return f"{self.tag}nat"

    def _link_hosts(self) -> None:
        super()._link_hosts()
        gateway = self.gateway
        lans = ((self.lan_a, "lan1", (LAN_A_V4, LAN_A_SPARE_V4), LAN_A_GATEWAY_V4,
                 (LAN_A_V6, LAN_A_SPARE_V6), LAN_A_GATEWAY_V6),
                (self.lan_b, "lan2", (LAN_B_V4,), LAN_B_GATEWAY_V4, (LAN_B_V6,),
                 LAN_B_GATEWAY_V6))
        for ns, port, hosts_v4, gateway_v4, hosts_v6, gateway_v6 in lans:
            self._add_netns(ns)
            self._run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer",
                      "name", port, "netns", gateway)
            for where, link in ((ns, "lo"), (ns, "eth0"), (gateway, port)):
                self._run("ip", "-n", where, "link", "set", link, "up")
            self._run("ip", "-n", gateway, "addr", "add", f"{gateway_v4}/24", "dev", port)
            self._run("ip", "-n", gateway, "addr", "add", f"{gateway_v6}/64", "dev", port,
                      "nodad")
            for host in hosts_v4:
                self._run("ip", "-n", ns, "addr", "add", f"{host}/24", "dev", "eth0")
            for n, host in enumerate(hosts_v6):  # the spare deprecated: never a source
                self._run("ip", "-n", ns, "addr", "add", f"{host}/64", "dev", "eth0", "nodad",
                          *(("preferred_lft", "0") if n else ()))
            self._run("ip", "-n", ns, "route", "add", "default", "via", gateway_v4)
            self._run("ip", "-n", ns, "-6", "route", "add", "default", "via", gateway_v6)
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            self.exec(gateway, "sysctl", "-qw", f"{key}=1", check=True)

    @staticmethod
    def _run(*argv: str) -> None:
        subprocess.run(argv, check=True, timeout=30, capture_output=True)

    def masquerade(self) -> None:
        """SNAT toward the uplink, both families (a table of the lab's own name)."""
        self.exec(self.gateway, "nft", "-f", "-", check=True, input=self.nat_rules())

    def nat_rules(self) -> str:
        """The masquerade's table, as `nft -f` reads it."""
        return (f"table inet {self.nat_table} {{\n chain postrouting {{\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                f'  oifname "{UPLINK}" masquerade\n }}\n}}\n')

    def route_back(self) -> None:
        """No NAT: the server routes the LANs to the gateway and sees their addresses."""
        for network in LAN_NETWORKS:
            via = CLIENT_V6 if ":" in network else CLIENT_V4
            self.exec(self.server, "ip", "route", "add", network, "via", via, check=True)

    def serve_lan_dns(self) -> None:
        """dnsmasq on the gateway's LAN addresses, asking the lab's server (no cache, so
        every query it forwards is one the server sees)."""
        addresses = (LAN_A_GATEWAY_V4, LAN_A_GATEWAY_V6, LAN_B_GATEWAY_V4, LAN_B_GATEWAY_V6)
        self.spawn(self.gateway, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                   "--no-hosts", "--no-poll", "--bind-interfaces", "--user=root",
                   "--pid-file=", "--log-facility=-", "--cache-size=0",
                   f"--server={SERVER_V4}",
                   *(f"--listen-address={address}" for address in addresses),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for address in addresses:
            self.wait_listening(53, "udp", address=address, ns=self.gateway)

    def namespace_names(self) -> tuple[str, ...]:
        return (self.gateway, self.server, self.lan_a, self.lan_b)
