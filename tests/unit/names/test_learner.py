"""Names wired into decisions (no root): pending, anti-fronting, the flow table's
hold/release/timeout/eviction, DNS learning in the pipeline, and the [names] config."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from nfguard import cli, marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig, parse_config
from nfguard.engine import NAME_MISMATCH, Engine
from nfguard.hostnets import HostNetworks
from nfguard.marks import HOLD
from nfguard.metrics.counts import Stats
from nfguard.pending import (
    OTHER_PROTOCOL,
    FlowTable,
    Kind,
    Named,
    PendingFlow,
    Step,
    Unreadable,
    Why,
    carries_nothing,
    classify,
)
from nfguard.pipeline import LOCAL_IN, Pipeline
from nfguard.policy.internal import network
from nfguard.policy.load import PolicyError, parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.wire.dns import MAX_ANSWERS
from nfguard.wire.ip import parse_packet

REPO = Path(__file__).resolve().parents[3]
CLIENT, RESOLVER = "10.0.0.2", "10.0.0.53"
GH, OTHER = "140.82.112.3", "203.0.113.9"

POLICY = """\
[[client]]
name = "everyone"
policies = ["early", "names", "rest"]

[[policy]]
name = "early"

[[policy.rule]]
name = "dns"
action = "allow"
to = ["10.0.0.53"]
ports = [53]

[[policy.rule]]
name = "internal"
action = "allow"
to = ["10.1.0.0/16"]

[[policy]]
name = "names"

[[policy.rule]]
name = "github"
action = "allow"
to = ["github.com", "*.github.com"]
ports = [443, 80]

[[policy.rule]]
name = "pinned"
action = "allow"
to = ["pinned.example", "198.51.100.0/24"]
ports = [443]
proto = "tcp"

[[policy.rule]]
name = "evil"
action = "deny"
to = ["evil.example"]
ports = [8443]
proto = "tcp"

[[policy.rule]]
name = "gh-net-22"
action = "allow"
to = ["140.82.112.0/20"]
ports = [22]

[[policy]]
name = "rest"

[[policy.rule]]
name = "all"
action = "deny"
"""


def make_engine(verify: bool = True, **settings: object) -> Engine:
    policies = CompiledPolicySet(parse_policy_texts([("r.toml", POLICY)]))
    return Engine(EngineConfig(**settings), policies, verify=verify)  # type: ignore[arg-type]


def syn(dst: str, dport: int, sport: int = 40000, seq: int = 1000) -> bytes:
    return bytes(IP(src=CLIENT, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=seq))


def seg(dst: str, dport: int, seq: int, data: bytes = b"", sport: int = 40000,
        flags: str = "PA") -> bytes:
    packet = IP(src=CLIENT, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def client_hello(name: str | None) -> bytes:
    """The record-layer bytes of a real ClientHello from Python's ssl module."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    tls = context.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def dns_answer(*answers: DNSRR, qname: str = "github.com", qtype: str = "A",
               dst: str = CLIENT, tcp: bool = False) -> bytes:
    message = DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname, qtype=qtype),
                  an=list(answers))
    if not tcp:
        return bytes(IP(src=RESOLVER, dst=dst) / UDP(sport=53, dport=5353) / message)
    raw = bytes(message)
    return len(raw).to_bytes(2, "big") + raw


EVERY_SERVER: tuple[str, ...] = ()  # [names] resolvers = []


class Harness:
    """A pipeline with a controllable clock and a release callback that records verdicts."""

    def __init__(self, tmp_path: Path, engine: Engine | None = None,
                 settings: NamesConfig | None = None) -> None:
        self.now = 1_700_000_000.0
        self.released: list[tuple[Any, int]] = []
        self.path = tmp_path / "audit.jsonl"
        self.stats = Stats()
        self.pipeline = Pipeline(engine or make_engine(), AuditLog(str(self.path)), self.stats,
                                 clock=lambda: self.now,
                                 settings=settings or NamesConfig(resolvers=EVERY_SERVER),
                                 release=lambda token, mark: self.released.append((token, mark)))

    def out(self, raw: bytes, mark: int = marks.QUEUED, token: Any = None) -> int | None:
        return self.pipeline.handle(raw, mark, 3, token)

    def pending(self, raw: bytes, token: Any = None) -> int | None:
        return self.out(raw, marks.QUEUED | marks.PENDING, token)

    def answer(self, raw: bytes) -> int | None:
        return self.pipeline.handle(raw, marks.ANSWER, LOCAL_IN)

    def learn(self, name: str, ip: str, ttl: int = 300) -> None:
        kind = "AAAA" if ":" in ip else "A"
        assert self.answer(dns_answer(DNSRR(rrname=name, type=kind, ttl=ttl, rdata=ip),
                                      qname=name, qtype=kind)) == marks.ALLOW

    def events(self) -> list[dict]:
        self.pipeline.audit.flush()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


# ---------------------------------------------------------------- could a name change it

@pytest.mark.parametrize(("dst", "port", "names", "pending"), [
    # A name rule for 443 stands before the default deny, but no name could allow: the
    # address has no DNS name and no allowing rule's networks hold it.
    (OTHER, 443, (), False),
    (OTHER, 80, (), False),
    (OTHER, 22, (), False),  # no name rule covers port 22
    (OTHER, 25, (), False),
    ("10.1.2.3", 443, (), False),  # decided by CIDR in an earlier policy
    ("198.51.100.7", 443, (), True),  # decided by CIDR, but an earlier name rule could match
    (GH, 443, (("github.com", "dns"),), True),  # DNS evidence: a presented name replaces it
    (GH, 22, (("github.com", "dns"),), False),  # name rule does not cover 22
    (OTHER, 8443, (), False),  # a deny-by-name rule could change it, but only to deny
    (OTHER, 443, (("example.org", "dns"),), False),  # its DNS name is allowed nowhere
])
def test_pending_only_when_a_presented_name_could_change_the_decision(
    dst: str, port: int, names: tuple, pending: bool,
) -> None:
    decision = make_engine().assess(parse_packet(syn(dst, port)), None, names)
    assert (decision is None) is pending


def test_with_verify_off_any_name_could_allow() -> None:
    engine = make_engine(verify=False)
    assert engine.assess(parse_packet(syn(OTHER, 443))) is None
    assert engine.assess(parse_packet(syn(OTHER, 22))) is not None


def test_an_address_rule_that_allows_lets_a_name_rule_wait() -> None:
    text = ('[[client]]\nname = "a"\npolicies = ["p"]\n\n[[policy]]\nname = "p"\n\n'
            '[[policy.rule]]\naction = "deny"\nto = ["evil.example"]\n\n'
            '[[policy.rule]]\naction = "allow"\nto = ["192.0.2.0/24"]\n')
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("r.toml", text)])))
    assert engine.assess(parse_packet(syn("192.0.2.1", 443))) is None
    assert engine.assess(parse_packet(syn("198.51.100.1", 443))) is not None


def test_rule_that_matched_the_address_by_cidr_is_not_pending_on_its_own_names() -> None:
    text = ('[[client]]\nname = "a"\npolicies = ["p"]\n\n[[policy]]\nname = "p"\n\n'
            '[[policy.rule]]\naction = "allow"\nto = ["x.example", "192.0.2.0/24"]\n')
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("r.toml", text)])))
    assert engine.assess(parse_packet(syn("192.0.2.1", 443))) is not None
    assert engine.assess(parse_packet(syn("192.0.2.1", 443)),
                         names=(("x.example", "dns"),)) is not None  # CIDR still decides
    assert engine.assess(parse_packet(syn("198.51.100.1", 443)),
                         names=(("x.example", "dns"),)) is None


def test_udp_is_pending_only_on_443_for_quic() -> None:
    engine = make_engine()
    names = (("github.com", "dns"),)
    udp443 = bytes(IP(src=CLIENT, dst=GH) / UDP(sport=5000, dport=443))
    udp80 = bytes(IP(src=CLIENT, dst=GH) / UDP(sport=5000, dport=80))
    assert engine.assess(parse_packet(udp443), None, names) is None
    decided = engine.assess(parse_packet(udp80))
    assert decided is not None and decided.action == "deny"


def test_first_name_rule_is_remembered_per_port() -> None:
    policy = make_engine().policies.policies["names"]
    assert policy.first_name_rule("tcp", 443) == 0
    assert policy.first_name_rule("tcp", 8443) == 2
    assert policy.first_name_rule("udp", 8443) > len(policy.rules)
    assert ("tcp", 443) in policy._first_name_rule
    assert make_engine().policies.policies["early"].name_rules == []


# ---------------------------------------------------------------- anti-fronting

def named(engine: Engine, dst: str, name: str, resolved: set[tuple[str, str]],
          port: int = 443, aliases: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    return engine.decide_named(parse_packet(syn(dst, port)), name, "sni",
                               resolved=lambda ip, n: (ip, n) in resolved, aliases=aliases)


def test_allowed_name_must_resolve_to_the_destination() -> None:
    engine = make_engine()
    ok = named(engine, GH, "github.com", {(GH, "github.com")})
    assert (ok.action, ok.reason, ok.evidence, ok.domain) == ("allow", "rule_match", "sni",
                                                               "github.com")
    fronted = named(engine, OTHER, "github.com", {(GH, "github.com")})
    assert (fronted.action, fronted.verdict, fronted.reason) == ("deny", "deny", NAME_MISMATCH)
    assert fronted.rule == "names/github" and fronted.domain == "github.com"


def test_destination_inside_the_allowing_rules_cidr_needs_no_dns() -> None:
    decision = named(make_engine(), "198.51.100.7", "pinned.example", set())
    assert decision.action == "allow" and decision.rule == "names/pinned"
    assert decision.domain == "pinned.example"
    outside = named(make_engine(), OTHER, "pinned.example", set())
    assert outside.reason == NAME_MISMATCH


def test_verify_off_trusts_the_presented_name() -> None:
    decision = named(make_engine(verify=False), OTHER, "github.com", set())
    assert decision.action == "allow"


def test_presented_name_replaces_dns_names() -> None:
    # The address stands for github.com in DNS, but the client asks for another name: the
    # engine decides on the presented name alone (it is not given the address's names).
    decision = make_engine().decide_named(
        parse_packet(syn(GH, 443)), "example.org", "sni", resolved=lambda ip, n: True)
    assert decision.action == "deny" and decision.domain == "example.org"


def test_cname_aliases_stand_with_the_presented_name() -> None:
    engine = make_engine()
    resolved = {(GH, "alias.example"), (GH, "github.com")}
    assert named(engine, GH, "alias.example", resolved).action == "deny"
    decision = named(engine, GH, "alias.example", resolved, aliases=("github.com",))
    assert decision.action == "allow" and decision.domain == "github.com"


def test_a_known_answer_for_the_presented_name_is_not_asked_again() -> None:
    engine = make_engine()
    asked: list[tuple[str, str]] = []

    def resolved(ip: str, name: str) -> bool:
        asked.append((ip, name))
        return True

    packet = parse_packet(syn(GH, 443))
    ok = engine.decide_named(packet, "github.com", "sni", resolved=resolved, resolves=True)
    fronted = engine.decide_named(packet, "github.com", "sni", resolved=resolved,
                                  resolves=False)
    assert (ok.action, fronted.reason, asked) == ("allow", NAME_MISMATCH, [])
    # an alias that decides is asked about; with nothing to ask, it does not resolve
    alias = engine.decide_named(packet, "alias.example", "sni", resolved=resolved,
                                aliases=("github.com",), resolves=True)
    assert (alias.action, asked) == ("allow", [(GH, "github.com")])
    unasked = engine.decide_named(packet, "alias.example", "sni", aliases=("github.com",),
                                  resolves=True)
    assert unasked.reason == NAME_MISMATCH


def test_audit_mode_records_the_mismatch_but_lets_it_pass() -> None:
    decision = named(make_engine(mode="audit"), OTHER, "github.com", set())
    assert (decision.action, decision.verdict, decision.reason) == ("deny", "allow",
                                                                     NAME_MISMATCH)


# ---------------------------------------------------------------- flow table

def test_first_bytes_pick_the_reader() -> None:
    assert classify(b"GET / HTTP/1.1\r\n") is Kind.HTTP
    assert classify(b"FROB / HTTP/1.1\r\n") is Kind.HTTP  # any token is a method
    assert classify(b"\r\nGET / HTTP/1.1\r\n") is Kind.HTTP  # a leading blank line
    assert classify(b"\x16\x03\x01") is Kind.TLS
    assert classify(b"\x15\x03\x03\x00\x02\x01\x00") is Kind.TLS  # an alert first: unreadable
    assert classify(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") is Kind.OTHER  # binary
    assert classify(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") is Kind.OTHER
    assert classify(b"SSH-2.0-Open") is None  # could still be either
    assert classify(b"SS") is None
    # A request line whose method merely starts like a banner is HTTP.
    assert classify(b"SSH-2.0-x / HTTP/1.1\r\n") is Kind.HTTP
    assert classify(b"SSH-" + b"x" * 300) is Kind.HTTP


def feed(flow: PendingFlow, seq: int, data: bytes, token: Any = 1,
         flags: str = "PA") -> object:
    packet = seg(GH, flow.packet.dport, seq, data, flags=flags)
    return flow.segment(parse_packet(packet), packet, token, 0, 0.0)


def opened(port: int = 443) -> PendingFlow:
    """A pending flow whose SYN had seq 0: its first byte is at seq 1."""
    return PendingFlow("k", parse_packet(syn(GH, port, seq=0)), ())


def test_segments_out_of_order_and_retransmits_release_in_stream_order() -> None:
    hello = client_hello("github.com")
    a, b, c = hello[:100], hello[100:300], hello[300:]
    flow = opened()
    assert feed(flow, 1 + 100, b, "B") is Step.HELD  # ahead of a gap: held
    assert feed(flow, 1, a, "A") is Step.HELD  # fills the gap, feeds A and B
    assert feed(flow, 1, a, "A2") is Step.HELD  # retransmit: held, not fed
    assert feed(flow, 1 + 300, c, "C") == Named("github.com", "sni")
    assert [token for token, _mark in flow.release()] == ["A", "A2", "B", "C"]


def test_clearly_other_protocols_and_nameless_hellos() -> None:
    assert feed(opened(22), 1, b"SSH-2.0-x\r\n") == OTHER_PROTOCOL
    assert feed(opened(), 1, client_hello(None)) == Unreadable(Why.NO_NAME)
    assert feed(opened(80), 1, b"GET / HTTP/1.0\r\n\r\n") == Unreadable(Why.NO_NAME)
    http = opened(80)
    assert feed(http, 1, b"GET / HTTP/1.1\r\nHo") is Step.HELD
    assert feed(http, 19, b"st: GitHub.com:80\r\n\r\n", 2) == Named("github.com", "host")


@pytest.mark.parametrize("opening", [
    b"FROB / HTTP/1.1\r\nHost: github.com\r\n\r\n",  # rejected by today's reader
    b"\x16\x03\x01\x00\x02\xff\xff",  # a handshake record that is no ClientHello
    b"\x15\x03\x03\x00\x02\x01\x00",  # an alert record before the hello
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
])
def test_tls_or_http_the_reader_rejects_is_unreadable(opening: bytes) -> None:
    outcome = feed(opened(80), 1, opening)
    assert outcome in (Unreadable(Why.MALFORMED), Named("github.com", "host"))


def test_urgent_data_makes_the_name_unreadable() -> None:
    hello = client_hello("github.com")
    flow = opened()
    assert feed(flow, 1, hello[:50]) is Step.HELD
    assert feed(flow, 51, hello[50:], flags="PAU") == Unreadable(Why.URGENT)


def test_fast_open_data_in_the_syn_is_the_first_byte() -> None:
    hello = client_hello("github.com")
    raw = bytes(IP(src=CLIENT, dst=GH) / TCP(sport=40000, dport=443, flags="S", seq=0)
                / Raw(hello))
    packet = parse_packet(raw)
    flow = PendingFlow("k", packet, ())
    assert flow.segment(packet, raw, "syn", 0, 0.0) == Named("github.com", "sni")


@pytest.mark.parametrize(("options", "bare"), [
    ([], True),
    ([("NOP", None), ("NOP", None), ("Timestamp", (1, 2))], True),
    ([("SAck", (100, 200))], True),
    ([("MSS", 1460)], False),
    ([(254, b"EXFILTRATE")], False),
])
def test_a_bare_segment_passes_only_if_it_carries_nothing(options: list, bare: bool) -> None:
    flow = opened()
    raw = bytes(IP(src=CLIENT, dst=GH) / TCP(sport=40000, dport=443, flags="A", seq=1,
                                              options=options))
    step = flow.segment(parse_packet(raw), raw, "ack", 0, 0.0)
    assert step == (Step.BARE if bare else Unreadable(Why.NOT_BARE))


def test_ip_options_and_urgent_pointers_on_a_bare_segment_cut_the_flow() -> None:
    with_options = bytes(IP(src=CLIENT, dst=GH, options=b"\x01\x01\x01\x00")
                         / TCP(sport=40000, dport=443, flags="A", seq=1))
    pointer = bytes(IP(src=CLIENT, dst=GH) / TCP(sport=40000, dport=443, flags="A", seq=1,
                                                  urgptr=0x4142))
    hop = bytes(IPv6(src="fd00::2", dst="fd00::1") / IPv6ExtHdrHopByHop()
                / TCP(sport=40000, dport=443, flags="A", seq=1))
    for raw in (with_options, pointer, hop):
        step = opened().segment(parse_packet(raw), raw, "ack", 0, 0.0)
        assert step == Unreadable(Why.NOT_BARE)


def test_cut_segment_without_a_complete_hello_is_unreadable() -> None:
    raw = seg(GH, 443, 1, client_hello("github.com"))
    outcome = opened().segment(parse_packet(raw), raw[:90], "t", 0, 0.0)
    assert outcome == Unreadable(Why.COPY_CUT)


def test_quic_flow_whose_first_datagram_is_no_initial_is_unreadable() -> None:
    for body in (b"\x40" + bytes(30), b"\xc0\x1a\x2a\x3a\x4a\x08" + bytes(40), b""):
        raw = bytes(IP(src=CLIENT, dst=GH) / UDP(sport=5000, dport=443) / Raw(body))
        packet = parse_packet(raw)
        outcome = PendingFlow("k", packet, ()).datagram(packet, raw, "d", 0, 0.0)
        assert isinstance(outcome, Unreadable), body


def test_flow_table_evicts_least_recently_used_and_reports_holders() -> None:
    table = FlowTable(max_flows=2)
    flows = [PendingFlow(i, parse_packet(syn(GH, 443, sport=1000 + i, seq=0)), ())
             for i in range(3)]
    table.add(flows[0])
    assert table.waiting == 1
    feed(flows[0], 1, b"\x16\x03\x01", "t")
    table.mark_holding(flows[0])
    feed(flows[0], 4, b"\x02\x00", "u")
    table.mark_holding(flows[0])
    assert table.held_packets == 2  # counted once per packet, not per call
    table.add(flows[1])
    assert table.get(0) is flows[0]  # touched: flows[1] is now the oldest
    assert table.add(flows[2]) == []  # flows[1] evicted, it held nothing
    assert table.get(1) is None and len(table) == 2
    assert table.add(PendingFlow(9, flows[0].packet, ())) == [flows[0]]  # a holder
    assert table.holding == 0 and table.held_packets == 0
    table.settled(flows[2], "decided")
    assert (len(table), table.waiting) == (2, 1), "a decided flow is not waiting"


# ---------------------------------------------------------------- the pipeline

def test_pending_flow_hold_and_release_with_one_audit_event(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.learn("github.com", GH)
    assert h.out(syn(GH, 443, seq=1000)) == marks.PENDING
    assert h.events() == [], "no event for the pending SYN"
    assert h.pending(seg(GH, 443, 1001, flags="A")) == marks.PENDING  # bare ACK
    hello = client_hello("github.com")
    assert h.pending(seg(GH, 443, 1001, hello[:200]), "one") is HOLD
    assert h.released == []
    assert h.pending(seg(GH, 443, 1201, hello[200:]), "two") is HOLD
    assert h.released == [("one", marks.ALLOW), ("two", marks.ALLOW)]
    (event,) = h.events()
    assert event["event"]["action"] == "allow"
    assert event["nfguard"]["evidence"] == "sni"
    assert event["destination"]["domain"] == "github.com"
    assert event["rule"]["name"] == "names/github"
    # A late packet of the decided flow gets the same verdict, and no new event.
    assert h.pending(seg(GH, 443, 1201, hello[200:]), "late") == marks.ALLOW
    assert len(h.events()) == 1


PINNED = "198.51.100.7"  # inside the "pinned" rule's networks: any of its names allows


def test_fronted_flow_is_cut(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.learn("github.com", GH)
    assert h.out(syn(PINNED, 443)) == marks.PENDING
    assert h.pending(seg(PINNED, 443, 1001, client_hello("github.com")), "t") is HOLD
    assert h.released == [("t", marks.DENY)]
    assert h.events()[0]["event"]["reason"] == NAME_MISMATCH


def test_a_flow_no_name_could_allow_is_denied_at_its_syn(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.learn("github.com", GH)
    assert h.out(syn(OTHER, 443)) == marks.DENY  # the SYN never leaves
    assert len(h.pipeline.flows) == 0
    (event,) = h.events()
    assert (event["event"]["action"], event["rule"]["name"]) == ("deny", "rest/all")


def test_hello_timeout_never_lets_the_dns_names_decide(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings=NamesConfig(hello_timeout=5, resolvers=EVERY_SERVER))
    h.learn("github.com", GH)
    assert h.out(syn(GH, 443)) == marks.PENDING
    assert h.pending(seg(GH, 443, 1001, client_hello("github.com")[:40]), "t") is HOLD
    h.now += 4.9
    assert h.pipeline.sweep() == 0 and h.released == []
    h.now += 0.2
    assert h.pipeline.sweep() == 1
    # No name: the address's DNS name (github.com, allowed) must not decide; only the
    # address rules do, and the first that matches 140.82.112.3:443 is deny-all.
    assert h.released == [("t", marks.DENY)]
    (event,) = h.events()
    assert event["event"]["reason"] == "name_unreadable"
    assert event["nfguard"]["unreadable"] == "hello_timeout"
    assert event["rule"]["name"] == "rest/all" and h.stats.hello_timeouts == 1


def test_a_flow_that_sends_nothing_waits_no_longer_than_hello_timeout(tmp_path: Path) -> None:
    """Its bare segments pass in the kernel while it waits (a channel in their header
    fields), and no packet of it may ever come to carry a verdict: at hello_timeout it is
    decided as one whose name cannot be read, and the verdict goes into its ct mark."""
    h = Harness(tmp_path, settings=NamesConfig(hello_timeout=5, resolvers=EVERY_SERVER))
    written: list[list[tuple[tuple, int]]] = []
    h.pipeline.set_verdicts = written.append
    h.learn("github.com", GH)
    assert h.out(syn(GH, 443)) == marks.PENDING
    h.now += 2
    assert h.out(syn(PINNED, 443, sport=2)) == marks.PENDING
    assert h.pending(seg(GH, 443, 1001, b""), "ack") == marks.PENDING  # bare: passes
    h.now += 2.9
    assert h.pipeline.sweep() == 0 and written == []
    h.now += 0.2
    assert h.pipeline.sweep() == 1
    assert written == [[((6, CLIENT, 40000, GH, 443), marks.DENY)]]
    (event,) = h.events()
    assert (event["event"]["reason"], event["nfguard"]["unreadable"]) == (
        "name_unreadable", "hello_timeout")
    assert h.pipeline.flows.waiting == 1, "the younger flow still waits"
    h.now += 2
    assert h.pipeline.sweep() == 1 and h.pipeline.flows.waiting == 0
    assert written[1] == [((6, CLIENT, 2, PINNED, 443), marks.ALLOW)], "its network allows"


def test_an_unreadable_name_is_decided_by_address_rules(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.pipeline.flows.max_flows = 1
    assert h.out(syn(PINNED, 443, sport=1)) == marks.PENDING
    assert h.pending(seg(PINNED, 443, 1001, b"\x16\x03\x01\x00", sport=1), "held") is HOLD
    assert h.out(syn(PINNED, 443, sport=2)) == marks.PENDING
    assert h.released == [("held", marks.ALLOW)]  # the pinned rule's network holds it
    (event,) = h.events()
    assert (event["event"]["reason"], event["nfguard"]["evidence"]) == ("name_unreadable",
                                                                        "cidr")
    assert event["nfguard"]["unreadable"] == "evicted"


def test_an_unreadable_name_with_no_address_rule_is_denied_not_defaulted(
        tmp_path: Path) -> None:
    text = ('[[client]]\nname = "a"\npolicies = ["p"]\n\n[[policy]]\nname = "p"\n\n'
            '[[policy.rule]]\naction = "allow"\nto = ["github.com"]\n')
    engine = Engine(EngineConfig(default="allow"),
                    CompiledPolicySet(parse_policy_texts([("r.toml", text)])))
    h = Harness(tmp_path, engine=engine)
    h.learn("github.com", GH)
    assert h.out(syn(GH, 443)) == marks.PENDING
    conflicting = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"
    assert h.pending(seg(GH, 443, 1001, conflicting), "t") is HOLD
    event = h.events()[-1]
    assert event["event"]["action"] == "deny"
    assert (event["event"]["reason"], event["nfguard"]["evidence"]) == ("name_unreadable",
                                                                        "unreadable")


def test_a_deny_rule_with_names_before_an_address_allow_wins_when_unreadable() -> None:
    text = ('[[client]]\nname = "a"\npolicies = ["p"]\n\n[[policy]]\nname = "p"\n\n'
            '[[policy.rule]]\naction = "deny"\nto = ["evil.example"]\n\n'
            '[[policy.rule]]\naction = "allow"\nto = ["192.0.2.0/24"]\n')
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("r.toml", text)])))
    decision = engine.decide_unreadable(parse_packet(syn("192.0.2.1", 443)), Why.MALFORMED)
    assert (decision.action, decision.reason, decision.unreadable) == (
        "deny", "name_unreadable", "malformed")


def test_a_clearly_other_protocol_is_decided_by_address_and_dns_names(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.learn("github.com", GH)
    assert h.out(syn(GH, 443)) == marks.PENDING
    assert h.pending(seg(GH, 443, 1001, b"SSH-2.0-OpenSSH_9.2\r\n"), "t") is HOLD
    assert h.released == [("t", marks.ALLOW)]
    assert h.events()[-1]["nfguard"]["evidence"] == "dns"


def test_a_bare_segment_with_options_cuts_the_flow(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.learn("github.com", GH)
    assert h.out(syn(GH, 443)) == marks.PENDING
    covert = bytes(IP(src=CLIENT, dst=GH) / TCP(sport=40000, dport=443, flags="A",
                                                seq=1001, options=[(254, b"EXFIL")]))
    assert h.pending(covert, "c") is HOLD
    assert h.released == [("c", marks.DENY)]
    assert h.events()[-1]["nfguard"]["unreadable"] == "not_bare"


def test_pending_packet_without_state_starts_over(tmp_path: Path) -> None:
    h = Harness(tmp_path)  # as after an engine restart: the ct mark says PENDING
    h.learn("github.com", GH)
    assert h.pending(seg(GH, 443, 5000, flags="A")) == marks.PENDING
    assert h.pending(seg(GH, 443, 5000, client_hello("github.com")), "t") is HOLD
    assert h.released == [("t", marks.ALLOW)]


def test_flows_without_name_rules_are_decided_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.out(syn(GH, 22)) == marks.ALLOW
    assert h.out(syn(OTHER, 25)) == marks.DENY
    assert len(h.pipeline.flows) == 0 and len(h.events()) == 2


# ---------------------------------------------------------------- DNS answers

def test_dns_answers_teach_names_a_aaaa_and_cname_chains(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    cache = h.pipeline.names
    h.learn("github.com", GH)
    h.learn("github.com", "2606:50c0::1")
    chain = dns_answer(DNSRR(rrname="www.github.com", type="CNAME", ttl=300,
                             rdata="lb.github.com"),
                       DNSRR(rrname="lb.github.com", type="A", ttl=60, rdata="140.82.112.4"),
                       qname="www.github.com")
    assert h.answer(chain) == marks.ALLOW
    assert cache.names_for(GH, h.now) == {"github.com"}
    assert cache.names_for("2606:50c0::1", h.now) == {"github.com"}
    assert cache.names_for("140.82.112.4", h.now) == {"www.github.com", "lb.github.com"}
    assert h.stats.dns_answers == 3 and h.events() == []
    # A SYN to the address of a learnt name is decided with DNS evidence.
    decision = h.pipeline.engine.assess(parse_packet(syn("140.82.112.4", 22)), None,
                                        h.pipeline._dns_names("140.82.112.4", h.now))
    assert decision is not None and decision.domain == "lb.github.com"


def test_cut_and_unparseable_answers_are_accepted_without_learning(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    full = dns_answer(*[DNSRR(rrname="big.example", type="A", ttl=300, rdata=f"192.0.2.{i}")
                        for i in range(1, 200)], qname="big.example")
    cut = full[:1500]
    assert h.answer(cut) == marks.ALLOW
    assert h.stats.dns_cut == 1 and len(h.pipeline.names) == 0
    garbage = bytes(IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=5353) / Raw(b"\x00" * 5))
    assert h.answer(garbage) == marks.ALLOW
    assert h.stats.dns_unparseable == 1 and len(h.pipeline.names) == 0
    assert h.answer(full) == marks.ALLOW
    assert len(h.pipeline.names) == MAX_ANSWERS  # of 199: the work per answer is bounded


def test_only_listed_resolvers_teach_names(tmp_path: Path) -> None:
    """[names] resolvers: an answer from another server is accepted but teaches nothing;
    a reload that lists it makes its next answers count."""
    h = Harness(tmp_path, settings=NamesConfig(resolvers=("127.0.0.0/8", "10.0.0.0/24")))
    h.learn("github.com", "140.82.112.3")  # RESOLVER is 10.0.0.53
    assert h.pipeline.names.names_for("140.82.112.3", h.now) == {"github.com"}
    stranger = bytes(IP(src="203.0.113.9", dst=CLIENT) / UDP(sport=53, dport=5353) /
                     DNS(id=7, qr=1, qd=DNSQR(qname="evil.example"),
                         an=[DNSRR(rrname="github.com", type="A", ttl=300, rdata="198.51.100.66")]))
    assert h.answer(stranger) == marks.ALLOW, "let through: the policy allowed the query"
    assert h.pipeline.names.names_for("198.51.100.66", h.now) == frozenset()
    assert h.stats.dns_untrusted == 1 and h.stats.dns_answers == 1
    h.pipeline.configure(NamesConfig(resolvers=("203.0.113.0/24",)))
    assert h.answer(stranger) == marks.ALLOW
    assert h.pipeline.names.names_for("198.51.100.66", h.now) == {"github.com"}
    h.pipeline.configure(NamesConfig(resolvers=EVERY_SERVER))
    assert h.answer(dns_answer(DNSRR(rrname="x.example", type="A", ttl=300, rdata="192.0.2.8"),
                               qname="x.example")) == marks.ALLOW
    assert h.pipeline.names.names_for("192.0.2.8", h.now) == {"x.example"}
    assert h.stats.dns_untrusted == 1


def test_dns_over_tcp_in_order_only(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    stream = dns_answer(DNSRR(rrname="github.com", type="A", ttl=300, rdata=GH), tcp=True)

    def tcp(seq: int, data: bytes = b"", flags: str = "PA") -> bytes:
        packet = IP(src=RESOLVER, dst=CLIENT) / TCP(sport=53, dport=5353, flags=flags, seq=seq)
        return bytes(packet / Raw(data)) if data else bytes(packet)

    assert h.answer(tcp(99, flags="SA")) == marks.ALLOW
    # The second half first: out of order, dropped so the server sends it again.
    assert h.answer(tcp(100 + 10, stream[10:])) == marks.DENY
    assert h.stats.dns_out_of_order == 1
    assert h.answer(tcp(100, stream[:10])) == marks.ALLOW
    assert h.answer(tcp(100, stream[:10])) == marks.ALLOW  # a duplicate changes nothing
    assert h.pipeline.names.names_for(GH, h.now) == frozenset()
    assert h.answer(tcp(100 + 10, stream[10:])) == marks.ALLOW
    assert h.pipeline.names.names_for(GH, h.now) == {"github.com"}


def test_names_expire_after_ttl_and_grace(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings=NamesConfig(grace=2, min_ttl=0, resolvers=EVERY_SERVER))
    h.learn("github.com", GH, ttl=1)
    h.now += 2.9
    assert h.pipeline.names.resolved(GH, "github.com", h.now)
    h.now += 0.2
    assert not h.pipeline.names.resolved(GH, "github.com", h.now)


def test_ipv6_flows_use_names_too(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.learn("github.com", "2606:50c0::1")
    raw = bytes(IPv6(src="2001:db8::2", dst="2606:50c0::1")
                / TCP(sport=4, dport=443, flags="S", seq=9))
    assert h.out(raw) == marks.PENDING
    data = bytes(IPv6(src="2001:db8::2", dst="2606:50c0::1")
                 / TCP(sport=4, dport=443, flags="PA", seq=10) / Raw(client_hello("github.com")))
    assert h.pending(data, "t") is HOLD and h.released == [("t", marks.ALLOW)]


def test_tcp_seq_is_parsed() -> None:
    assert parse_packet(seg(GH, 443, 0xDEADBEEF, b"x")).tcp_seq == 0xDEADBEEF


# ---------------------------------------------------------------- config and rules

def test_names_config_section() -> None:
    config = parse_config("[names]\nverify = false\ngrace = 1\nmin_ttl = 0.5\n"
                          "max_entries = 10\nhello_timeout = 2\n", "c.toml")
    assert config.names == NamesConfig(False, 1.0, 0.5, 10, 2.0)
    assert parse_config("", "c.toml").names == NamesConfig()
    with pytest.raises(PolicyError) as bad:
        parse_config("[names]\nverify = 1\ngrace = -1\nhello_timeout = 0\nmax_entries = 0\n"
                     "ttl = 3\n", "c.toml")
    text = str(bad.value)
    for expected in ("c.toml:2: names.verify must be a bool", "c.toml:3: names.grace must be >= 0",
                     "c.toml:4: names.hello_timeout must be > 0",
                     "c.toml:5: names.max_entries must be >= 1", "c.toml:6: unknown key 'ttl'"):
        assert expected in text


def test_shipped_config_documents_names() -> None:
    text = (REPO / "etc/nfguard/nfguard.toml").read_text()
    assert "[names]" in text
    assert parse_config(text, "nfguard.toml").names == NamesConfig()


def test_encrypted_dns_policy_checks_and_denies(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "encrypted-dns.toml").write_text((REPO / "rules/encrypted-dns.toml").read_text())
    (rules / "a-clients.toml").write_text(
        '[[client]]\nname = "all"\npolicies = ["encrypted-dns", "allow-rest"]\n\n'
        '[[policy]]\nname = "allow-rest"\n\n[[policy.rule]]\naction = "allow"\n')
    config = tmp_path / "nfguard.toml"
    config.write_text('[engine]\npolicy_dir = "rules"\n')
    assert cli.main(["check", "--config", str(config)]) == 0
    assert "ok" in capsys.readouterr().out
    from nfguard.config import load_config
    from nfguard.policy.build import build_engine

    engine = build_engine(load_config(config))
    tcp = lambda dst, port: parse_packet(syn(dst, port))  # noqa: E731
    assert engine.decide(tcp("192.0.2.1", 853)).action == "deny"
    assert engine.decide(tcp("1.1.1.1", 443)).rule == "encrypted-dns/public-doh-by-address"
    assert engine.decide(tcp("1.1.1.1", 53)).action == "allow"
    by_name = engine.decide_named(tcp("192.0.2.1", 443), "dns.google", "sni")
    assert (by_name.action, by_name.rule) == ("deny", "encrypted-dns/public-doh-by-name")
    assert engine.decide_named(tcp("192.0.2.1", 443), "example.org", "sni").action == "allow"


def test_a_syn_may_carry_the_handshakes_options_only() -> None:
    usual = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
             ("WScale", 7), ("TFO", b"")]
    for options, bare in ((usual, True), ([*usual, (254, b"EXFIL")], False)):
        raw = bytes(IP(src=CLIENT, dst=GH) / TCP(sport=1, dport=443, flags="S",
                                                  options=options))
        assert carries_nothing(parse_packet(raw), raw) is bare


def test_a_name_rule_with_resolvers_lets_the_resolvers_wait() -> None:
    text = ('[[client]]\nname = "a"\npolicies = ["p"]\n\n[[policy]]\nname = "p"\n\n'
            '[[policy.rule]]\naction = "deny"\nto = ["evil.example"]\n\n'
            '[[policy.rule]]\naction = "allow"\nto = ["dot.example", "@resolvers"]\n'
            'ports = [853]\n')
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("r.toml", text)])),
                    resolvers=lambda ip: ip == "10.0.0.53")
    assert engine.assess(parse_packet(syn("10.0.0.53", 853))) is None
    assert engine.assess(parse_packet(syn("10.0.0.54", 853))) is not None


# ---------------------------------------------------------------- names bound inside

def test_bindings_to_internal_addresses_are_counted_by_kind(tmp_path: Path) -> None:
    """Where answers are learnt: a public name answering with an inside address is what
    DNS rebinding looks like; the host's networks count too."""
    stats = Stats()
    hostnets = HostNetworks(lambda: (network(f"{OTHER}/24"),))
    pipeline = Pipeline(make_engine(), AuditLog(str(tmp_path / "a.jsonl")), stats,
                        settings=NamesConfig(resolvers=EVERY_SERVER), hostnets=hostnets)
    chain = dns_answer(DNSRR(rrname="www.github.com", type="CNAME", ttl=300,
                             rdata="db.corp.example"),
                       DNSRR(rrname="db.corp.example", type="A", ttl=300, rdata="10.0.0.5"),
                       qname="www.github.com")
    assert pipeline.handle(chain, marks.ANSWER, LOCAL_IN) == marks.ALLOW
    assert stats.dns_private == {"private": 2}  # both names of the chain are bound there
    assert stats.dns_private_last in ("www.github.com -> 10.0.0.5 (private)",
                                      "db.corp.example -> 10.0.0.5 (private)")
    for ip, kind in (("169.254.169.254", "metadata"), (OTHER, "connected"),
                     ("::ffff:127.0.0.1", "loopback"), (GH, None)):
        qtype = "AAAA" if ":" in ip else "A"
        pipeline.handle(dns_answer(DNSRR(rrname="x.example", type=qtype, ttl=300, rdata=ip),
                                   qname="x.example", qtype=qtype), marks.ANSWER, LOCAL_IN)
        if kind is not None:
            assert stats.dns_private[kind] == 1
            assert stats.dns_private_last == f"x.example -> {ip} ({kind})"
    assert sum(stats.dns_private.values()) == 5
    assert stats.dns_bindings == 6


def test_a_flow_to_a_name_bound_inside_is_refused_on_its_syn(tmp_path: Path) -> None:
    """The pipeline end to end: DNS binds github.com to the metadata address; the SYN to it
    is decided at once (nothing could allow it there), refused, and says why."""
    h = Harness(tmp_path)
    h.learn("github.com", "169.254.169.254")
    assert h.out(syn("169.254.169.254", 443)) == marks.DENY  # the SYN never leaves
    [event] = [e for e in h.events() if e["destination"]["ip"] == "169.254.169.254"]
    assert event["event"]["reason"] == "name_private_address"
    assert event["nfguard"]["private"] == "metadata"
    assert event["rule"]["name"] == "names/github"
    assert event["destination"]["domain"] == "github.com"
