"""Engine.decide over real parsed packets: rules, clients, modes, defaults, failures
(Pipeline.handle is tests/unit/test_pipeline.py's)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

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


# -- every match key, and the client remembered per process -------------------------------

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
