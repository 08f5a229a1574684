"""Pipeline.handle, read as transcripts: the packets a flow sends, in order, and what the
engine answers to each (a mark, HOLD, or a later release), with the audit events written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig, NamesConfig
from nfguard.engine import ENGINE_ERROR, UNPARSEABLE, Decision, Engine
from nfguard.marks import HOLD
from nfguard.metrics.counts import Stats
from nfguard.pipeline import Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import ProcessInfo
from tests.unit.names.test_learner import client_hello
from tests.unit.test_engine import GIT, POLICY, make_engine, v4_syn, v4_udp, v6_syn

USER_BITS = 0x0000BEEF | 0x80000000  # includes a bit above nfguard's


def make_pipeline(tmp_path: Path, **settings: object) -> tuple[Pipeline, Stats, Path]:
    path = tmp_path / "audit.jsonl"
    stats = Stats()
    pipeline = Pipeline(make_engine(**settings), AuditLog(str(path)), stats,
                        clock=lambda: 1_700_000_000.25)
    return pipeline, stats, path


def events(pipeline: Pipeline, path: Path) -> list[dict]:
    pipeline.audit.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_handle_allow_and_deny_marks_keep_user_bits(tmp_path: Path) -> None:
    pipeline, stats, path = make_pipeline(tmp_path, default="allow")
    # Pipeline has no attribution: no process, so only a client without match applies;
    # none here, so the default decides.
    mark = pipeline.handle(v4_syn("140.82.112.3", 443), USER_BITS | marks.QUEUED)
    assert mark == USER_BITS | marks.ALLOW
    pipeline.engine = make_engine(default="deny")
    mark = pipeline.handle(v6_syn("2001:db8::1", 443), USER_BITS | marks.QUEUED | marks.ALLOW)
    assert mark == USER_BITS | marks.DENY
    assert mark & marks.VERDICT_MASK == marks.DENY
    assert stats.packets == 2 and stats.errors == 0 and stats.unparseable == 0
    written = events(pipeline, path)
    assert len(written) == 2
    assert [e["event"]["action"] for e in written] == ["allow", "deny"]
    assert written[0]["destination"] == {"ip": "140.82.112.3", "port": 443}
    assert written[1]["network"] == {"transport": "tcp", "type": "ipv6", "direction": "egress"}
    assert written[0]["@timestamp"] == "2023-11-14T22:13:20.250Z"


def test_handle_uses_the_policy_for_everyone_clients(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    text = POLICY.replace('[[client]]\nname = "git"', '[[client]]\nname = "all"\npolicies = '
                          '["github"]\n\n[[client]]\nname = "git"', 1)
    engine = Engine(EngineConfig(default="allow"),
                    CompiledPolicySet(parse_policy_texts([("r.toml", text)])))
    pipeline = Pipeline(engine, AuditLog(str(path)), Stats())
    assert pipeline.handle(v4_syn("140.82.112.3", 22), 0) == marks.DENY
    assert pipeline.handle(v4_syn("140.82.112.3", 443), 0) == marks.ALLOW
    assert [e["rule"]["name"] for e in events(pipeline, path)] == ["github/blocked",
                                                                  "github/https"]


def test_handle_audit_mode_allows_but_logs_deny(tmp_path: Path) -> None:
    pipeline, _stats, path = make_pipeline(tmp_path, mode="audit", default="deny")
    assert pipeline.handle(v4_udp("192.0.2.1", 53), 0x1) == 0x1 | marks.ALLOW
    (event,) = events(pipeline, path)
    assert event["event"]["action"] == "deny"
    assert event["nfguard"]["mode"] == "audit"


def test_handle_one_event_per_call(tmp_path: Path) -> None:
    pipeline, stats, path = make_pipeline(tmp_path)
    for i in range(25):
        pipeline.handle(v4_syn("192.0.2.1", 1000 + i), 0)
    pipeline.handle(b"\x45garbage", 0)
    written = events(pipeline, path)
    assert len(written) == 26 == stats.packets
    assert [e["destination"]["port"] for e in written[:25]] == list(range(1000, 1025))
    assert sum(stats.decisions.values()) == 26


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_handle_unparseable(tmp_path: Path, mode: str) -> None:
    pipeline, stats, path = make_pipeline(tmp_path, mode=mode, default="allow")
    mark = pipeline.handle(b"\x60" + b"\x00" * 10, 0x5)
    assert mark == 0x5 | (marks.DENY if mode == "enforce" else marks.ALLOW)
    assert stats.unparseable == 1 and stats.errors == 0
    (event,) = events(pipeline, path)
    assert event["event"]["reason"] == UNPARSEABLE
    assert "destination" not in event and "source" not in event


@pytest.mark.parametrize(("fail", "bits"), [("closed", marks.DENY), ("open", marks.ALLOW)])
def test_handle_turns_an_engine_exception_into_the_fail_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str, bits: int,
) -> None:
    pipeline, stats, path = make_pipeline(tmp_path, fail=fail, default="allow")

    def boom(*args: object, **kwargs: object) -> Decision:
        raise RuntimeError("bug")

    monkeypatch.setattr(pipeline.engine, "decide", boom, raising=False)
    monkeypatch.setattr(pipeline.engine, "assess", boom, raising=False)
    mark = pipeline.handle(v4_syn("140.82.112.3", 443), USER_BITS)
    assert mark == USER_BITS | bits
    assert stats.errors == 1 and stats.packets == 1
    (event,) = events(pipeline, path)
    assert event["event"]["reason"] == ENGINE_ERROR
    # The packet was parsed before the error: its addresses are still recorded.
    assert event["destination"]["ip"] == "140.82.112.3"


def test_handle_survives_a_failing_audit_log(tmp_path: Path) -> None:
    pipeline, stats, _path = make_pipeline(tmp_path, default="allow")
    pipeline.audit.close()  # writes now raise ValueError
    assert pipeline.handle(v4_syn("192.0.2.1", 443), 0) == marks.ALLOW
    assert stats.errors == 1


@pytest.mark.parametrize("payload", [
    b"", b"\x00", b"\x45", b"\x46" + b"\xff" * 30, b"\x60" * 39, b"\x60" + b"\x00" * 45,
    bytes(range(256)), b"\x4f" * 80, b"\x45\x00\x00\x28" + b"\x00" * 5 + b"\x06" + b"\x00" * 30,
])
def test_malformed_bytes_never_raise(tmp_path: Path, payload: bytes) -> None:
    pipeline, stats, _path = make_pipeline(tmp_path)
    mark = pipeline.handle(payload, 0)
    assert mark & marks.VERDICT_MASK in (marks.ALLOW, marks.DENY)
    assert mark & marks.QUEUED == 0
    assert stats.packets == 1


def test_with_verdict_replaces_only_nfguard_bits() -> None:
    assert marks.with_verdict(0xFFFFFFFF, marks.ALLOW) == (0xFFFFFFFF & ~marks.MASK) | marks.ALLOW
    assert marks.with_verdict(0, marks.DENY) == marks.DENY
    assert marks.ALLOW & marks.VERDICT_MASK == marks.ALLOW
    assert marks.DENY & marks.VERDICT_MASK == marks.DENY
    assert marks.QUEUED & marks.VERDICT_MASK == 0
    assert (marks.ALLOW | marks.DENY | marks.QUEUED) & ~marks.MASK == 0



class Senders:
    """Stands in for nfguard.procs.Attributor (the real one is proven in e2e)."""

    def __init__(self, process: ProcessInfo) -> None:
        self.process = process
        self.asked: list[tuple] = []

    def lookup(self, *flow: object, hash_exe: bool = False,
               uid: int | None = None) -> ProcessInfo:
        self.asked.append((*flow, hash_exe, uid))
        return self.process


def test_pipeline_attributes_new_flows_and_records_the_sender(tmp_path: Path) -> None:
    pipeline, _stats, path = make_pipeline(tmp_path, default="allow")
    senders = Senders(GIT)
    pipeline.attributor = senders  # type: ignore[assignment]
    assert pipeline.handle(v4_syn("140.82.112.3", 22), 0) == marks.DENY  # git's rule
    # the socket's owner as the kernel gave it with the packet goes to the lookup
    query = bytes(IP(src="10.0.0.2", dst="9.9.9.9") / UDP(sport=5000, dport=53)
                  / DNS(rd=1, qd=DNSQR(qname="github.com")))
    assert pipeline.handle(query, 0, 3, None, 1000) == marks.ALLOW
    assert senders.asked == [("tcp", 4, "10.0.0.2", 40000, "140.82.112.3", 22, False, None),
                             ("udp", 4, "10.0.0.2", 5000, "9.9.9.9", 53, False, 1000)]
    event = events(pipeline, path)[0]
    assert event["nfguard"]["client"] == "git"
    assert event["process"] == {"pid": 42, "name": "git", "executable": "/usr/bin/git"}
    assert event["user"] == {"id": "1000", "name": "alice"}




# -- transcripts of pending flows ---------------------------------------------------------

CLIENT, SITE, ELSEWHERE = "10.0.0.2", "140.82.112.3", "203.0.113.9"
NAMES_POLICY = """\
[[client]]
name = "everyone"
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
name = "site"
action = "allow"
to = ["site.example"]
ports = [443]

[[policy.rule]]
name = "dns"
action = "allow"
to = ["10.0.0.53"]
ports = [53]
proto = "udp"

[[policy.rule]]
name = "rest"
action = "deny"
"""


class Transcript:
    """A pipeline fed one packet at a time; what it answered, released and wrote."""

    def __init__(self, tmp_path: Path) -> None:
        self.now = 1_700_000_000.0
        self.released: list[tuple[Any, int]] = []
        self.path = tmp_path / "audit.jsonl"
        engine = Engine(EngineConfig(),
                        CompiledPolicySet(parse_policy_texts([("p.toml", NAMES_POLICY)])))
        self.pipeline = Pipeline(engine, AuditLog(str(self.path)), Stats(),
                                 clock=lambda: self.now, settings=NamesConfig(resolvers=()),
                                 release=lambda token, mark: self.released.append((token, mark)))
        self.pipeline.learn(self.now, [(SITE, "site.example", 300)])

    def send(self, raw: bytes, pending: bool = False, token: Any = None,
             unseen: bool = False) -> int | marks.Held:
        """`unseen`: the first packet of a flow the ruleset made pending at its SYN."""
        mark = marks.UNSEEN if unseen else marks.QUEUED | (marks.PENDING if pending else 0)
        return self.pipeline.handle(raw, mark, 3, token)

    def events(self) -> list[dict]:
        self.pipeline.audit.flush()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def tcp(dst: str, flags: str, seq: int, data: bytes = b"", **fields: Any) -> bytes:
    packet = IP(src=CLIENT, dst=dst) / TCP(sport=40000, dport=443, flags=flags, seq=seq,
                                          **fields)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def test_transcript_allowed_name(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    hello = client_hello("site.example")
    assert t.send(tcp(SITE, "S", 99)) == marks.PENDING  # SYN: may wait for its name
    assert t.send(tcp(SITE, "A", 100), pending=True) == marks.PENDING  # bare ACK passes
    assert t.send(tcp(SITE, "PA", 100, hello[:100]), True, "h1") is HOLD
    assert t.pipeline.flows.waiting == 1
    assert t.send(tcp(SITE, "PA", 200, hello[100:]), True, "h2") is HOLD
    assert t.released == [("h1", marks.ALLOW), ("h2", marks.ALLOW)]
    assert t.pipeline.flows.waiting == 0, "decided flows are not waiting for a name"
    (event,) = t.events()
    assert (event["event"]["action"], event["nfguard"]["evidence"]) == ("allow", "sni")


def test_transcript_unreadable_hello_on_a_shared_address(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    # An empty record first, then a hello for another name: however the reader takes it,
    # the address's DNS name (site.example) must not decide.
    opening = b"\x16\x03\x01\x00\x00" + client_hello("evil.example")
    assert t.send(tcp(SITE, "S", 99)) == marks.PENDING
    assert t.send(tcp(SITE, "PA", 100, opening), True, "h") is HOLD
    assert t.released == [("h", marks.DENY)]
    (event,) = t.events()
    assert event["event"]["action"] == "deny"
    assert event.get("destination", {}).get("domain") != "site.example"


def test_transcript_syn_to_an_address_no_name_could_allow(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    assert t.send(tcp(ELSEWHERE, "S", 99)) == marks.DENY
    assert t.pipeline.flows.waiting == 0 and len(t.pipeline.flows) == 0


def test_transcript_syn_with_options_beyond_the_handshakes(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    syn = tcp(SITE, "S", 99, options=[("MSS", 1460), (254, b"EXFILTRATE")])
    assert t.send(syn, token="s") is HOLD
    assert t.released == [("s", marks.DENY)]
    assert t.events()[0]["nfguard"]["unreadable"] == "not_bare"


def test_transcript_fast_open(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    syn = tcp(SITE, "S", 99, client_hello("evil.example"), options=[("TFO", b"")])
    assert t.send(syn, token="syn") is HOLD
    assert t.released == [("syn", marks.DENY)]
    (event,) = t.events()
    # Read from the SYN's first byte: the presented name, not the address's.
    assert (event["destination"]["domain"], event["rule"]["name"]) == ("evil.example",
                                                                       "p/rest")


def test_transcript_a_and_aaaa_on_one_socket(tmp_path: Path) -> None:
    """The second query leaves before the first's conntrack entry is confirmed, so it is
    queued as new too: it gets the first's verdict and no event of its own."""
    t = Transcript(tmp_path)

    def query(qtype: str) -> bytes:
        return bytes(IP(src=CLIENT, dst="10.0.0.53") / UDP(sport=5353, dport=53)
                     / DNS(rd=1, qd=DNSQR(qname="site.example", qtype=qtype)))

    def flow_events() -> list[dict]:
        return [e for e in t.events() if "dns" not in e]

    assert t.send(query("A")) == marks.ALLOW
    assert t.send(query("AAAA")) == marks.ALLOW
    assert len(flow_events()) == 1
    assert [e["dns"]["question"]["type"] for e in t.events() if "dns" in e] == ["A", "AAAA"]
    t.now += 60  # long after: a new flow on the same tuple is decided again
    assert t.send(query("A")) == marks.ALLOW
    assert len(flow_events()) == 2


def test_transcript_a_and_aaaa_denied_alike(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    query = bytes(IP(src=CLIENT, dst="198.51.100.1") / UDP(sport=5353, dport=53))
    assert [t.send(query), t.send(query)] == [marks.DENY, marks.DENY]
    assert len(t.events()) == 1


def test_the_engine_answers_held_packets_with_hold(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    assert t.send(tcp(SITE, "S", 99)) == marks.PENDING
    assert t.send(tcp(SITE, "PA", 100, b"\x16\x03"), True, "h") is marks.HOLD
    assert t.pipeline.flows.holding == 1


# -- flows the kernel made pending at their SYN (one trip) ----------------------------------

def test_transcript_a_flow_first_seen_at_its_data_is_decided_by_its_name(tmp_path: Path) -> None:
    """The ruleset let the SYN pass as pending: the engine starts at the first data."""
    t = Transcript(tmp_path)
    hello = client_hello("site.example")
    assert t.send(tcp(SITE, "PA", 100, hello[:100]), token="h1", unseen=True) is HOLD
    assert t.send(tcp(SITE, "A", 100), pending=True) == marks.PENDING  # bare: passes
    assert t.send(tcp(SITE, "PA", 200, hello[100:]), True, "h2") is HOLD
    assert t.released == [("h1", marks.ALLOW), ("h2", marks.ALLOW)]
    (event,) = t.events()
    assert (event["event"]["action"], event["rule"]["name"]) == ("allow", "p/site")


def test_transcript_a_flow_first_seen_at_its_data_that_no_name_could_allow(
        tmp_path: Path) -> None:
    """The sets are global: another client's rule put the address there. This client's
    policy decides at the first data segment, as it would have at the SYN."""
    t = Transcript(tmp_path)
    assert t.send(tcp(ELSEWHERE, "PA", 100, b"GET / HTTP/1.1\r\n"), unseen=True) == marks.DENY
    (event,) = t.events()
    assert event["rule"]["name"] == "p/rest"


def test_a_silent_flow_the_kernel_made_pending_is_decided_at_hello_timeout(
        tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    pipeline, opened = t.pipeline, t.now
    key = (6, CLIENT, 40000, SITE, 443)
    seen = (6, CLIENT, 40002, SITE, 443)  # one the engine knows: its own to decide
    pipeline.kernel_pending = lambda: [(key, opened + 0.5), (seen, opened)]
    written: list[list[tuple[Any, int]]] = []
    pipeline.set_verdicts = written.append
    t.send(bytes(IP(src=CLIENT, dst=SITE) / TCP(sport=40002, dport=443, flags="PA", seq=5)
                 / Raw(client_hello("site.example")[:50])), True, "held")
    t.now += 1
    assert pipeline.sweep() == 0 and written == []  # seen first: opened then at the latest
    pipeline.kernel_pending = lambda: [(key, t.now), (seen, opened)]  # a bare ACK since
    t.now = opened + 5.4  # hello_timeout is 5 s from the earliest opening seen
    pipeline._next_unseen = 0.0
    assert pipeline.sweep() == 1 and written == []  # only the held flow
    t.now = opened + 5.5
    pipeline._next_unseen = 0.0
    assert pipeline.sweep() == 1
    assert written == [[(key, marks.DENY)]]
    events = {e["source"]["port"]: e for e in t.events()}
    assert events[40000]["nfguard"]["unreadable"] == "hello_timeout"
    assert events[40000]["event"]["action"] == "deny"
    # Decided: a late packet of it gets the same verdict, and it is not decided again.
    assert t.send(tcp(SITE, "PA", 100, b"\x16\x03\x01"), True) == marks.DENY
    pipeline._next_unseen = 0.0
    assert pipeline.sweep() == 0


def test_deferred_audit_events_are_written_by_flush_events(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    t.pipeline.defer_events = True
    assert t.send(tcp(ELSEWHERE, "S", 99)) == marks.DENY
    assert t.events() == []  # the verdict first
    t.pipeline.flush_events()
    assert [e["event"]["action"] for e in t.events()] == ["deny"]


def test_a_connection_on_a_reused_tuple_is_judged_anew_not_given_the_last_ones_verdict(
        tmp_path: Path) -> None:
    """The ruleset marks the first packet of each flow it made pending UNSEEN, once per
    conntrack entry: an allowed connection, then another on the same addresses and ports
    (closed with a reset, opened again at once: its sequence numbers close to the first's)
    presenting another name, is decided by that name."""
    t = Transcript(tmp_path)
    first = client_hello("site.example")
    assert t.send(tcp(SITE, "PA", 100, first), token="a", unseen=True) is HOLD
    assert t.released == [("a", marks.ALLOW)]
    assert t.send(tcp(SITE, "PA", 100 + len(first), b"\x17\x03\x03"), True) == marks.ALLOW
    again = client_hello("evil.example")
    assert t.send(tcp(SITE, "PA", 100 + len(first), again), token="b", unseen=True) is HOLD
    assert t.released[-1] == ("b", marks.DENY)
    assert [e["event"]["action"] for e in t.events()] == ["allow", "deny"]


def test_a_flow_replaced_while_holding_is_decided_not_left_in_the_queue(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    hello = client_hello("site.example")
    assert t.send(tcp(SITE, "PA", 100, hello[:60]), token="old", unseen=True) is HOLD
    assert t.send(tcp(SITE, "PA", 900, hello), token="new", unseen=True) is HOLD
    assert t.released == [("old", marks.DENY), ("new", marks.ALLOW)]
    assert [e["nfguard"].get("unreadable") for e in t.events()] == ["evicted", None]


def test_a_name_expired_or_learnt_changes_the_next_flows_verdict(tmp_path: Path) -> None:
    """Decisions are remembered by what they depend on: the names the cache holds for the
    address now, and whether the presented name resolves there now."""
    t = Transcript(tmp_path)
    hello = client_hello("site.example")

    def segment(sport: int, flags: str, data: bytes = b"") -> bytes:
        return bytes(IP(src=CLIENT, dst=SITE) / TCP(sport=sport, dport=443, flags=flags,
                                                    seq=100 if data else 99) / Raw(data))

    assert t.send(segment(40001, "S")) == marks.PENDING  # site.example's address: may wait
    assert t.send(segment(40001, "PA", hello), True, "a") is HOLD
    assert t.released[-1] == ("a", marks.ALLOW)
    assert t.send(segment(40002, "S")) == marks.PENDING
    t.now += 601  # 300 s of TTL and 300 of grace later, the binding is gone
    assert t.send(segment(40002, "PA", hello), True, "b") is HOLD
    assert t.released[-1] == ("b", marks.DENY)
    assert t.events()[-1]["event"]["reason"] == "name_mismatch"
    # No name of the address could allow a flow to it now: decided at its first sight.
    assert t.send(segment(40003, "PA", hello), unseen=True) == marks.DENY
    t.pipeline.learn(t.now, [(SITE, "site.example", 300)])  # a new answer
    assert t.send(segment(40004, "PA", hello), token="c", unseen=True) is HOLD
    assert t.released[-1] == ("c", marks.ALLOW)


def test_a_reload_changes_the_next_flows_verdict(tmp_path: Path) -> None:
    t = Transcript(tmp_path)
    hello = client_hello("site.example")
    assert t.send(tcp(SITE, "PA", 100, hello), token="a", unseen=True) is HOLD
    assert t.released[-1] == ("a", marks.ALLOW)

    def reload(old: str, new: str) -> None:
        t.pipeline.engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts(
            [("p.toml", NAMES_POLICY.replace(old, new))])))

    reload('name = "site"', 'name = "renamed"')
    assert t.send(tcp(SITE, "PA", 100, hello), token="b", unseen=True) is HOLD
    assert t.released[-1] == ("b", marks.ALLOW)
    assert t.events()[-1]["rule"]["name"] == "p/renamed"
    reload('action = "allow"\nto = ["site.example"]', 'action = "deny"\nto = ["site.example"]')
    # Denied by its DNS name now: no name could allow it, so decided at its first sight.
    assert t.send(tcp(SITE, "PA", 100, hello), unseen=True) == marks.DENY
    assert t.events()[-1]["rule"]["name"] == "p/site"
