"""Every DNS query judged by its name: the pipeline's query path (no root, nothing sent)."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import Engine
from nfguard.metrics.counts import Stats
from nfguard.names import queries
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


def test_tcp_urgent_data_or_a_reset_with_bytes_cuts_the_stream(tmp_path: Path) -> None:
    """The server's recv() skips the urgent byte: it would frame another stream than the
    one read here."""
    host = Host(tmp_path)
    host.send(tcp(b"", 99, "S"))
    whole = message("www.allowed.test")
    assert host.send(tcp(whole[:5], 100), token="first") is marks.HOLD
    assert host.send(tcp(whole[5:], 105, "PAU")) == marks.DENY
    assert host.released == [("first", marks.DENY)]
    assert host.stats.dns_queries_unparseable == 1
    # a reset's bytes are never read by the server either: they are not a query's
    host.send(tcp(b"", 199, "S"))
    assert host.send(tcp(message("x.attacker.test"), 200, "R")) == marks.DENY
    assert host.queries() == []


def test_a_query_the_queue_copied_in_part_is_not_judged_by_its_part(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.send(tcp(b"", 99, "S"))
    two = message("www.allowed.test") + message("x.attacker.test")
    assert host.send(tcp(two, 100)[:-4]) == marks.DENY, "its end was never seen"
    assert host.send(udp("www.allowed.test")[:-2]) is marks.DROP
    assert host.stats.dns_queries_unparseable == 2 and host.queries() == []


def test_a_retransmit_must_carry_the_bytes_read(tmp_path: Path) -> None:
    """A raw socket can resend a range whose first copy the server dropped, with other
    bytes: the same bytes pass, other ones (or too old to check) cut the stream."""
    host = Host(tmp_path)
    host.send(tcp(b"", 99, "S"))
    first, second = message("a.allowed.test", 1), message("b.allowed.test", 2)
    assert host.send(tcp(first + second, 100)) == marks.ALLOW
    assert host.send(tcp(second, 100 + len(first))) == marks.ALLOW, "a true retransmit"
    third = message("c.allowed.test", 3)
    assert host.send(tcp(second[-3:] + third, 100 + len(first + second) - 3)) == marks.ALLOW
    forged = message("x.attacker.test", 2)[:len(second)].ljust(len(second), b"\0")
    assert host.send(tcp(forged, 100 + len(first))) == marks.DENY
    assert [e["dns"]["question"]["name"] for e in host.queries()] == [
        "a.allowed.test", "b.allowed.test", "c.allowed.test"], "the forged one never read"

    old = Host(tmp_path / "old")
    old.send(tcp(b"", 99, "S"))
    many = b"".join(message(f"n{i}.allowed.test", i) for i in range(200))
    assert len(many) > queries.REREAD
    assert old.send(tcp(many, 100)) == marks.ALLOW
    assert old.send(tcp(many[:10], 100)) == marks.DENY, "too far back to check"


def test_a_stream_pushed_out_of_the_table_is_cut_in_the_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read afresh from a later segment, mid-message, its framing would be the sender's:
    the stream pushed out gets DENY in its ct mark, and its held segments are dropped."""
    monkeypatch.setattr(queries, "MAX_STREAMS", 3)
    host = Host(tmp_path)
    written: list[list] = []
    host.pipeline.set_verdicts = written.append  # type: ignore[assignment]
    whole = message("www.allowed.test")
    assert host.send(tcp(whole[:5], 100), token="held") is marks.HOLD
    for sport in (41001, 41002, 41003):
        packet = IP(src=CLIENT, dst=SERVER) / TCP(sport=sport, dport=53, flags="PA", seq=1)
        assert host.send(bytes(packet / Raw(whole))) == marks.ALLOW
    assert written == [[((6, CLIENT, 41000, SERVER, 53), marks.DENY)]]
    assert host.released == [("held", marks.DENY)]
    assert host.stats.dns_streams_cut == 1
