"""Forwarded flows (containers, VMs behind engine.forward_from's bridges) in the pipeline:
who they are (the ingress interface, and a container's process), their DNS answers, their
audit events."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNSRR
from scapy.layers.inet import IP, UDP

from nfguard import marks
from nfguard.audit import text_line
from nfguard.config import EngineConfig
from nfguard.engine import Engine
from nfguard.pipeline import FORWARD
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import ProcessInfo
from tests.unit.names.test_learner import CLIENT, GH, OTHER, Harness, dns_answer

LOOPBACK = socket.if_nametoindex("lo")  # an interface every network namespace has

POLICY = """\
[[client]]
name = "git"
match = { exe = "/usr/bin/git" }
policies = ["web"]

[[client]]
name = "git-in-containers"
match = { interface = "lo", exe = "/usr/bin/git" }
policies = ["web"]

[[client]]
name = "containers"
match = { interface = "lo" }
policies = ["web"]

[[policy]]
name = "web"

[[policy.rule]]
name = "github"
action = "allow"
to = ["github.com"]
ports = [22]
"""


class ContainerSenders:
    """A forwarded flow's sender lives in another network namespace: it is looked up there
    (`exe`: what that lookup finds; None: a VM, or a socket already gone)."""

    def __init__(self) -> None:
        self.exe: str | None = None
        self.asked: list[tuple] = []

    def lookup(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a forwarded flow was looked up as a local socket")

    def lookup_forwarded(self, proto: str, family: int, src: str, sport: int, dst: str,
                         dport: int, interface: str, hash_exe: bool = False) -> ProcessInfo:
        self.asked.append((proto, family, src, sport, dst, dport, interface))
        if self.exe is None:
            return ProcessInfo(interface=interface)
        return ProcessInfo(uid=0, user="root", pid=4242, exe=self.exe, interface=interface)


def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path, Engine(EngineConfig(), CompiledPolicySet(
        parse_policy_texts([("r.toml", POLICY)]))))
    h.pipeline.attributor = ContainerSenders()  # type: ignore[assignment]
    return h


def senders(h: Harness) -> ContainerSenders:
    assert isinstance(h.pipeline.attributor, ContainerSenders)
    return h.pipeline.attributor


def datagram(dst: str, dport: int) -> bytes:
    return bytes(IP(src=CLIENT, dst=dst) / UDP(sport=5000, dport=dport))


def forward(h: Harness, raw: bytes, mark: int = marks.QUEUED, indev: int = LOOPBACK) -> Any:
    return h.pipeline.handle(raw, mark, FORWARD, None, None, indev)


def test_a_forwarded_flow_is_its_interface_and_no_process(tmp_path: Path) -> None:
    h = harness(tmp_path)
    assert forward(h, dns_answer(DNSRR(rrname="github.com", type="A", ttl=300, rdata=GH)),
                   marks.ANSWER) == marks.ALLOW
    # UDP: decided on the first datagram (TCP to a port with name rules waits for the name)
    assert forward(h, datagram(GH, 22)) == marks.ALLOW
    assert forward(h, datagram(OTHER, 22)) == marks.DENY
    allowed, denied = h.events()
    assert allowed["nfguard"]["client"] == "containers"
    assert allowed["destination"]["domain"] == "github.com"
    assert allowed["observer"] == {"ingress": {"interface": {"name": "lo"}}}
    assert "process" not in allowed and "user" not in allowed
    assert denied["event"]["reason"] == "no_rule_match"
    assert "via=lo" in text_line(allowed)
    assert senders(h).asked[0] == ("udp", 4, CLIENT, 5000, GH, 22, "lo")


def test_a_container_process_matches_only_clients_that_name_its_interface(
        tmp_path: Path) -> None:
    """The exe-only client "git" comes first, but speaks of the host's own programs: a
    container's /usr/bin/git is whatever its image put there."""
    h = harness(tmp_path)
    h.learn("github.com", GH)
    senders(h).exe = "/usr/bin/git"
    assert forward(h, datagram(GH, 22)) == marks.ALLOW
    senders(h).exe = "/usr/bin/curl"
    assert forward(h, datagram(GH, 22)) == marks.ALLOW
    git, curl = h.events()
    assert git["nfguard"]["client"] == "git-in-containers"
    assert git["process"]["executable"] == "/usr/bin/git" and git["process"]["pid"] == 4242
    assert git["observer"] == {"ingress": {"interface": {"name": "lo"}}}
    assert curl["nfguard"]["client"] == "containers"


def test_the_host_own_flows_do_not_match_the_interface_key(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.learn("github.com", GH)
    h.pipeline.attributor = None
    assert h.out(datagram(GH, 22)) == marks.DENY
    [event] = h.events()
    assert event["event"]["reason"] == "no_client_match" and "observer" not in event


def test_a_port_53_flow_without_the_answer_mark_is_judged_not_learnt(tmp_path: Path) -> None:
    """Source port 53 is the sender's choice: only the ruleset's ANSWER mark (set on replies
    to queries) makes a forwarded packet an answer."""
    h = harness(tmp_path)
    forged = dns_answer(DNSRR(rrname="github.com", type="A", ttl=300, rdata=OTHER))
    assert forward(h, forged) == marks.DENY, "a new flow from port 53, and nothing allows it"
    assert h.stats.dns_answers == 0 and OTHER not in h.pipeline.names, "nothing learnt"
    assert forward(h, dns_answer(DNSRR(rrname="github.com", type="A", ttl=300, rdata=GH)),
                   marks.ANSWER) == marks.ALLOW
    assert h.stats.dns_answers == 1 and GH in h.pipeline.names


def test_an_interface_gone_before_its_packet_is_read_keeps_its_index(tmp_path: Path) -> None:
    h = harness(tmp_path)
    assert forward(h, datagram(OTHER, 22), indev=987654) == marks.DENY
    [event] = h.events()
    assert event["observer"]["ingress"]["interface"]["name"] == "#987654"
    assert event["event"]["reason"] == "no_client_match"
