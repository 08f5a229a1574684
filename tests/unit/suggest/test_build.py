"""The suggested policy: it loads, allows every flow and query observed, and nothing else."""

from __future__ import annotations

import json
import random
import tomllib
from typing import Any

from nfguard.config import EngineConfig
from nfguard.engine import Engine
from nfguard.policy.internal import PUBLIC, Internal
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.resolve import QueryJudge
from nfguard.suggest.build import suggest
from nfguard.suggest.check import decide, denied, judge_query, policy_engine, refused
from nfguard.suggest.text import fnmatch_escape
from tests.unit.suggest.samples import (
    APT,
    APT_LOG,
    CURL,
    MIXED,
    STUB,
    event,
    flows_of,
    load,
    queries_of,
    query,
)


def all_rules(text: str) -> list[dict[str, Any]]:
    return [r for p in tomllib.loads(text)["policy"] for r in p.get("rule", [])]


def resolve_entries(text: str) -> list[list[str]]:
    return [r["resolve"] for r in all_rules(text) if "resolve" in r]


def judged(policies, items, default: str = "deny") -> list[tuple[str, str]]:
    """(name, action) of each query under `policies`, as the engine would judge it."""
    engine = policy_engine(policies, default)
    judge = QueryJudge(engine.policies, "policy", default)
    return [(q.name, judge_query(engine, judge, q).action) for q in items]


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


def test_hostile_identities_stay_inside_their_strings() -> None:
    who = {"exe": '/tmp/x"\n[[client]]\nname = "pwn', "user": 'eve"', "unit": "a\\b.service"}
    text = suggest(flows_of(event("192.0.2.1", 443, who=who)))
    doc = tomllib.loads(text)
    assert len(doc["client"]) == 1
    assert doc["client"][0]["match"]["user"] == 'eve"'
    policies = load(text)
    assert decide(policy_engine(policies),
                  flows_of(event("192.0.2.1", 443, who=who))[0]).action == "allow"


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
