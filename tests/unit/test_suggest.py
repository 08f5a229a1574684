"""`nfguard suggest`: policies from audit events, and what a policy would deny of them."""

from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nfguard import cli
from nfguard.config import EngineConfig
from nfguard.engine import Engine
from nfguard.policy.internal import PUBLIC, Internal
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.resolve import QueryJudge
from nfguard.suggest import (
    collapse_names,
    decide,
    denied,
    fnmatch_escape,
    judge_query,
    policy_engine,
    read_flows,
    refused,
    registrable_domain,
    suggest,
    toml_string,
)

CURL = {"exe": "/usr/bin/curl", "user": "alice"}
APT = {"exe": "/usr/lib/apt/methods/http", "user": "_apt", "unit": "apt-daily.service"}


def event(ip: str, port: int, proto: str = "tcp", domain: str | None = None,
          who: dict[str, str] | None = None, ts: str = "2026-11-21T13:13:09.158Z",
          action: str = "deny", uid: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "@timestamp": ts,
        "event": {"kind": "event", "action": action, "reason": "no_rule_match"},
        "nfguard": {"mode": "audit", "verdict": "allow", "evidence": "default"},
        "source": {"ip": "10.9.9.9", "port": 40000},
        "destination": {"ip": ip, "port": port},
        "network": {"transport": proto, "type": "ipv6" if ":" in ip else "ipv4"},
    }
    if domain is not None:
        ev["destination"]["domain"] = domain
    who = who or {}
    if "exe" in who:
        ev["process"] = {"pid": 42, "executable": who["exe"]}
    if "user" in who or uid is not None:
        ev["user"] = {k: v for k, v in (("name", who.get("user")), ("id", uid)) if v}
    if "unit" in who:
        ev["nfguard"]["unit"] = who["unit"]
    if "interface" in who:
        ev["observer"] = {"ingress": {"interface": {"name": who["interface"]}}}
    return ev


def lines(*events: dict[str, Any]) -> list[str]:
    return [json.dumps(e) for e in events]


def flows_of(*events: dict[str, Any]):
    result = read_flows([("audit.jsonl", lines(*events))])
    assert result.malformed == 0
    return result.flows


def load(text: str):
    return parse_policy_texts([("suggested.toml", text)])


def all_rules(text: str) -> list[dict[str, Any]]:
    return [r for p in tomllib.loads(text)["policy"] for r in p.get("rule", [])]


MIXED = [
    event("93.184.216.34", 443, domain="a.example.com", who=CURL),
    event("93.184.216.35", 443, domain="b.example.com", who=CURL,
          ts="2026-11-21T13:20:00.000Z"),
    event("93.184.216.36", 443, domain="c.example.com", who=CURL, action="allow"),
    event("93.184.216.37", 80, domain="example.com", who=CURL),
    event("151.101.0.223", 443, domain="pypi.org", who=CURL),
    event("192.0.2.10", 8443, who=CURL),
    event("2001:db8::7", 8443, who=CURL),
    event("10.0.0.53", 53, proto="udp", who=CURL),
    event("151.101.64.223", 80, domain="deb.debian.org", who=APT),
    event("151.101.64.224", 443, domain="security.debian.org", who=APT),
    event("198.51.100.1", 123, proto="udp"),
    event("198.51.100.2", 0, proto="icmp"),
    event("203.0.113.9", 443, who={"exe": "/opt/weird \"tool\"[1]*"}, uid="1001"),
]


# ---------------------------------------------------------------- names


def test_registrable_domain_uses_the_public_suffix_list() -> None:
    assert registrable_domain("a.b.example.com") == "example.com"
    assert registrable_domain("x.y.example.co.uk") == "example.co.uk"
    assert registrable_domain("co.uk") is None
    assert registrable_domain("com") is None


def test_collapse_at_threshold_only() -> None:
    two = collapse_names(["a.example.com", "b.example.com"], 3)
    assert two == {"a.example.com": ["a.example.com"], "b.example.com": ["b.example.com"]}
    three = collapse_names(["a.example.com", "b.example.com", "c.example.com"], 3)
    assert three == {"**.example.com": ["a.example.com", "b.example.com", "c.example.com"]}
    assert collapse_names(["a.example.com", "b.example.com"], 2) == {
        "**.example.com": ["a.example.com", "b.example.com"]}
    off = collapse_names(["a.example.com", "b.example.com", "c.example.com"], 0)
    assert set(off) == {"a.example.com", "b.example.com", "c.example.com"}


def test_collapse_never_past_the_registrable_domain() -> None:
    # Three different registrable domains under .com and under .co.uk: no collapse at all.
    names = ["one.com", "two.com", "three.com", "a.one.co.uk", "b.two.co.uk", "c.three.co.uk"]
    entries = collapse_names(names, 2)
    assert sorted(entries) == sorted(names)
    assert not any(e in ("**.com", "**.co.uk", "**.uk") for e in entries)
    # Siblings under a multi-part public suffix collapse to the registrable domain, no higher.
    entries = collapse_names(["a.shop.co.uk", "b.shop.co.uk", "c.shop.co.uk", "d.other.co.uk"])
    assert entries == {"**.shop.co.uk": ["a.shop.co.uk", "b.shop.co.uk", "c.shop.co.uk"],
                       "d.other.co.uk": ["d.other.co.uk"]}


def test_collapse_to_deepest_common_parent_and_keeps_the_apex() -> None:
    entries = collapse_names(["x.cdn.example.com", "y.cdn.example.com", "z.cdn.example.com",
                              "example.com"])
    assert entries == {
        "**.cdn.example.com": ["x.cdn.example.com", "y.cdn.example.com", "z.cdn.example.com"],
        "example.com": ["example.com"],
    }
    # cdn.example.com itself is one of them: "**.cdn.example.com" would miss it.
    entries = collapse_names(["cdn.example.com", "a.cdn.example.com", "b.cdn.example.com"])
    assert entries == {"**.example.com": ["a.cdn.example.com", "b.cdn.example.com",
                                          "cdn.example.com"]}


# ---------------------------------------------------------------- suggest


def test_output_loads_and_allows_every_observed_flow() -> None:
    # The exe-only curl client must come after curl-alice, or it would take alice's flows.
    flows = flows_of(*MIXED, event("192.0.2.50", 22, who={"exe": "/usr/bin/curl"}),
                     event("192.0.2.51", 22, who={"user": "alice"}))
    text = suggest(flows)
    policies = load(text)
    engine = policy_engine(policies)
    for flow in flows:
        decision = decide(engine, flow)
        assert decision.action == "allow", (flow, decision)
        assert decision.client is not None


def test_nothing_else_is_allowed() -> None:
    text = suggest(flows_of(*MIXED))
    engine = policy_engine(load(text))
    others = flows_of(
        event("93.184.216.34", 80, domain="a.example.com", who=CURL),  # port not seen
        event("93.184.216.34", 443, proto="udp", domain="a.example.com", who=CURL),
        event("192.0.2.11", 8443, who=CURL),  # address not seen
        event("151.101.0.223", 443, domain="evil.org", who=CURL),
        event("151.101.64.223", 443, domain="pypi.org", who=APT),  # another client's name
        event("93.184.216.37", 443, domain="example.com", who=CURL),
    )
    for flow in others:
        assert decide(engine, flow).action == "deny", flow


def test_clients_per_identity_most_specific_first_catch_all_last() -> None:
    text = suggest(flows_of(*MIXED, event("192.0.2.50", 22, who={"exe": "/usr/bin/curl"})))
    doc = tomllib.loads(text)
    clients = doc["client"]
    assert [c["name"] for c in clients] == [
        "http-apt-apt-daily.service", "weird_tool_1-1001", "curl-alice", "curl",
        "unattributed"]
    assert clients[0]["match"] == {"exe": "/usr/lib/apt/methods/http", "user": "_apt",
                                   "unit": "apt-daily.service"}
    assert clients[1]["match"] == {"exe": fnmatch_escape('/opt/weird "tool"[1]*'),
                                   "user": "1001"}
    assert clients[2]["match"] == {"exe": "/usr/bin/curl", "user": "alice"}
    assert clients[3]["match"] == {"exe": "/usr/bin/curl"}
    assert "match" not in clients[-1]
    assert all(c["policies"] == [c["name"]] for c in clients)
    assert sorted(p["name"] for p in doc["policy"]) == sorted(c["name"] for c in clients)


def test_same_basename_gets_unique_names() -> None:
    text = suggest(flows_of(event("192.0.2.1", 443, who={"exe": "/usr/bin/python3"}),
                            event("192.0.2.1", 443, who={"exe": "/opt/bin/python3"})))
    names = [c["name"] for c in tomllib.loads(text)["client"]]
    assert names == ["python3", "python3-2"]
    load(text)


def test_names_and_addresses_grouped_by_proto_and_ports() -> None:
    text = suggest(flows_of(
        event("192.0.2.1", 443, domain="a.example.org", who=CURL),
        event("192.0.2.1", 80, domain="a.example.org", who=CURL),
        event("192.0.2.2", 443, domain="b.example.net", who=CURL),
        event("192.0.2.2", 80, domain="b.example.net", who=CURL),
        event("192.0.2.3", 443, domain="c.example.info", who=CURL),
        event("192.0.2.4", 53, proto="udp", who=CURL),
        event("192.0.2.4", 53, proto="tcp", who=CURL),
        event("2001:db8::1", 53, proto="udp", who=CURL),
        event("192.0.2.5", 8000, who=CURL),
        event("192.0.2.5", 8001, who=CURL),
        event("192.0.2.5", 8002, who=CURL),
        event("192.0.2.5", 9000, who=CURL),
    ))
    rules = {r["name"]: r for r in all_rules(text)}
    assert rules == {
        "names-tcp-80-443": {"name": "names-tcp-80-443", "action": "allow",
                             "to": ["b.example.net", "a.example.org"], "ports": [80, 443],
                             "proto": "tcp"},
        "names-tcp-443": {"name": "names-tcp-443", "action": "allow",
                          "to": ["c.example.info"], "ports": [443], "proto": "tcp"},
        "addresses-tcp-53": {"name": "addresses-tcp-53", "action": "allow",
                             "to": ["192.0.2.4/32"], "ports": [53], "proto": "tcp"},
        "addresses-tcp-8000-8001-8002-9000": {
            "name": "addresses-tcp-8000-8001-8002-9000", "action": "allow",
            "to": ["192.0.2.5/32"], "ports": ["8000-8002", 9000], "proto": "tcp"},
        "addresses-udp-53": {"name": "addresses-udp-53", "action": "allow",
                             "to": ["192.0.2.4/32", "2001:db8::1/128"], "ports": [53],
                             "proto": "udp"},
    }


def test_wildcard_rule_and_comments() -> None:
    text = suggest(flows_of(*MIXED))
    assert '"**.example.com",  # 3 flows, first seen 2026-11-21T13:13:09.158Z, last ' \
           "2026-11-21T13:20:00.000Z; 3 names: a.example.com, b.example.com, c.example.com" \
           in text
    curl = next(r for r in all_rules(text) if r["name"] == "names-tcp-443"
                and "pypi.org" in r["to"])
    assert curl["to"] == ["**.example.com", "pypi.org"]
    # The apex was seen on port 80 only: it stays literal, in its own rule.
    assert {"name": "names-tcp-80", "action": "allow", "to": ["example.com"],
            "ports": [80], "proto": "tcp"} in all_rules(text)


def test_portless_transport_gives_rule_without_ports_or_proto() -> None:
    text = suggest(flows_of(event("198.51.100.2", 0, proto="icmp")))
    assert all_rules(text) == [{"name": "addresses-any", "action": "allow",
                                "to": ["198.51.100.2/32"]}]
    load(text)


def test_deterministic_whatever_the_order() -> None:
    reference = suggest(flows_of(*MIXED))
    rng = random.Random(7)
    for _ in range(5):
        shuffled = list(MIXED)
        rng.shuffle(shuffled)
        assert suggest(flows_of(*shuffled)) == reference


def test_toml_escaping_of_hostile_strings() -> None:
    hostile = 'a"b\\c\nd\te\x00f\x7fg\u00e9\ud800'
    assert tomllib.loads(f"x = {toml_string(hostile)}")["x"] == hostile.replace("\ud800",
                                                                                "\ufffd")
    who = {"exe": '/tmp/x"\n[[client]]\nname = "pwn', "user": 'eve"', "unit": "a\\b.service"}
    text = suggest(flows_of(event("192.0.2.1", 443, who=who)))
    doc = tomllib.loads(text)
    assert len(doc["client"]) == 1
    assert doc["client"][0]["match"]["user"] == 'eve"'
    policies = load(text)
    assert decide(policy_engine(policies),
                  flows_of(event("192.0.2.1", 443, who=who))[0]).action == "allow"


# ---------------------------------------------------------------- reading


def test_malformed_lines_are_counted_not_fatal() -> None:
    good = lines(*MIXED[:3])
    bad = ["not json", "[1, 2]", '{"destination": {"ip": "nope", "port": 1}, '
           '"network": {"transport": "tcp"}}', json.dumps(event("192.0.2.1", 70000)),
           '{"x": 1}', ""]
    flowless = json.dumps({"@timestamp": "t", "event": {"action": "deny",
                                                        "reason": "unparseable_packet"},
                           "nfguard": {"mode": "enforce"}})
    result = read_flows([("a", [*good[:1], *bad, flowless, *good[1:]])])
    assert len(result.flows) == 3
    assert result.malformed == 5
    assert result.without_flow == 1
    assert result.examples[0].startswith("a:2: ")


def test_odd_domains_fall_back_to_the_address() -> None:
    flows = flows_of(event("192.0.2.1", 443, domain="bad name!"),
                     event("192.0.2.2", 443, domain="*.example.com"),
                     event("192.0.2.3", 443, domain="Example.COM."))
    assert [f.destination for f in flows] == ["192.0.2.1", "192.0.2.2", "example.com"]


# ---------------------------------------------------------------- --policy


POLICY = """\
[[client]]
name = "curl"
match = { exe = "/usr/bin/curl" }
policies = ["web"]

[[client]]
name = "everyone"
policies = ["dns"]

[[policy]]
name = "web"

[[policy.rule]]
name = "example"
action = "allow"
to = ["**.example.com"]
ports = [443]
proto = "tcp"

[[policy.rule]]
name = "no-8443"
action = "deny"
to = ["192.0.2.0/24"]

[[policy]]
name = "dns"

[[policy.rule]]
action = "allow"
ports = [53, 123]
proto = "udp"
"""


def test_denied_lists_exactly_what_the_policy_denies() -> None:
    flows = flows_of(*MIXED, *MIXED[:2])
    policies = parse_policy_texts([("p.toml", POLICY)])
    found = denied(flows, policies)
    got = {(d.identity.exe, d.destination, d.port, d.proto, d.seen.count, d.rules)
           for d in found}
    assert got == {
        ("/usr/bin/curl", "example.com", 80, "tcp", 1, ("reason=no_rule_match",)),
        ("/usr/bin/curl", "pypi.org", 443, "tcp", 1, ("reason=no_rule_match",)),
        ("/usr/bin/curl", "192.0.2.10", 8443, "tcp", 1, ("rule=web/no-8443",)),
        ("/usr/bin/curl", "2001:db8::7", 8443, "tcp", 1, ("reason=no_rule_match",)),
        ("/usr/bin/curl", "10.0.0.53", 53, "udp", 1, ("reason=no_rule_match",)),
        (None, "198.51.100.2", 0, "icmp", 1, ("reason=no_rule_match",)),
        # apt's method is no curl: it falls to "everyone", which allows only DNS and NTP.
        (APT["exe"], "deb.debian.org", 80, "tcp", 1, ("reason=no_rule_match",)),
        (APT["exe"], "security.debian.org", 443, "tcp", 1, ("reason=no_rule_match",)),
        ("/opt/weird \"tool\"[1]*", "203.0.113.9", 443, "tcp", 1, ("reason=no_rule_match",)),
    }
    # Cross-check against the engine flow by flow.
    engine = policy_engine(policies)
    denied_flows = [f for f in flows if decide(engine, f).action == "deny"]
    assert sum(d.seen.count for d in found) == len(denied_flows)
    # With default allow, only the explicit deny rule remains.
    assert [(d.destination, d.rules) for d in denied(flows, policies, "allow")] == [
        ("192.0.2.10", ("rule=web/no-8443",))]


def test_suggested_policy_denies_nothing_observed() -> None:
    flows = flows_of(*MIXED)
    assert denied(flows, load(suggest(flows))) == []


def test_dns_to_the_hosts_resolvers_is_suggested_as_resolvers_not_their_address() -> None:
    flows = flows_of(*MIXED, event("10.0.0.53", 53, proto="tcp", who=CURL),
                     event("192.0.2.53", 53, proto="udp", who=CURL))
    host = lambda ip: ip == "10.0.0.53"  # noqa: E731
    text = suggest(flows, resolvers=host)
    dns = [r for r in all_rules(text) if r.get("ports") == [53]]
    assert [(r["proto"], r["to"]) for r in dns] == [
        ("tcp", ["@resolvers"]), ("udp", ["@resolvers", "192.0.2.53/32"])], (
        "a server not among them keeps its address")
    assert "10.0.0.53" not in text
    policies = load(text)
    assert denied(flows, policies, resolvers=host) == []
    moved = flows_of(event("10.0.0.54", 53, proto="udp", who=CURL))  # DHCP gave another one
    assert denied(moved, policies, resolvers=lambda ip: ip == "10.0.0.54") == []
    assert [d.rules for d in denied(moved, policies, resolvers=host)] == [
        ("reason=no_rule_match",)]


# ---------------------------------------------------------------- CLI


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_suggest_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("\n".join([*lines(*MIXED[:6]), "garbage"]) + "\n")
    more = tmp_path / "more.jsonl"
    more.write_text("\n".join(lines(*MIXED[6:])) + "\n")
    code, out, err = run(capsys, "suggest", str(audit), str(more))
    assert code == 0
    assert "skipped 1 lines that are not audit events" in err
    assert f"{audit}:7:" in err
    assert out == suggest(flows_of(*MIXED))

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "50-suggested.toml").write_text(out)
    config = tmp_path / "nfguard.toml"
    config.write_text('[engine]\npolicy_dir = "rules"\n[metrics]\nlisten = ""\n')
    code, out, err = run(capsys, "check", "--config", str(config))
    assert code == 0, err

    code, out, err = run(capsys, "suggest", str(audit), str(more), "--policy", str(rules))
    assert code == 0
    assert out.splitlines() == [f"# 0 distinct flows denied by the policy in {rules} "
                                "(0 of 13 observed flows; engine.default = deny)"]


def test_cli_policy_mode_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("\n".join(lines(*MIXED[:6], MIXED[5])) + "\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "p.toml").write_text(POLICY)
    code, out, _err = run(capsys, "suggest", str(audit), "--policy", str(rules))
    assert code == 1, "flows would be denied: a CI gate fails"
    assert out.splitlines() == [
        f"# 3 distinct flows denied by the policy in {rules} (4 of 7 observed flows; "
        "engine.default = deny)",
        "deny tcp 192.0.2.10:8443  2 flows  from exe=/usr/bin/curl user=alice  client=curl "
        "rule=web/no-8443",
        "deny tcp example.com:80  1 flow  from exe=/usr/bin/curl user=alice  client=curl "
        "reason=no_rule_match",
        "deny tcp pypi.org:443  1 flow  from exe=/usr/bin/curl user=alice  client=curl "
        "reason=no_rule_match",
    ]


def test_cli_missing_file_and_bad_policy(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "suggest", str(tmp_path / "none.jsonl"))
    assert code == 2, "trouble, not a deny"
    assert "cannot read" in err
    audit = tmp_path / "a.jsonl"
    audit.write_text("\n".join(lines(*MIXED)) + "\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.toml").write_text('[[policy]]\nname = "x"\n[[policy.rule]]\naction = "maybe"\n')
    code, out, err = run(capsys, "suggest", str(audit), "--policy", str(rules))
    assert code == 2
    assert out == ""
    assert f"{rules / 'bad.toml'}:4: action must be one of allow | deny" in err


def test_forwarded_flows_get_a_client_by_their_interface() -> None:
    """A container's flows carry no process, only the bridge they came in on."""
    docker = {"interface": "docker0"}
    flows = flows_of(event("151.101.0.223", 443, domain="pypi.org", who=docker),
                     event("151.101.0.223", 443, domain="pypi.org", who=CURL))
    text = suggest(flows)
    clients = tomllib.loads(text)["client"]
    assert [(c["name"], c.get("match")) for c in clients] == [
        ("curl-alice", CURL), ("docker0", {"interface": "docker0"})]
    engine = policy_engine(load(text))
    assert all(decide(engine, flow).action == "allow" for flow in flows)
    [other] = flows_of(event("151.101.0.223", 443, domain="pypi.org",
                             who={"interface": "br-0"}))
    assert decide(engine, other).action == "deny"


def test_a_containers_flows_get_a_client_by_image_not_by_one_runs_scope() -> None:
    """The unit of a container's process is a scope named after one run's id: the image
    is what the next run of the same build has too."""
    run_id = "4f1d2c7b9e0a" + "5" * 52
    docker = event("151.101.0.223", 443, domain="pypi.org",
                   who={"exe": "/usr/local/bin/python3.12", "user": "root",
                        "unit": f"docker-{run_id}.scope", "interface": "docker0"})
    docker["container"] = {"id": run_id, "runtime": "docker", "name": "ci-build-17",
                           "image": {"name": "python:3.12-slim"}}
    flows = flows_of(docker)
    text = suggest(flows)
    [client] = tomllib.loads(text)["client"]
    assert client["match"] == {"exe": "/usr/local/bin/python3.12", "user": "root",
                               "interface": "docker0", "image": "python:3.12-slim"}
    assert client["name"] == "python3.12-root-docker0-python_3.12-slim"
    engine = policy_engine(load(text))
    assert decide(engine, flows[0]).action == "allow"
    next_run = json.loads(json.dumps(docker))
    next_run["container"]["image"]["name"] = "node:22"
    assert decide(engine, flows_of(next_run)[0]).action == "deny"


def test_a_policy_that_pins_an_image_by_id_is_judged_with_the_events_image_id() -> None:
    """`suggest --policy` replays events against the policy: a client of an image id
    matches the flows whose event carries that id, and only those."""
    run_id = "4f1d2c7b9e0a" + "5" * 52
    digest = "sha256:" + "e" * 64
    docker = event("151.101.0.223", 443, domain="pypi.org", who={"interface": "docker0"})
    docker["container"] = {"id": run_id, "runtime": "docker",
                           "image": {"name": "builder:latest", "hash": {"all": [digest]}}}
    policies = load(f"""
[[client]]
name = "pinned"
match = {{ image = "{digest}" }}
policies = ["pypi"]

[[policy]]
name = "pypi"

[[policy.rule]]
action = "allow"
to = ["pypi.org"]
""")
    assert denied(flows_of(docker), policies) == []
    moved = json.loads(json.dumps(docker))
    moved["container"]["image"]["hash"]["all"] = ["sha256:" + "f" * 64]
    assert len(denied(flows_of(moved), policies)) == 1, "the tag moved to another image"
    del moved["container"]["image"]["hash"]
    assert len(denied(flows_of(moved), policies)) == 1


# ---------------------------------------------------------------- DNS queries

STUB = "127.0.0.53"


def query(name: str, qtype: str = "A", who: dict[str, str] | None = None,
          ts: str = "2026-12-07T10:00:00.000Z", action: str = "deny",
          resolver: str = STUB) -> dict[str, Any]:
    """A query's audit event, as the engine writes it (refused ones from audit mode)."""
    ev = event(resolver, 53, "udp", who=who, ts=ts, action=action)
    ev["event"]["reason"] = "rule_match" if action == "allow" else "name_not_allowed"
    ev["dns"] = {"type": "query", "question": {"name": name, "type": qtype}}
    return ev


def queries_of(*events: dict[str, Any]):
    result = read_flows([("audit.jsonl", lines(*events))])
    assert result.malformed == result.without_flow == 0
    return result.flows, result.queries


def resolve_entries(text: str) -> list[list[str]]:
    return [r["resolve"] for r in all_rules(text) if "resolve" in r]


def judged(policies, items, default: str = "deny") -> list[tuple[str, str]]:
    """(name, action) of each query under `policies`, as the engine would judge it."""
    engine = policy_engine(policies, default)
    judge = QueryJudge(engine.policies, "policy", default)
    return [(q.name, judge_query(engine, judge, q).action) for q in items]


APT_LOG = [
    query("_http._tcp.deb.debian.org", "SRV", who=APT),
    query("deb.debian.org", who=APT),
    query("deb.debian.org", "AAAA", who=APT),
    event("151.101.2.132", 80, domain="deb.debian.org", who=APT),
    query("Example.ORG.", "TXT", who=CURL),
    query("example.org", "MX", who=CURL, ts="2026-12-07T10:05:00.000Z"),
]


def test_query_events_are_read_as_queries_not_flows() -> None:
    flows, queries = queries_of(*APT_LOG)
    assert [f.domain for f in flows] == ["deb.debian.org"]
    assert [(q.name, q.qtype, q.carrier.ip, q.carrier.port, q.carrier.proto)
            for q in queries][3:] == [("example.org", "TXT", STUB, 53, "udp"),
                                      ("example.org", "MX", STUB, 53, "udp")]
    assert queries[0].identity.exe == APT["exe"]
    bad = read_flows([("a", lines({**query("x.example"), "dns": {"type": "query"}}))])
    assert bad.malformed == 1 and not bad.queries


def test_a_name_resolved_but_never_connected_to_becomes_resolvable_only() -> None:
    flows, queries = queries_of(*APT_LOG)
    text = suggest(flows, queries=queries, resolvers=lambda ip: ip == STUB)
    # apt connected to deb.debian.org: its `to` covers resolving it; the SRV name it only
    # looked up, and curl's example.org (TXT and MX, one entry), are resolvable-only.
    assert resolve_entries(text) == [["_http._tcp.deb.debian.org"], ["example.org"]]
    assert '"example.org",  # MX/TXT: 2 queries' in text
    policies = load(text)
    assert all(action == "allow" for _name, action in judged(policies, queries))
    # and the datagrams carrying them reach the resolver
    assert denied(flows, policies, resolvers=lambda ip: ip == STUB, queries=queries) == []
    assert refused(queries, policies) == []


def test_a_name_under_a_collapsed_wildcard_or_a_cidr_rule_needs_nothing_more() -> None:
    reached = [event(f"93.184.216.{i}", 443, domain=f"{n}.example.com", who=CURL)
               for i, n in enumerate("abc")]
    asked = [query("_srv._tcp.example.com", "SRV", who=CURL),  # under **.example.com
             query("9.2.0.192.in-addr.arpa", "PTR", who=CURL),  # 192.0.2.9/32 reached
             query("0.216.184.93.in-addr.arpa", "PTR", who=CURL),  # reached by name only
             event("192.0.2.9", 22, who=CURL)]
    flows, queries = queries_of(*reached, *asked)
    text = suggest(flows, queries=queries)
    assert "**.example.com" in text
    assert resolve_entries(text) == [["0.216.184.93.in-addr.arpa"]]
    assert all(action == "allow" for _name, action in judged(load(text), queries))


def test_resolvable_only_names_are_never_collapsed_into_a_wildcard() -> None:
    tunnel = [query(f"{label}.t.attacker.example", "TXT", who=CURL)
              for label in ("mzxw6ytb", "orsxg5a", "nbswy3dp", "gezdgnbv")]
    flows, queries = queries_of(*tunnel)
    text = suggest(flows, queries=queries, min_siblings=2)
    assert "**" not in text
    assert resolve_entries(text) == [sorted(q.name for q in queries)]
    assert judged(load(text), queries_of(query("other.t.attacker.example", who=CURL))[1]) == [
        ("other.t.attacker.example", "deny")]


def test_names_no_rule_can_name_are_counted_not_written() -> None:
    flows, queries = queries_of(query("", "NS", who=CURL), query("a b.example", who=CURL),
                                query("ok.example", who=CURL))
    text = suggest(flows, queries=queries)
    assert resolve_entries(text) == [["ok.example"]]
    assert "# 2 queries of names no rule can name" in text
    load(text)


def test_refused_lists_what_the_policy_refuses_and_honours_a_clients_queries() -> None:
    _flows, queries = queries_of(
        query("api.example.com", who=CURL),  # curl's `**.example.com`: allowed
        query("paste.example.net", who=CURL),
        query("paste.example.net", "AAAA", who=CURL),
        query("anything.example", who={"exe": "/usr/bin/dig"}))
    found = refused(queries, load(POLICY))
    assert [(r.identity.exe, r.name, r.qtypes, r.clients, r.rules, r.seen.count)
            for r in found] == [
        ("/usr/bin/curl", "paste.example.net", ("A", "AAAA"), ("curl",),
         ("reason=name_not_allowed",), 2)]  # everyone's rule without `to` covers any name
    relaxed = load(POLICY.replace('name = "curl"\n', 'name = "curl"\nqueries = "any"\n'))
    assert refused(queries, relaxed) == []
    assert refused(queries, load(POLICY), judged="any") == []


def test_cli_suggest_with_queries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("\n".join(lines(*APT_LOG)) + "\n")
    code, out, err = run(capsys, "suggest", str(audit))
    assert code == 0 and "no flows found" not in err
    assert "resolve = [" in out
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "50-suggested.toml").write_text(out)
    code, out, _err = run(capsys, "suggest", str(audit), "--policy", str(rules))
    assert code == 0
    assert out.splitlines()[-1] == (
        "# 0 distinct names refused to their clients (0 of 5 observed queries): each needs a "
        "rule whose `to` or `resolve` names it")
    (rules / "50-suggested.toml").write_text(POLICY)
    code, out, _err = run(capsys, "suggest", str(audit), "--policy", str(rules))
    assert code == 1, "a refused query fails the gate too"
    # apt's names fall to everyone's rule without `to`: only curl's example.org is refused
    assert out.splitlines()[-2:] == [
        "# 1 distinct names refused to their clients (2 of 5 observed queries): each needs a "
        "rule whose `to` or `resolve` names it",
        "refuse MX/TXT example.org  2 queries, first seen 2026-12-07T10:00:00.000Z, last "
        "2026-12-07T10:05:00.000Z  from exe=/usr/bin/curl user=alice  client=curl "
        "reason=name_not_allowed"]


def test_a_local_resolvers_queries_give_its_client_queries_any_not_a_list() -> None:
    resolved = {"exe": "/usr/lib/systemd/systemd-resolved", "user": "systemd-resolve"}
    flows, queries = queries_of(
        query("deb.debian.org", who=resolved, resolver="10.0.0.53"),
        query("x.example", who=resolved, resolver="10.0.0.53"),
        query("x.example", who=CURL))
    text = suggest(flows, queries=queries, resolvers=lambda ip: ip in (STUB, "10.0.0.53"))
    policies = load(text)
    stub = next(c for c in policies.clients if c.name == "systemd-resolved-systemd-resolve")
    assert stub.queries == "any"
    assert 'queries = "any"  # a local resolver (2 queries)' in text
    assert resolve_entries(text) == [["x.example"]]  # curl's, judged as its own
    assert denied(flows, policies, resolvers=lambda ip: ip in (STUB, "10.0.0.53"),
                  queries=queries) == []
    assert refused(queries, policies) == []


def test_routed_hosts_get_a_client_by_their_source_address() -> None:
    """Behind a gateway, two LAN hosts on one interface send flows no process is found
    for: each gets a client of its own, by its original source address, and each is
    allowed only what it was seen doing. A container bridge's flows stay keyed by the
    bridge alone (their addresses are handed out per run)."""
    def routed(source: str, ip: str, interface: str = "lan1",
               domain: str | None = None) -> dict[str, Any]:
        ev = event(ip, 443, domain=domain or f"{source}.example", who={"interface": interface})
        ev["source"]["ip"] = source
        return ev

    flows = flows_of(routed("198.18.8.2", "192.0.2.1"), routed("198.18.9.2", "192.0.2.2"),
                     routed("fd00:18:8::2", "2001:db8::1"),
                     routed("172.17.0.2", "192.0.2.3", "docker0"))
    text = suggest(flows)
    assert [(c["name"], c.get("match")) for c in tomllib.loads(text)["client"]] == [
        ("lan1-198.18.8.2", {"interface": "lan1", "source": "198.18.8.2"}),
        ("lan1-198.18.9.2", {"interface": "lan1", "source": "198.18.9.2"}),
        ("lan1-fd00_18_8_2", {"interface": "lan1", "source": "fd00:18:8::2"}),
        ("docker0", {"interface": "docker0"})]
    engine = policy_engine(load(text))
    assert all(decide(engine, flow).action == "allow" for flow in flows)
    [borrowed] = flows_of(routed("198.18.9.2", "192.0.2.1",  # A's destination, from B
                                 domain="198.18.8.2.example"))
    assert decide(engine, borrowed).action == "deny"
    assert denied(flows, load(text)) == []


def test_names_that_led_inside_opt_in_each_written_out() -> None:
    """A suggested policy must not trip the DNS rebinding guard unseen: a name whose flows
    went to an internal address gets `private = true`, in a rule of its own, literally."""
    flows = flows_of(
        event("169.254.169.254", 80, domain="metadata.google.internal", who=CURL),
        event("10.0.0.5", 5432, domain="db1.corp.example", who=CURL),
        event("10.0.0.6", 5432, domain="db2.corp.example", who=CURL),
        event("10.0.0.7", 5432, domain="db3.corp.example", who=CURL),
        event("93.184.216.34", 443, domain="a.example.com", who=CURL),
        event("93.184.216.35", 443, domain="b.example.com", who=CURL),
        event("93.184.216.36", 443, domain="c.example.com", who=CURL),
    )
    text = suggest(flows)
    rules = {r["name"]: r for r in all_rules(text)}
    assert rules["inside-tcp-5432"]["to"] == [
        "db1.corp.example", "db2.corp.example", "db3.corp.example"], "never a wildcard"
    assert rules["inside-tcp-5432"]["private"] is True
    assert rules["inside-tcp-80"]["to"] == ["metadata.google.internal"]
    assert rules["names-tcp-443"]["to"] == ["**.example.com"]
    assert "private" not in rules["names-tcp-443"]
    assert "# these names led to internal addresses: 169.254.169.254 (metadata)" in text
    policies = load(text)
    for private in ("allow", "deny"):
        engine = Engine(EngineConfig(), CompiledPolicySet(policies), private=private)
        for flow in flows:
            assert decide(engine, flow).action == "allow", (private, flow)
    # what the guard keeps out still is: a public name's rule does not reach inside
    engine = Engine(EngineConfig(), CompiledPolicySet(policies), private="deny")
    inside = flows_of(event("10.0.0.9", 443, domain="a.example.com", who=CURL))
    assert decide(engine, inside[0]).reason == "name_private_address"


def test_this_hosts_networks_count_as_inside() -> None:
    flows = flows_of(event("192.0.2.10", 443, domain="printer.example", who=CURL))
    text = suggest(flows, internal=lambda ip: Internal.CONNECTED if ip.startswith("192.0.2.")
                   else PUBLIC)
    assert "192.0.2.10 (connected)" in text and "private = true" in text


def test_denied_names_the_guard_and_the_rule_that_needs_the_opt_in() -> None:
    policies = load('[[client]]\nname = "all"\npolicies = ["p"]\n[[policy]]\nname = "p"\n'
                    '[[policy.rule]]\nname = "api"\naction = "allow"\n'
                    'to = ["api.example.com"]\nports = [443]\n')
    flows = flows_of(event("10.0.0.5", 443, domain="api.example.com", who=CURL),
                     event("169.254.169.254", 443, domain="api.example.com", who=CURL))
    assert [d.rules for d in denied(flows, policies)] == [
        ("reason=name_private_address (metadata address; rule=p/api has no private = true)",)]
    assert [d.rules for d in denied(flows, policies, private="deny")] == [(
        "reason=name_private_address (metadata address; rule=p/api has no private = true)",
        "reason=name_private_address (private address; rule=p/api has no private = true)")]
