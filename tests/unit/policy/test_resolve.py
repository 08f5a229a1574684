"""Which names a client may resolve: first match, deny before allow, rules without `to`,
resolvable-only names, reverse lookups, queries = "any", and the cost at scale."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet, Destination
from nfguard.policy.model import ALLOW, DENY, Client
from nfguard.policy.patterns import NamePattern
from nfguard.policy.resolve import (
    QueryDecision,
    QueryEvidence,
    QueryJudge,
    QueryReason,
    reverse_address,
)
from tests.bench.policies import body_name, body_rules, client
from tests.unit.policies import QUERIES

REPO = Path(__file__).resolve().parents[3]
COMPILED = CompiledPolicySet(parse_policy_texts([("q.toml", QUERIES)]))
CLIENTS = {c.name: c for c in COMPILED.clients}


def judge(who: str | None, name: str, queries: str = "policy",
          default: str = DENY) -> QueryDecision:
    return QueryJudge(COMPILED, queries, default).decide(
        None if who is None else CLIENTS[who], name)


def verdict(who: str | None, name: str, **kw: str) -> tuple[str, str | None, str]:
    d = judge(who, name, **kw)
    return d.action, d.rule, d.evidence


def ptr(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def test_the_first_covering_rule_decides_and_a_deny_before_an_allow_refuses() -> None:
    assert verdict("app", "api.example.com") == (ALLOW, "app/api", QueryEvidence.NAME)
    # *.attacker.example is allowed by app/api, but app/no-tunnel stands before it; the
    # tunnel's many labels are refused the same.
    assert verdict("app", "x.attacker.example") == (DENY, "app/no-tunnel",
                                                    QueryEvidence.NAME)
    assert verdict("app", "mzxw6ytb.ojsxg5dt.attacker.example")[:2] == (DENY, "app/no-tunnel")
    d = judge("app", "api.example.com")
    assert (d.reason, d.client, d.name) == (QueryReason.RULE_MATCH, "app", "api.example.com")


def test_ports_and_proto_do_not_matter() -> None:
    # app/api is tcp/443 only, app/no-tunnel 443 only: both still cover their names.
    assert judge("app", "api.example.com").action == ALLOW
    assert judge("app", "a.attacker.example").action == DENY


@pytest.mark.parametrize("spelling", ["API.Example.COM", "api.example.com.", " Api.example.com. "])
def test_case_and_trailing_dot_do_not_matter(spelling: str) -> None:
    d = judge("app", spelling)
    assert (d.action, d.rule, d.name) == (ALLOW, "app/api", "api.example.com")


def test_a_name_no_rule_covers_is_refused_as_not_allowed() -> None:
    d = judge("app", "elsewhere.example")
    assert (d.action, d.reason, d.rule, d.evidence) == (
        DENY, QueryReason.NAME_NOT_ALLOWED, None, QueryEvidence.DEFAULT)
    # engine.default = "allow" lets what no rule covers through, as it does for flows.
    d = judge("app", "elsewhere.example", default=ALLOW)
    assert (d.action, d.reason) == (ALLOW, QueryReason.NO_RULE_MATCH)


def test_a_name_only_a_cidr_rule_covers_is_not_resolvable() -> None:
    assert judge("app", "db.internal.example").reason == QueryReason.NAME_NOT_ALLOWED


def test_a_rule_without_to_covers_every_name() -> None:
    assert verdict("ops", "anything.example") == (ALLOW, "https-anywhere/web",
                                                   QueryEvidence.ANY)
    assert verdict("strict", "elsewhere.example") == (DENY, "deny-all/rest",
                                                       QueryEvidence.ANY)
    # Earlier policies still come first.
    assert verdict("strict", "api.example.com")[:2] == (ALLOW, "app/api")


def test_resolvable_only_names_resolve_and_a_deny_resolve_refuses() -> None:
    assert verdict("app", "_ldap._tcp.example.org") == (ALLOW, "app/discovery",
                                                         QueryEvidence.RESOLVE)
    assert verdict("app", "_http._tcp.web.svc.example")[:2] == (ALLOW, "app/discovery")
    assert verdict("app", "secret.svc.example") == (DENY, "app/no-secret",
                                                     QueryEvidence.RESOLVE)
    # `resolve` names exactly what it says: _ldap._udp is another name.
    assert judge("app", "_ldap._udp.example.org").action == DENY


def test_resolve_never_allows_a_connection() -> None:
    rules = {r.name: r for r in COMPILED.source.policies["app"].rules}
    assert not rules["app/discovery"].any_destination
    address = int(ipaddress.ip_address("203.0.113.5"))
    for name in ("_ldap._tcp.example.org", "a.svc.example"):
        for proto, port in (("tcp", 443), ("udp", 53), ("tcp", 389)):
            dest = Destination(4, address, proto, port, ((name, "sni"),))
            assert COMPILED.first_match(["app"], dest) is None, (name, proto, port)


def test_reverse_names_of_addresses_the_rules_name() -> None:
    assert verdict("app", ptr("192.0.2.77")) == (ALLOW, "app/db", QueryEvidence.CIDR)
    assert verdict("app", ptr("10.20.3.4"))[:2] == (ALLOW, "app/api")
    assert verdict("app", ptr("2001:db8:20::1"))[:2] == (ALLOW, "app/api")
    assert verdict("app", ptr("2001:db8:21::1"))[0] == DENY
    # A network a deny rule names is refused by that rule; one no rule names is not allowed.
    assert verdict("app", ptr("198.51.100.7")) == (DENY, "app/blocked-net", QueryEvidence.CIDR)
    assert judge("app", ptr("1.1.1.1")).reason == QueryReason.NAME_NOT_ALLOWED
    # Not one whole address: a name like any other.
    for name in ("2.0.192.in-addr.arpa", "in-addr.arpa", "077.2.0.192.in-addr.arpa",
                 "data.77.2.0.192.in-addr.arpa"):
        assert judge("app", name).reason == QueryReason.NAME_NOT_ALLOWED, name


def test_reverse_address_reads_whole_addresses_only() -> None:
    assert reverse_address(ptr("192.0.2.77")) == (4, int(ipaddress.ip_address("192.0.2.77")))
    assert reverse_address(ptr("2001:db8::1")) == (6, int(ipaddress.ip_address("2001:db8::1")))
    for name in ("256.2.0.192.in-addr.arpa", "1.2.0.192.ip6.arpa", "x.2.0.192.in-addr.arpa",
                 "example.com", ptr("2001:db8::1").replace(".1.", ".10.", 1)):
        assert reverse_address(name) is None, name


def test_the_root_name_is_covered_only_by_rules_without_to() -> None:
    assert judge("app", ".").reason == QueryReason.NAME_NOT_ALLOWED
    assert verdict("strict", "")[:2] == (DENY, "deny-all/rest")
    assert verdict("ops", ".")[0] == ALLOW


def test_queries_any_lets_every_query_out() -> None:
    for who, queries in (("app", "any"), ("legacy", "policy")):
        d = judge(who, "x.attacker.example", queries=queries)
        assert (d.action, d.reason) == (ALLOW, QueryReason.QUERIES_ANY), who
    # A client's `queries = "policy"` overrides [names] queries = "any".
    assert judge("judged", "x.attacker.example", queries="any").action == DENY


def test_no_client_gets_the_engine_default() -> None:
    assert judge(None, "api.example.com")[:2] == (DENY, QueryReason.NO_CLIENT_MATCH)
    assert judge(None, "api.example.com", default=ALLOW).action == ALLOW
    assert judge(None, "x.attacker.example", queries="any").action == ALLOW


def test_an_answer_is_remembered_and_a_new_judge_sees_a_new_policy() -> None:
    j = QueryJudge(COMPILED)
    app = CLIENTS["app"]
    assert j.decide(app, "api.example.com") == j.decide(app, "API.example.com.")
    other = CompiledPolicySet(parse_policy_texts([("q.toml", QUERIES.replace(
        'name = "no-tunnel"\naction = "deny"', 'name = "no-tunnel"\naction = "allow"'))]))
    assert QueryJudge(other).decide(app, "x.attacker.example").action == ALLOW


def test_the_base_policy_resolves_what_it_lets_the_host_reach() -> None:
    base = CompiledPolicySet(parse_policy_texts(
        [("base.toml", (REPO / "rules" / "base.toml").read_text())]))
    everyone = next(c for c in base.clients if c.name == "everyone")
    j = QueryJudge(base)
    for name in ("deb.debian.org", "security.debian.org", "pypi.org"):
        assert j.decide(everyone, name).action == ALLOW, name
    for name in ("attacker.example", "debian.org.attacker.example"):
        assert j.decide(everyone, name).action == DENY, name


def _lookups_per_query(rules: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str | None]:
    text = client("c", ["body"]) + body_rules(rules)
    compiled = CompiledPolicySet(parse_policy_texts([("big.toml", text)]))
    j = QueryJudge(compiled)
    calls = 0
    original = NamePattern.matches

    def counting(self: NamePattern, name: str) -> bool:
        nonlocal calls
        calls += 1
        return original(self, name)

    monkeypatch.setattr(NamePattern, "matches", counting)
    c: Client = compiled.clients[0]
    j.decide(c, "nowhere.corp.example")
    last_named = rules - 1 - (rules - 2) % 4  # the last rule naming one name (index % 4 == 1)
    decision = j.decide(c, body_name(last_named))
    j.decide(c, "x.app2.corp.example")
    return calls, decision.rule


def test_ten_thousand_name_rules_cost_what_ten_do(monkeypatch: pytest.MonkeyPatch) -> None:
    small, small_rule = _lookups_per_query(10, monkeypatch)
    large, large_rule = _lookups_per_query(10_000, monkeypatch)
    assert (small_rule, large_rule) == ("body/r9", "body/r9997")
    assert large <= small + 2, (small, large)


LABELS = ("a", "b", "_tcp", "svc")
PATTERN = st.lists(st.sampled_from((*LABELS, "*", "**")), min_size=1, max_size=3).map(".".join)
NAME = st.one_of(
    st.lists(st.sampled_from(LABELS), min_size=0, max_size=4).map(".".join),
    st.sampled_from(("10.0.0.1", "10.0.1.2", "192.0.2.9", "2001:db8::1")).map(ptr))
RULE = st.fixed_dictionaries({
    "action": st.sampled_from(("allow", "deny")),
    "to": st.lists(st.one_of(PATTERN, st.sampled_from(("10.0.0.0/24", "10.0.0.0/8",
                                                          "2001:db8::/32", "@resolvers"))),
                   max_size=2),
    "resolve": st.lists(PATTERN, max_size=2),
})


def _brute(policies: CompiledPolicySet, order: list[str], name: str) -> str | None:
    """The reference: every rule of every policy, in order, asked whether it covers."""
    address = reverse_address(name)
    for policy in order:
        for rule in policies.source.policies[policy].rules:
            patterns = (*rule.names, *rule.resolve) if name else ()
            if (rule.any_destination or any(p.matches(name) for p in patterns)
                    or (address is not None and any(
                        n.version == address[0] and n.contains(ipaddress.ip_address(
                            address[1] if address[0] == 4 else address[1].to_bytes(16, "big")))
                        for n in rule.networks))):
                return rule.name
    return None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(RULE, max_size=5), min_size=1, max_size=3),
       st.lists(NAME, min_size=1, max_size=8))
def test_the_index_agrees_with_asking_every_rule(policies: list[list[dict]],
                                                 names: list[str]) -> None:
    text = client("c", [f"p{i}" for i in range(len(policies))])
    for i, rules in enumerate(policies):
        text += f'[[policy]]\nname = "p{i}"\n'
        for rule in rules:
            text += f'[[policy.rule]]\naction = "{rule["action"]}"\n'
            if rule["to"]:
                text += f"to = {json.dumps(rule['to'])}\n"
            if rule["resolve"]:
                text += f"resolve = {json.dumps(rule['resolve'])}\n"
    compiled = CompiledPolicySet(parse_policy_texts([("h.toml", text)]))
    j = QueryJudge(compiled)
    c = compiled.clients[0]
    for name in names:
        assert j.decide(c, name).rule == _brute(compiled, list(c.policies), name), (text, name)
