"""Engine.decide over real parsed packets, and Pipeline.handle (marks, audit, failures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from nfguard import marks
from nfguard.audit import AuditLog
from nfguard.config import EngineConfig
from nfguard.engine import (
    ENGINE_ERROR,
    NO_CLIENT_MATCH,
    NO_RULE_MATCH,
    RULE_MATCH,
    UNPARSEABLE,
    Decision,
    Engine,
)
from nfguard.metrics import Stats
from nfguard.pipeline import Pipeline
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import ProcessInfo
from nfguard.wire.ip import parse_packet

POLICY = """\
[[client]]
name = "git"
match = { exe = "/usr/bin/git" }
policies = ["github", "deny-all"]

[[client]]
name = "ci"
match = { user = "ci" }
mode = "audit"
policies = ["github"]

[[client]]
name = "strict"
match = { user = "strict" }
mode = "enforce"
policies = ["github"]

[[policy]]
name = "github"

[[policy.rule]]
name = "https"
action = "allow"
to = ["140.82.112.0/20", "2606:50c0::/32", "github.com"]
ports = [443]
proto = "tcp"

[[policy.rule]]
name = "dns"
action = "allow"
to = ["9.9.9.9", "2620:fe::fe"]
ports = [53]
proto = "udp"

[[policy.rule]]
name = "blocked"
action = "deny"
to = ["140.82.0.0/16"]

[[policy]]
name = "deny-all"

[[policy.rule]]
name = "all"
action = "deny"
"""

GIT = ProcessInfo(uid=1000, user="alice", pid=42, exe="/usr/bin/git")
CI = ProcessInfo(uid=1001, user="ci", exe="/usr/bin/curl")
STRICT = ProcessInfo(uid=1002, user="strict", exe="/usr/bin/curl")
STRANGER = ProcessInfo(uid=1003, user="bob", exe="/usr/bin/curl")


def make_engine(**settings: object) -> Engine:
    policies = CompiledPolicySet(parse_policy_texts([("rules.toml", POLICY)]))
    return Engine(EngineConfig(**settings), policies)  # type: ignore[arg-type]


def v4_syn(dst: str, dport: int) -> bytes:
    return bytes(IP(src="10.0.0.2", dst=dst) / TCP(sport=40000, dport=dport, flags="S"))


def v6_syn(dst: str, dport: int) -> bytes:
    return bytes(IPv6(src="2001:db8::2", dst=dst) / TCP(sport=40000, dport=dport, flags="S"))


def v4_udp(dst: str, dport: int) -> bytes:
    return bytes(IP(src="10.0.0.2", dst=dst) / UDP(sport=5000, dport=dport))


def v6_udp(dst: str, dport: int) -> bytes:
    return bytes(IPv6(src="2001:db8::2", dst=dst) / UDP(sport=5000, dport=dport))


def decide(engine: Engine, raw: bytes, process: ProcessInfo | None,
           names: tuple[tuple[str, str], ...] = ()) -> Decision:
    return engine.decide(parse_packet(raw), process, names)


@pytest.mark.parametrize(("raw", "action", "rule"), [
    (v4_syn("140.82.112.3", 443), "allow", "github/https"),
    (v6_syn("2606:50c0::1", 443), "allow", "github/https"),
    (v4_udp("9.9.9.9", 53), "allow", "github/dns"),
    (v6_udp("2620:fe::fe", 53), "allow", "github/dns"),
    (v4_syn("140.82.112.3", 22), "deny", "github/blocked"),
    (v4_udp("140.82.1.1", 443), "deny", "github/blocked"),
    (v4_syn("9.9.9.9", 53), "deny", "deny-all/all"),  # tcp to a udp rule: next policy
    (v6_syn("2001:db8::99", 443), "deny", "deny-all/all"),
])
def test_rule_decisions_for_a_client(raw: bytes, action: str, rule: str) -> None:
    d = decide(make_engine(default="allow"), raw, GIT)
    assert (d.action, d.verdict, d.mode, d.reason, d.client, d.rule) == (
        action, action, "enforce", RULE_MATCH, "git", rule)
    assert d.evidence == "cidr" and d.domain is None


def test_name_evidence_is_reported() -> None:
    d = decide(make_engine(), v4_syn("192.0.2.10", 443), GIT, (("GitHub.com.", "sni"),))
    assert (d.action, d.rule, d.evidence, d.domain) == ("allow", "github/https", "sni",
                                                         "github.com")


RESOLVER_POLICY = """\
[[client]]
name = "everyone"
policies = ["dns"]

[[policy]]
name = "dns"

[[policy.rule]]
name = "resolvers"
action = "allow"
to = ["@resolvers", "dns.example"]
ports = [53, 853]
"""


def test_resolvers_are_the_hosts_as_the_engine_is_told_at_each_flow() -> None:
    host_resolvers = {"10.0.0.53"}
    asked: list[str] = []

    def serves(ip: str) -> bool:
        asked.append(ip)
        return ip in host_resolvers

    engine = Engine(EngineConfig(default="deny"),
                    CompiledPolicySet(parse_policy_texts([("r.toml", RESOLVER_POLICY)])),
                    resolvers=serves)
    assert decide(engine, v4_udp("10.0.0.53", 53), None).rule == "dns/resolvers"
    assert decide(engine, v4_syn("10.0.0.53", 53), None).rule == "dns/resolvers"
    assert decide(engine, v4_udp("203.0.113.9", 53), None).reason == NO_RULE_MATCH
    host_resolvers = {"203.0.113.9"}  # resolv.conf rewritten
    assert decide(engine, v4_udp("203.0.113.9", 53), None).rule == "dns/resolvers"
    assert decide(engine, v4_udp("10.0.0.53", 53), None).reason == NO_RULE_MATCH
    # Anti-fronting: a name the rule allows, presented to a resolver's address, is going
    # to one of the rule's own destinations; to another address it is not.
    dot = parse_packet(v4_syn("203.0.113.9", 853))
    assert engine.decide_named(dot, "dns.example", "sni").action == "allow"
    elsewhere = engine.decide_named(parse_packet(v4_syn("192.0.2.1", 853)), "dns.example", "sni")
    assert (elsewhere.action, elsewhere.reason) == ("deny", "name_mismatch")
    asked.clear()
    unused = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("r.toml", POLICY)])),
                    resolvers=serves)
    decide(unused, v4_udp("10.0.0.53", 53), GIT)
    assert asked == [], "a policy without @resolvers never asks"


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_default_when_no_rule_matches(default: str) -> None:
    # "ci" has only the github policy: port 80 to an unknown address matches nothing.
    d = decide(make_engine(default=default, mode="enforce"), v4_syn("192.0.2.1", 80), STRICT)
    assert (d.action, d.verdict, d.reason, d.evidence, d.client, d.rule) == (
        default, default, NO_RULE_MATCH, "default", "strict", None)


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_default_when_no_client_matches(default: str) -> None:
    engine = make_engine(default=default)
    for process in (STRANGER, None):
        d = decide(engine, v4_syn("140.82.112.3", 443), process)
        assert (d.action, d.verdict, d.reason, d.evidence, d.client, d.rule) == (
            default, default, NO_CLIENT_MATCH, "default", None, None)


def test_audit_mode_accepts_and_records_the_decision() -> None:
    engine = make_engine(mode="audit")
    d = decide(engine, v4_syn("140.82.112.3", 22), GIT)
    assert (d.action, d.verdict, d.mode, d.rule) == ("deny", "allow", "audit", "github/blocked")
    d = decide(engine, v4_syn("140.82.112.3", 443), GIT)
    assert (d.action, d.verdict, d.mode) == ("allow", "allow", "audit")
    d = decide(engine, v4_syn("140.82.112.3", 443), STRANGER)
    assert (d.action, d.verdict, d.mode, d.reason) == ("deny", "allow", "audit",
                                                       NO_CLIENT_MATCH)


def test_client_mode_overrides_engine_mode() -> None:
    d = decide(make_engine(mode="enforce"), v4_syn("140.82.112.3", 22), CI)
    assert (d.action, d.verdict, d.mode, d.client) == ("deny", "allow", "audit", "ci")
    d = decide(make_engine(mode="audit"), v4_syn("140.82.112.3", 22), STRICT)
    assert (d.action, d.verdict, d.mode, d.client) == ("deny", "deny", "enforce", "strict")
    # No rule match still follows the client's mode.
    d = decide(make_engine(mode="enforce", default="deny"), v4_syn("192.0.2.1", 80), CI)
    assert (d.action, d.verdict, d.mode, d.reason) == ("deny", "allow", "audit", NO_RULE_MATCH)


def test_clients_are_tried_in_order() -> None:
    both = ProcessInfo(uid=1001, user="ci", exe="/usr/bin/git")
    assert decide(make_engine(), v4_syn("140.82.112.3", 22), both).client == "git"


def test_unparseable_is_denied_in_enforce_and_recorded_in_audit() -> None:
    d = make_engine(mode="enforce", default="allow").unparseable()
    assert (d.action, d.verdict, d.reason, d.evidence) == ("deny", "deny", UNPARSEABLE,
                                                           "default")
    d = make_engine(mode="audit").unparseable()
    assert (d.action, d.verdict, d.mode) == ("deny", "allow", "audit")


@pytest.mark.parametrize(("fail", "verdict"), [("closed", "deny"), ("open", "allow")])
def test_failure_follows_fail_mode(fail: str, verdict: str) -> None:
    d = make_engine(fail=fail).failure()
    assert (d.action, d.verdict, d.reason) == (verdict, verdict, ENGINE_ERROR)


# ---------------------------------------------------------------- Pipeline

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
    assert written[1]["network"] == {"transport": "tcp", "type": "ipv6"}
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


# -- every match key, and the pipeline asking attribution -------------------------------

MATCHES = [
    ({"exe": "/usr/bin/*"}, ProcessInfo(exe="/usr/bin/curl"), True),
    ({"exe": "/usr/bin/*"}, ProcessInfo(exe="/opt/bin/curl"), False),
    ({"exe": "/usr/bin/*"}, ProcessInfo(), False),
    ({"cmdline": "curl -s *"}, ProcessInfo(cmdline=("curl", "-s", "x")), True),
    ({"cmdline": "curl -s *"}, ProcessInfo(cmdline=("wget", "x")), False),
    ({"user": "alice"}, ProcessInfo(uid=1000, user="alice"), True),
    ({"user": "1000"}, ProcessInfo(uid=1000, user="alice"), True),
    ({"user": "1000"}, ProcessInfo(uid=1001), False),
    ({"group": "adm"}, ProcessInfo(gids=(1000, 4), groups=("alice", "adm")), True),
    ({"group": "4"}, ProcessInfo(gids=(1000, 4), groups=("alice", "adm")), True),
    ({"group": "27"}, ProcessInfo(gids=(1000, 4), groups=("alice", "adm")), False),
    ({"unit": "cron.service"}, ProcessInfo(unit="cron.service"), True),
    ({"unit": "cron.service"}, ProcessInfo(unit="ssh.service"), False),
    ({"cgroup": "/system.slice"}, ProcessInfo(cgroup="/system.slice/cron.service"), True),
    ({"cgroup": "/system.slice/"}, ProcessInfo(cgroup="/system.slice"), True),
    ({"cgroup": "/system.slice"}, ProcessInfo(cgroup="/system.slicer/x"), False),
    ({"parent_exe": "/usr/sbin/cron"}, ProcessInfo(parent_exe="/usr/sbin/cron"), True),
    ({"sha256": "ab" * 32}, ProcessInfo(sha256="ab" * 32), True),
    ({"sha256": "ab" * 32}, ProcessInfo(sha256="cd" * 32), False),
    ({"sha256": "ab" * 32}, ProcessInfo(), False),
    ({"exe": "/usr/bin/curl", "user": "ci"}, ProcessInfo(exe="/usr/bin/curl", user="ci"), True),
    ({"exe": "/usr/bin/curl", "user": "ci"}, ProcessInfo(exe="/usr/bin/curl", user="x"), False),
]


@pytest.mark.parametrize(("match", "process", "holds"), MATCHES)
def test_match_keys(match: dict[str, str], process: ProcessInfo, holds: bool) -> None:
    table = ", ".join(f'{key} = "{value}"' for key, value in match.items())
    text = (f'[[client]]\nname = "c"\nmatch = {{ {table} }}\npolicies = ["p"]\n'
            '[[policy]]\nname = "p"\n[[policy.rule]]\naction = "allow"\n')
    engine = Engine(EngineConfig(default="deny"),
                    CompiledPolicySet(parse_policy_texts([("r.toml", text)])))
    assert engine.client_for(process) is (engine.policies.clients[0] if holds else None)
    assert engine.policies.matches_sha256 is ("sha256" in match)


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
    assert pipeline.handle(v4_udp("9.9.9.9", 53), 0, 3, None, 1000) == marks.ALLOW
    assert senders.asked == [("tcp", 4, "10.0.0.2", 40000, "140.82.112.3", 22, False, None),
                             ("udp", 4, "10.0.0.2", 5000, "9.9.9.9", 53, False, 1000)]
    event = events(pipeline, path)[0]
    assert event["nfguard"]["client"] == "git"
    assert event["process"] == {"pid": 42, "executable": "/usr/bin/git"}
    assert event["user"] == {"id": "1000", "name": "alice"}


MATCHED = ProcessInfo(uid=1000, user="deploy", pid=7, exe="/usr/bin/git", cmdline=("git", "push"),
                      ppid=1, parent_exe="/usr/bin/bash", cgroup="/system.slice/ci.service",
                      unit="ci.service", gids=(1000, 27), groups=("deploy", "sudo"),
                      sha256="ab" * 32)
MATCH_VALUES = {"exe": "/usr/bin/git", "cmdline": "git push", "user": "deploy", "group": "sudo",
                "unit": "ci.service", "cgroup": "/system.slice", "parent_exe": "/usr/bin/bash",
                "sha256": "ab" * 32}
ONE_FIELD_OFF = {"exe": {"exe": "/usr/bin/ssh"}, "cmdline": {"cmdline": ("git", "pull")},
                 "user": {"user": "root"}, "group": {"groups": ("deploy",)},
                 "unit": {"unit": "web.service"}, "cgroup": {"cgroup": "/user.slice"},
                 "parent_exe": {"parent_exe": "/usr/bin/zsh"}, "sha256": {"sha256": "cd" * 32}}


@pytest.mark.parametrize("key", sorted(ONE_FIELD_OFF))
def test_remembered_clients_tell_processes_apart_by_every_match_key(key: str) -> None:
    """client_for remembers its answer per process identity: a process that differs in
    the one field a client matches on must not be given the remembered client."""
    text = (f'[[client]]\nname = "by-{key}"\nmatch = {{ {key} = "{MATCH_VALUES[key]}" }}\n'
            'policies = ["p"]\n\n[[policy]]\nname = "p"\n\n[[policy.rule]]\nname = "r"\n'
            'action = "allow"\n')
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("c.toml", text)])))
    assert engine.client_for(MATCHED).name == f"by-{key}"
    other = MATCHED._replace(**ONE_FIELD_OFF[key])
    assert engine.client_for(other) is None
    assert engine.client_for(MATCHED).name == f"by-{key}"
