"""`suggest --policy`: what an existing policy would deny or refuse of the events."""

from __future__ import annotations

import json

from nfguard.policy.load import parse_policy_texts
from nfguard.suggest.check import decide, denied, policy_engine, refused
from tests.unit.suggest.samples import (
    APT,
    CURL,
    MIXED,
    POLICY,
    event,
    flows_of,
    load,
    queries_of,
    query,
)


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
