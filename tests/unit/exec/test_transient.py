"""Transient clients of `nfguard exec` under the service: in front of the host's clients,
for the command's cgroup and below only; a non-root requester's stacked on the host's."""

from __future__ import annotations

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP

from nfguard.audit import audit_event
from nfguard.config import EngineConfig
from nfguard.engine import Engine
from nfguard.exec.transient import (
    ExecMode,
    FlowLog,
    Transient,
    Transients,
    compile_transient,
    normalize_cgroup,
)
from nfguard.marks import DROP
from nfguard.metrics.counts import Stats
from nfguard.names.queries import QueryPath
from nfguard.policy.load import PolicyError, parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import ProcessInfo
from nfguard.wire.ip import parse_packet
from tests.unit.policies import EXEC_COMMAND, EXEC_HOST

CGROUP = "/nfguard.slice/exec-42.scope"
INSIDE = ProcessInfo(uid=1000, user="alice", pid=42, exe="/usr/bin/curl", cgroup=CGROUP)
CHILD = INSIDE._replace(pid=43, cgroup=CGROUP + "/sub")
OUTSIDE = INSIDE._replace(pid=44, cgroup="/user.slice/user-1000.slice/session-1.scope")
NEIGHBOUR = INSIDE._replace(pid=45, cgroup=CGROUP + "x")  # a name that starts alike


def host_engine(mode: str = "enforce", default: str = "allow") -> Engine:
    engine = Engine(EngineConfig(mode=mode, default=default),
                    CompiledPolicySet(parse_policy_texts([("host.toml", EXEC_HOST)])))
    engine.transients = Transients()
    return engine


def begin(host: Engine, text: str = EXEC_COMMAND, mode: ExecMode = ExecMode.ENFORCE,
          stacked: bool = False, cgroup: str = CGROUP) -> Transient:
    registry = host.transients
    assert registry is not None
    ident = registry.new_id()
    engine = compile_transient([("egress.toml", text)], [], mode, host)
    transient = Transient(ident, cgroup, "make[42]", mode, 0 if not stacked else 1000, 1,
                          stacked, engine, "egress.toml")
    registry.add(transient)
    return transient


def syn(dst: str, port: int = 443) -> bytes:
    return bytes(IP(src="10.0.0.2", dst=dst) / TCP(sport=40000, dport=port, flags="S"))


def decide(host: Engine, dst: str, process: ProcessInfo, port: int = 443,
           names: tuple[tuple[str, str], ...] = ()) -> tuple[str, str, str | None]:
    d = host.decide(parse_packet(syn(dst, port)), process, names)
    return d.verdict, d.action, d.client


def test_the_command_is_denied_what_the_host_allows_the_same_exe_outside() -> None:
    host = host_engine()
    begin(host)
    assert decide(host, "198.51.100.5", INSIDE) == ("deny", "deny", "build")
    assert decide(host, "198.51.100.5", CHILD) == ("deny", "deny", "build")
    assert decide(host, "198.51.100.5", OUTSIDE) == ("allow", "allow", "everyone")
    assert decide(host, "198.51.100.5", NEIGHBOUR) == ("allow", "allow", "everyone")
    assert decide(host, "198.51.100.5", INSIDE._replace(interface="docker0"))[0] == "allow"


def test_enforced_whatever_the_hosts_mode() -> None:
    host = host_engine(mode="audit")
    begin(host)
    assert decide(host, "198.51.100.5", INSIDE)[0] == "deny"
    assert decide(host, "192.0.2.1", OUTSIDE) == ("allow", "allow", "everyone")
    assert host.enforces(INSIDE) and not host.enforces(OUTSIDE)


def test_root_replaces_the_hosts_decision_a_stacked_one_only_adds_to_it() -> None:
    root = host_engine()
    begin(root)
    assert decide(root, "203.0.113.7", INSIDE)[0] == "allow"  # the host denies it
    user = host_engine()
    begin(user, stacked=True)
    assert decide(user, "203.0.113.7", INSIDE) == ("deny", "deny", "everyone")
    assert decide(user, "198.51.100.5", INSIDE)[0] == "deny"  # the command's policy denies
    # both allow: the command's client decides, and is named
    verdict, _action, client = decide(user, "192.0.2.9", INSIDE,
                                      names=(("pkg.example.org", "dns"),))
    assert (verdict, client) == ("allow", "build")


@pytest.mark.parametrize("mode", [ExecMode.AUDIT, ExecMode.ALLOW_ALL])
def test_a_stacked_audit_or_allow_all_cannot_let_out_what_the_host_denies(
        mode: ExecMode) -> None:
    host = host_engine()
    begin(host, mode=mode, stacked=True)
    assert decide(host, "203.0.113.7", INSIDE)[0] == "deny"
    assert decide(host, "198.51.100.5", INSIDE)[0] == "allow"


def test_audit_lets_through_and_says_what_the_policy_would_do() -> None:
    host = host_engine()
    begin(host, mode=ExecMode.AUDIT)
    d = host.decide(parse_packet(syn("198.51.100.5")), INSIDE)
    assert (d.verdict, d.action, d.mode, d.reason) == ("allow", "deny", "audit",
                                                       "no_rule_match")


def test_nested_a_stacked_inner_command_cannot_loosen_the_outer_one() -> None:
    host = host_engine()
    begin(host)  # root's, around
    inner = begin(host, text=_allow_everything(), stacked=True, cgroup=CGROUP + "/sub")
    assert inner.stacked
    assert decide(host, "198.51.100.5", CHILD) == ("deny", "deny", "build")
    assert decide(host, "203.0.113.7", CHILD) == ("allow", "allow", "all")


def _allow_everything() -> str:
    return ('[[client]]\nname = "all"\npolicies = ["all"]\n'
            '[[policy]]\nname = "all"\n[[policy.rule]]\naction = "allow"\n')


def test_waiting_for_a_name_and_the_hosts_final_deny() -> None:
    host = host_engine(default="deny")
    begin(host, stacked=True)
    packet = parse_packet(syn("192.0.2.9"))
    # the command's rule for pkg.example.org may match the SNI: the flow waits
    assert host.assess(packet, INSIDE, (("pkg.example.org", "dns"),)) is None
    named = host.decide_named(packet, "pkg.example.org", "sni", INSIDE,
                              resolved=lambda _ip, _name: True)
    assert named.verdict == "allow"
    # the host denies vault.example whatever name comes: decided at once
    d = host.assess(parse_packet(syn("192.0.2.10")), INSIDE, (("vault.example", "dns"),))
    assert d is not None and d.verdict == "deny"
    unreadable = host.decide_unreadable(packet, "malformed", INSIDE)
    assert unreadable.verdict == "deny"


def query(host: Engine, name: str, process: ProcessInfo) -> str:
    decision, mode = host.judge_query(process, name, "policy")
    return decision.action if mode == "enforce" else "allow"


def test_queries_judged_by_the_commands_policy() -> None:
    host = host_engine()
    begin(host)
    assert query(host, "pkg.example.org", INSIDE) == "allow"
    assert query(host, "api.example.com", INSIDE) == "deny"  # the host's, not the command's
    assert query(host, "api.example.com", OUTSIDE) == "allow"
    stacked = host_engine()
    begin(stacked, stacked=True)
    assert query(stacked, "vault.example", INSIDE) == "deny"  # the host refuses it


def test_queries_judged_even_when_the_host_lets_every_query_out() -> None:
    host = host_engine()
    begin(host)
    decision, _mode = host.judge_query(INSIDE, "x.tunnel.example", "any")
    assert decision.action == "deny"
    decision, _mode = host.judge_query(OUTSIDE, "x.tunnel.example", "any")
    assert decision.action == "allow"


def test_clients_in_the_command_policy_run_in_the_requested_mode() -> None:
    text = ('[[client]]\nname = "curl"\nmatch = { exe = "/usr/bin/curl" }\nmode = "audit"\n'
            'policies = ["build"]\n' + EXEC_COMMAND)
    host = host_engine()
    begin(host, text=text)
    assert decide(host, "198.51.100.5", INSIDE) == ("deny", "deny", "curl")
    # a process of the command no client matches: deny by default
    assert decide(host, "192.0.2.1", INSIDE._replace(exe="/usr/bin/wget"))[0] == "deny"


def test_a_broken_policy_names_file_and_line() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_transient([("egress.toml", EXEC_COMMAND.replace(
            '"203.0.113.7"', '"203.0.113.7/8"'))], [], ExecMode.ENFORCE, host_engine())
    assert str(caught.value).startswith("egress.toml:17: bad CIDR")
    with pytest.raises(PolicyError) as caught:
        compile_transient([], ["exa mple.org:99999"], ExecMode.ENFORCE, host_engine())
    assert str(caught.value).startswith("command line:")


def test_allow_all_needs_no_policy() -> None:
    host = host_engine()
    begin(host, text="", mode=ExecMode.ALLOW_ALL)
    nothing = host_engine()
    begin(nothing, text="")  # nothing allowed
    assert decide(nothing, "198.51.100.5", INSIDE)[0] == "deny"
    assert decide(host, "192.0.2.1", INSIDE, port=22)[0] == "allow"
    assert query(host, "anything.example", INSIDE) == "allow"


def test_removed_the_host_decides_again() -> None:
    host = host_engine()
    transient = begin(host)
    assert host.transients is not None
    assert host.transients.remove(transient.id) is transient
    assert decide(host, "198.51.100.5", INSIDE) == ("allow", "allow", "everyone")


def test_flows_recorded_for_every_command_the_process_is_in() -> None:
    host = host_engine()
    outer = begin(host)
    inner = begin(host, cgroup=CGROUP + "/sub")
    assert host.transients is not None
    for _ in range(3):
        packet = parse_packet(syn("198.51.100.5"))
        decision = host.decide(packet, CHILD)
        host.transients.record(CHILD, audit_event(decision, packet, 0.0, CHILD))
    host.transients.record(OUTSIDE, audit_event(host.decide(packet, OUTSIDE), packet, 0.0,
                                                 OUTSIDE))
    for transient in (outer, inner):
        (record,) = transient.flows.records()
        assert (record.address, record.port, record.verdict, record.count) == (
            "198.51.100.5", 443, "deny", 3)
        assert transient.status()["denied"] == 3


def test_the_record_is_bounded() -> None:
    log = FlowLog(limit=2)
    for port in (1, 2, 3, 3):
        log.add({"event": {"action": "allow"}, "nfguard": {"verdict": "allow"},
                 "destination": {"ip": "192.0.2.1", "port": port}})
    assert [r.port for r in log.records()] == [1, 2]
    assert (log.allowed, log.lost) == (4, 2)


@pytest.mark.parametrize(("path", "expected"), [
    ("nfguard.slice/exec-1.scope", "/nfguard.slice/exec-1.scope"),
    ("//a//b/", "/a/b"),
])
def test_cgroup_paths(path: str, expected: str) -> None:
    assert normalize_cgroup(path) == expected


@pytest.mark.parametrize("path", ["/", "", "/a/../b", "./a"])
def test_bad_cgroup_paths(path: str) -> None:
    with pytest.raises(ValueError):
        normalize_cgroup(path)


def test_a_query_packet_of_the_command() -> None:
    """The query path asks the same judges (names.queries through Engine.judge_query)."""

    host = host_engine()
    begin(host)
    events: list[dict] = []
    path = QueryPath(Stats(), lambda event, _process: events.append(event),
                     lambda _token, _mark: None)
    raw = bytes(IP(src="10.0.0.2", dst="10.0.0.53") / UDP(sport=5000, dport=53)
                / DNS(rd=1, qd=DNSQR(qname="api.example.com")))
    packet = parse_packet(raw)
    assert path.handle(host, packet, raw, 0, None, INSIDE) is DROP  # refused
    assert path.handle(host, packet, raw, 0, None, OUTSIDE) is not DROP
    assert [e["event"]["action"] for e in events] == ["deny", "allow"]


def test_a_commands_hash_rule_has_executables_hashed() -> None:
    host = host_engine()
    assert not host.matches_sha256
    begin(host, text='[[client]]\nname = "h"\nmatch = { sha256 = "' + "a" * 64 + '" }\n'
          'policies = ["build"]\n' + EXEC_COMMAND)
    assert host.matches_sha256
