"""Records the nftables change notifications test_ruleset_watch.py replays, from a real
kernel: `sudo python -m tests.unit.record_nft_events` makes a scratch network namespace,
listens there as `nft monitor` does (NETLINK_NETFILTER, group NFNLGRP_NFTABLES), runs
each step below and writes what arrived to nft_events.json.gz; and the kernel's answer to
nfguard.undecided's conntrack dumps after a few flows (UDP out of a veth, v4 and v6,
and a TCP connection on loopback), for test_undecided.py. Needs root, nft and
iptables-nft; touches only its own namespace."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from nfguard.ruleset_watch import open_events
from nfguard.undecided import NETLINK_NETFILTER, dump_request

OUT = Path(__file__).with_name("nft_events.json.gz")
NAMESPACE = "nfgrecord"

# Debian's /etc/nftables.conf in short, as nftables.service loads it.
DEBIAN_CONF = "flush ruleset\ntable inet filter {\n\tchain input {\n" \
              "\t\ttype filter hook input priority filter;\n\t}\n}\n"


def steps(config: str, conf: str) -> dict[str, list[tuple[list[str], str | None]]]:
    install = ([sys.executable, "-m", "nfguard", "install", "--config", config], None)
    return {
        "install": [install],
        "flush_ruleset": [(["nft", "flush", "ruleset"], None)],
        "reinstall_after_flush": [install],
        "delete_table": [(["nft", "delete", "table", "inet", "nfguard"], None)],
        "reinstall_after_delete": [install],
        "reinstall_over_itself": [install],
        "nftables_service": [(["nft", "-f", conf], None)],
        "reinstall_after_service": [install],
        "iptables_restore_security": [(["iptables-restore"], "*security\nCOMMIT\n"),
                                      (["ip6tables-restore"], "*security\nCOMMIT\n")],
        "iptables_restore_filter": [(["iptables-restore"], "*filter\nCOMMIT\n")],
        "reinstall_after_restore": [install],
        "other_table": [
            (["nft", "add", "table", "inet", "other"], None),
            (["nft", "add", "chain", "inet", "other", "out",
              "{ type filter hook output priority 0; }"], None),
            (["nft", "add", "rule", "inet", "other", "out", "tcp", "dport", "22", "accept"],
             None),
            (["nft", "delete", "table", "inet", "other"], None)],
        "user_security_rule": [
            (["iptables", "-t", "security", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j",
              "ACCEPT"], None),
            (["iptables", "-t", "security", "-D", "OUTPUT", "-p", "tcp", "--dport", "9", "-j",
              "ACCEPT"], None)],
        "insert_into_nfguard": [(["nft", "insert", "rule", "inet", "nfguard", "egress",
                                  "accept"], None)],
        "delete_rule_of_nfguard": [(["nft", "flush", "chain", "inet", "nfguard", "cut"], None)],
    }


def record(config: str, conf: str) -> dict[str, list[str]]:
    sock = open_events()
    recorded = {}
    for name, commands in steps(config, conf).items():
        for argv, text in commands:
            subprocess.run(argv, input=text, text=True, check=True, capture_output=True)
        datagrams = []
        while True:
            try:
                datagrams.append(base64.b64encode(sock.recv(1 << 16)).decode())
            except BlockingIOError:
                break
        recorded[name] = datagrams
    recorded["conntrack_dump"] = conntrack_dump()
    return recorded


def conntrack_dump() -> dict[str, list[str]]:
    for argv in (["ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"],
                 ["ip", "link", "set", "dummy0", "up"], ["ip", "link", "set", "lo", "up"],
                 ["ip", "addr", "add", "192.0.2.1/24", "dev", "dummy0"],
                 ["ip", "addr", "add", "2001:db8::1/64", "dev", "dummy0", "nodad"]):
        subprocess.run(argv, check=True)
    for family, address in ((socket.AF_INET, "192.0.2.2"), (socket.AF_INET6, "2001:db8::2")):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (address, 9))
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    answers = {}
    for source in ("192.0.2.1", "127.0.0.1", None):
        family = socket.AF_INET6 if source is None else socket.AF_INET
        sock.send(dump_request(family, source and ipaddress.ip_address(source)))
        datagrams = answers[source or "ipv6"] = []
        while True:
            data = sock.recv(1 << 17)
            datagrams.append(base64.b64encode(data).decode())
            if len(data) >= 6 and int.from_bytes(data[4:6], "little") in (2, 3):  # error, done
                break
    client.close()
    listener.close()
    return answers


def main() -> None:
    if len(sys.argv) > 1:  # inside the namespace
        OUT.write_bytes(gzip.compress(json.dumps(record(*sys.argv[1:3]), indent=0).encode()))
        return
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "rules").mkdir()
        config, conf = Path(scratch) / "nfguard.toml", Path(scratch) / "nftables.conf"
        config.write_text(f'[engine]\npolicy_dir = "{scratch}/rules"\n')
        conf.write_text(DEBIAN_CONF)
        subprocess.run(["ip", "netns", "add", NAMESPACE], check=True)
        try:
            subprocess.run(["nsenter", f"--net=/run/netns/{NAMESPACE}", "--", sys.executable,
                            "-m", "tests.unit.record_nft_events", str(config), str(conf)],
                           check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        finally:
            subprocess.run(["ip", "netns", "del", NAMESPACE], check=False)


if __name__ == "__main__":
    main()
