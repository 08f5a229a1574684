"""Every DNS query judged by its name: the pipeline's query path (no root, nothing sent)."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import Engine
from nfguard.metrics import Stats
from nfguard.names.inject import Unsent
from nfguard.names.queries import queued
from nfguard.pipeline import Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import Client

CLIENT, SERVER = "10.0.0.2", "10.0.0.53"
POLICY = """\
[[client]]
name = "everyone"
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
name = "site"
action = "allow"
to = ["*.allowed.test"]
ports = [443]

[[policy.rule]]
name = "dns"
action = "allow"
to = ["10.0.0.53", "127.0.0.0/8"]
ports = [53]
"""


class Host:
    def __init__(self, tmp_path: Path, mode: str = "enforce", loopback: bool = False) -> None:
        self.now = 1_700_000_000.0
        self.path = tmp_path / "audit.jsonl"
        self.released: list[tuple[Any, int]] = []
        self.refusals = Unsent()
        self.stats = Stats()
        engine = Engine(EngineConfig(mode=mode, filter_loopback=loopback),
                        CompiledPolicySet(parse_policy_texts([("p.toml", POLICY)])))
        self.pipeline = Pipeline(engine, AuditLog(str(self.path)), self.stats,
                                 clock=lambda: self.now, settings=NamesConfig(resolvers=()),
                                 release=lambda token, mark: self.released.append((token, mark)),
                                 refusals=self.refusals)

    def send(self, raw: bytes, token: Any = None) -> int | marks.Held:
        return self.pipeline.handle(raw, marks.QUEUED, 3, token)

    def events(self) -> list[dict]:
        self.pipeline.audit.flush()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def queries(self) -> list[dict]:
        return [e for e in self.events() if "dns" in e]


def udp(name: str, qtype: str = "A", dst: str = SERVER, sport: int = 40000,
        ident: int = 7) -> bytes:
    return bytes(IP(src=CLIENT, dst=dst) / UDP(sport=sport, dport=53)
                 / DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def message(name: str, ident: int = 1) -> bytes:
    body = bytes(DNS(id=ident, rd=1, qd=DNSQR(qname=name)))
    return struct.pack("!H", len(body)) + body


def tcp(data: bytes, seq: int, flags: str = "PA") -> bytes:
    packet = IP(src=CLIENT, dst=SERVER) / TCP(sport=41000, dport=53, flags=flags, seq=seq)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def test_a_name_outside_the_policy_never_leaves_and_is_refused_at_once(tmp_path: Path) -> None:
    host = Host(tmp_path)
    assert host.send(udp("c2VjcmV0.attacker.test", "TXT", ident=99)) is marks.DROP
    [(query, answer)] = host.refusals.sent
    assert (query.src, query.sport, query.dst) == (CLIENT, 40000, SERVER)
    assert DNS(answer).id == 99 and DNS(answer).rcode == 5 and DNS(answer).qr == 1
    [event] = host.queries()
    assert event["dns"] == {"type": "query",
                            "question": {"name": "c2vjcmv0.attacker.test", "type": "TXT"}}
    assert event["event"]["action"] == "deny" and event["nfguard"]["verdict"] == "deny"
    assert event["event"]["reason"] == "name_not_allowed"
    assert event["nfguard"]["client"] == "everyone" and event["nfguard"]["mode"] == "enforce"
    assert event["network"]["transport"] == "udp"
    assert (host.stats.dns_queries, host.stats.dns_queries_refused) == (1, 1)


def test_every_datagram_on_one_socket_is_judged(tmp_path: Path) -> None:
    """A decided flow's later queries too: a tunnel's thousands on one socket."""
    host = Host(tmp_path)
    assert host.send(udp("www.allowed.test")) == marks.ALLOW
    assert host.send(udp("www.allowed.test", "AAAA")) == marks.ALLOW
    for n in range(5):
        assert host.send(udp(f"chunk{n}.attacker.test")) is marks.DROP
    assert len(host.refusals.sent) == 5
    assert len([e for e in host.events() if "dns" not in e]) == 1, "one flow event"
    assert [e["event"]["action"] for e in host.queries()] == ["allow"] * 2 + ["deny"] * 5


def test_allowed_queries_are_recorded_once_per_window_refused_ones_always(
        tmp_path: Path) -> None:
    host = Host(tmp_path)
    for _ in range(3):
        host.send(udp("www.allowed.test"))
        host.send(udp("x.attacker.test"))
    assert [e["event"]["action"] for e in host.queries()] == ["allow", "deny", "deny", "deny"]
    host.now += 11
    host.send(udp("www.allowed.test"))
    assert len(host.queries()) == 5


def test_audit_mode_lets_every_query_out_and_records_what_it_would_have_done(
        tmp_path: Path) -> None:
    host = Host(tmp_path, mode="audit")
    assert host.send(udp("x.attacker.test")) == marks.ALLOW
    [event] = host.queries()
    assert (event["event"]["action"], event["nfguard"]["verdict"]) == ("deny", "allow")
    assert host.refusals.sent == []


def test_an_unreadable_query_is_dropped_and_counted(tmp_path: Path) -> None:
    host = Host(tmp_path)
    notify = bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53)
                   / DNS(opcode=4, qd=DNSQR(qname="www.allowed.test")))
    assert host.send(notify) is marks.DROP
    assert host.send(bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53)
                           / Raw(b"not dns"))) is marks.DROP
    assert host.stats.dns_queries_unparseable == 2 and host.refusals.sent == []


def test_a_local_stub_is_asked_over_loopback_and_judged_by_name_alone(tmp_path: Path) -> None:
    host = Host(tmp_path)
    assert host.send(udp("www.allowed.test", dst="127.0.0.53")) == marks.ALLOW
    assert host.send(udp("x.attacker.test", dst="127.0.0.53")) is marks.DROP
    assert [e for e in host.events() if "dns" not in e] == [], "loopback flows unjudged"


def test_tcp_pipelined_queries_are_each_judged(tmp_path: Path) -> None:
    host = Host(tmp_path)
    assert host.send(tcp(b"", 99, "S")) == marks.ALLOW  # the handshake: the flow's path
    two = message("a.allowed.test", 1) + message("b.allowed.test", 2)
    assert host.send(tcp(two, 100)) == marks.ALLOW
    assert host.send(tcp(two, 100)) == marks.ALLOW, "a retransmit, judged already"
    bad = message("c.allowed.test", 3) + message("x.attacker.test", 4)
    assert host.send(tcp(bad, 100 + len(two))) == marks.DENY  # cut: a reset, at once
    assert [e["dns"]["question"]["name"] for e in host.queries()] == [
        "a.allowed.test", "b.allowed.test", "c.allowed.test", "x.attacker.test"]


def test_tcp_a_query_split_over_segments_is_held_until_whole(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.send(tcp(b"", 99, "S"))
    whole = message("x.attacker.test")
    assert host.send(tcp(whole[:5], 100), token="first") is marks.HOLD
    assert host.send(tcp(whole[:5], 100), token="again") is marks.DROP, \
        "a retransmit of held bytes does not pass before they are judged"
    assert host.send(tcp(whole[9:], 109), token="ahead") is marks.DROP, "out of order"
    assert host.send(tcp(whole[5:], 105), token="rest") == marks.DENY
    assert host.released == [("first", marks.DENY)]


def test_queries_are_queued_only_if_some_are_judged() -> None:
    override = Client("c", (), ("p",), None, None, "policy")  # type: ignore[arg-type]
    assert queued("policy", ())
    assert not queued("any", ())
    assert queued("any", (override,))
    assert not queued("any", (dataclasses.replace(override, queries="any"),))
