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
from nfguard.policy.internal import classify, network
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import ProcessInfo
from nfguard.wire.ip import parse_packet
from tests.unit.policies import PRIVATE_NAMES

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


# -- the DNS rebinding guard ([names] private) ----------------------------------------

LENIENT = ProcessInfo(uid=1004, user="lenient", exe="/usr/bin/curl")
CONNECTED = network("203.0.113.0/24")


def private_engine(private: str = "allow", verify: bool = True, **settings: object) -> Engine:
    policies = CompiledPolicySet(parse_policy_texts([("rules.toml", PRIVATE_NAMES)]))
    return Engine(EngineConfig(**settings), policies, private=private,  # type: ignore[arg-type]
                  internal=lambda version, address: classify(version, address, (CONNECTED,)),
                  verify=verify)


def syn(dst: str, dport: int = 443) -> bytes:
    return v6_syn(dst, dport) if ":" in dst else v4_syn(dst, dport)


API = (("api.example.com", "dns"),)


@pytest.mark.parametrize(("private", "dst", "kind"), [
    ("allow", "169.254.169.254", "metadata"),
    ("allow", "::ffff:169.254.169.254", "metadata"),
    ("allow", "64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of it
    ("allow", "fd00:ec2::254", "metadata"),
    ("allow", "100.100.100.200", "metadata"),
    ("allow", "127.0.0.1", "loopback"),
    ("allow", "0.0.0.0", "loopback"),
    ("allow", "::1", "loopback"),
    ("allow", "169.254.10.1", "link_local"),
    ("allow", "fe80::1", "link_local"),
    ("deny", "10.0.0.5", "private"),
    ("deny", "::ffff:10.0.0.5", "private"),
    ("deny", "64:ff9b::a00:5", "private"),
    ("deny", "192.168.1.1", "private"),
    ("deny", "fd12::1", "private"),
    ("deny", "100.64.1.1", "cgnat"),
    ("deny", "203.0.113.9", "connected"),
    ("deny", "239.1.2.3", "multicast"),
    ("deny", "169.254.169.254", "metadata"),
])
def test_a_name_alone_is_kept_from_inside(private: str, dst: str, kind: str) -> None:
    engine = private_engine(private)
    decision = decide(engine, syn(dst), None, API)
    assert (decision.action, decision.reason, decision.private) == (
        "deny", "name_private_address", kind)
    assert (decision.rule, decision.domain, decision.evidence) == (
        "web/api", "api.example.com", "dns")
    named = engine.decide_named(parse_packet(syn(dst)), "api.example.com", "sni",
                                resolved=lambda _ip, _name: True)
    assert (named.action, named.reason, named.private, named.evidence) == (
        "deny", "name_private_address", kind, "sni")


@pytest.mark.parametrize(("private", "dst"), [
    ("allow", "10.0.0.5"), ("allow", "fd12::1"), ("allow", "100.64.1.1"),
    ("allow", "203.0.113.9"), ("allow", "8.8.8.8"), ("deny", "8.8.8.8"),
    ("deny", "2606:4700::1"), ("deny", "64:ff9b::808:808"),
])
def test_names_reach_what_the_setting_allows(private: str, dst: str) -> None:
    decision = decide(private_engine(private), syn(dst), None, API)
    assert (decision.action, decision.reason, decision.rule, decision.private) == (
        "allow", "rule_match", "web/api", None)


@pytest.mark.parametrize("private", ["allow", "deny"])
@pytest.mark.parametrize("dst", ["10.0.0.9", "169.254.169.254", "fd12::9"])
def test_a_rule_with_private_true_opts_its_names_in(private: str, dst: str) -> None:
    engine = private_engine(private)
    decision = decide(engine, syn(dst), None, (("db.corp.example", "dns"),))
    assert (decision.action, decision.rule) == ("allow", "web/corp")
    # one address, two names: where the public name is kept out, the opted-in rule decides
    both = decide(engine, syn(dst), None, (("api.example.com", "dns"),
                                           ("db.corp.example", "dns")))
    kept = private == "deny" or dst == "169.254.169.254"
    assert (both.action, both.rule) == ("allow", "web/corp" if kept else "web/api")
    named = engine.decide_named(parse_packet(syn(dst)), "db.corp.example", "sni",
                                resolved=lambda _ip, _name: True)
    assert (named.action, named.rule) == ("allow", "web/corp")


def test_a_cidr_rule_naming_the_address_allows_it() -> None:
    engine = private_engine("deny")
    decision = decide(engine, syn("10.1.2.3", 5000), None, API)
    assert (decision.action, decision.rule, decision.evidence) == ("allow", "web/db-net", "cidr")
    # ... on its ports only
    other = decide(engine, syn("10.1.2.3", 443), None, API)
    assert (other.action, other.reason) == ("deny", "name_private_address")


def test_anti_fronting_comes_first() -> None:
    engine = private_engine("deny")
    named = engine.decide_named(parse_packet(syn("10.0.0.5")), "api.example.com", "sni",
                                resolved=lambda _ip, _name: False)
    assert named.reason == "name_mismatch"
    opted = engine.decide_named(parse_packet(syn("10.0.0.5")), "db.corp.example", "sni",
                                resolved=lambda _ip, _name: False)
    assert opted.reason == "name_mismatch"


def test_a_flow_kept_from_inside_does_not_wait_for_its_name() -> None:
    """Its SYN is decided: no name could allow it there, so nothing reaches the server."""
    packet = parse_packet(syn("10.0.0.5"))
    assert private_engine("allow").assess(packet, None, API) is None  # waits for the SNI
    refused = private_engine("deny").assess(packet, None, API)
    assert refused is not None and refused.reason == "name_private_address"
    assert private_engine("deny").assess(packet, None, (("db.corp.example", "dns"),)) is None


def test_engine_default_decides_where_no_rule_does() -> None:
    """Without a rule for the address, an engine.default that allows allows (the address
    alone gets it); one that denies refuses it as the guard's."""
    lenient = decide(private_engine("deny", default="allow"), syn("10.0.0.5"), LENIENT, API)
    assert (lenient.action, lenient.reason) == ("allow", "no_rule_match")
    strict = decide(private_engine("deny"), syn("10.0.0.5"), LENIENT, API)
    assert (strict.action, strict.reason, strict.rule) == (
        "deny", "name_private_address", "web/api")


def test_audit_mode_records_the_refusal() -> None:
    decision = decide(private_engine("deny", mode="audit"), syn("10.0.0.5"), None, API)
    assert (decision.action, decision.verdict, decision.reason) == (
        "deny", "allow", "name_private_address")


def test_with_verify_off_only_an_opted_in_rule_makes_a_flow_inside_wait() -> None:
    """Any name may be presented then, but inside only a rule with private = true could
    allow it: without one the SYN is decided, so not even a handshake reaches inside."""
    packet = parse_packet(syn("10.0.0.5", 80))
    engine = private_engine("deny", verify=False)
    assert engine.assess(packet, None, API) is None  # corp's names (private) hold on 80
    decided = engine.assess(parse_packet(syn("10.0.0.5", 5001)), None, API)
    assert decided is not None and decided.action == "deny"
    policies = CompiledPolicySet(parse_policy_texts([("r.toml", PRIVATE_NAMES.replace(
        "private = true", "private = false"))]))
    strict = Engine(EngineConfig(), policies, verify=False, private="deny")
    refused = strict.assess(packet, None, API)
    assert refused is not None and refused.reason == "name_private_address"
    assert strict.assess(parse_packet(syn("8.8.8.8", 80)), None, API) is None


# -- remembered decisions: never staler than what they depend on ---------------------------

def test_a_remembered_named_decision_asks_the_name_cache_every_time() -> None:
    """The presented name's decision is remembered, whether the name resolves to the
    address is not: an answer learnt or expired changes the very next flow's verdict."""
    engine = private_engine("allow")
    packet = parse_packet(syn("8.8.8.8"))
    answers = {"api.example.com": True}

    def named() -> Decision:
        return engine.decide_named(packet, "api.example.com", "sni",
                                   resolved=lambda _ip, name: answers.get(name, False))

    assert (named().action, named().rule) == ("allow", "web/api")
    answers.clear()  # the binding expired
    assert (named().action, named().reason) == ("deny", "name_mismatch")
    answers["api.example.com"] = True  # a new answer
    assert named().action == "allow"


def test_a_remembered_decision_follows_the_hosts_networks() -> None:
    """The kind of an address is asked again per flow: a network the host joins keeps a
    name from it at once ([names] private = "deny")."""
    connected: list = []
    engine = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts(
        [("rules.toml", PRIVATE_NAMES)])), private="deny",
        internal=lambda version, address: classify(version, address, connected))
    packet = parse_packet(syn("198.51.100.7"))
    assert engine.decide(packet, None, API).action == "allow"
    connected.append(network("198.51.100.0/24"))
    refused = engine.decide(packet, None, API)
    assert (refused.action, refused.private) == ("deny", "connected")
    named = engine.decide_named(packet, "api.example.com", "sni", resolved=lambda *_: True)
    assert (named.action, named.private) == ("deny", "connected")
    connected.clear()
    assert engine.decide(packet, None, API).action == "allow"


def test_a_remembered_decision_follows_the_hosts_resolvers() -> None:
    """"@resolvers" is asked again per flow: an address that stops being a resolver
    loses the rule at once."""
    policies = CompiledPolicySet(parse_policy_texts([("r.toml", """\
[[client]]
name = "all"
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
name = "dns"
action = "allow"
to = ["@resolvers"]
ports = [53]
""")]))
    resolvers = {"192.0.2.53"}
    engine = Engine(EngineConfig(), policies, resolvers=lambda ip: ip in resolvers)
    packet = parse_packet(v4_udp("192.0.2.53", 53))
    assert engine.decide(packet).action == "allow"
    resolvers.clear()
    assert engine.decide(packet).action == "deny"


def test_the_settings_of_an_engine_are_fixed_once_built() -> None:
    """Its decisions are remembered: a setting changed afterwards could not reach them."""
    with pytest.raises(AttributeError):
        make_engine().verify = False  # type: ignore[misc]
