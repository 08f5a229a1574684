"""Forwarded flows (containers, VMs behind engine.forward_from's bridges) in the pipeline:
who they are (the ingress interface, no process), their DNS answers, their audit events."""

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
from tests.unit.test_names_wiring import CLIENT, GH, OTHER, Harness, dns_answer

LOOPBACK = socket.if_nametoindex("lo")  # an interface every network namespace has

POLICY = """\
[[client]]
name = "containers"
match = { interface = "lo" }
policies = ["web"]

[[client]]
name = "git"
match = { exe = "/usr/bin/git" }
policies = ["web"]

[[policy]]
name = "web"

[[policy.rule]]
name = "github"
action = "allow"
to = ["github.com"]
ports = [22]
"""


class NoAttribution:
    """A forwarded flow's sender lives in another network namespace: never looked up."""

    def lookup(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a forwarded flow was looked up as a local socket")


def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path, Engine(EngineConfig(), CompiledPolicySet(
        parse_policy_texts([("r.toml", POLICY)]))))
    h.pipeline.attributor = NoAttribution()  # type: ignore[assignment]
    return h


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
