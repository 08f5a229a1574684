"""`--allow` one-liners -> rules of the policy format."""

from __future__ import annotations

import pytest

from nfguard.exec.quick import AllowError, Destination, parse_allow, quick_policy
from nfguard.policy.load import parse_policy_texts


@pytest.mark.parametrize(("text", "expected"), [
    ("github.com:443", Destination("github.com", "443", None)),
    ("**.npmjs.org", Destination("**.npmjs.org", None, None)),
    ("10.0.0.0/8", Destination("10.0.0.0/8", None, None)),
    ("pkgs.example.org:443/tcp", Destination("pkgs.example.org", "443", "tcp")),
    ("10.0.0.0/8/udp", Destination("10.0.0.0/8", None, "udp")),
    ("192.0.2.1:53/UDP", Destination("192.0.2.1", "53", "udp")),
    ("2001:db8::/32", Destination("2001:db8::/32", None, None)),
    ("[2001:db8::1]:8443", Destination("2001:db8::1", "8443", None)),
    ("example.org:8000-8099", Destination("example.org", "8000-8099", None)),
    ("localhost", Destination("localhost", None, None)),
])
def test_forms(text: str, expected: Destination) -> None:
    assert parse_allow(text) == expected


@pytest.mark.parametrize("text", ["", "/tcp", "a..b", "host:0", "host:70000", "host:http",
                                  "[2001:db8::1", "[::1]x", "host:9-3", "ex ample.org"])
def test_bad_values_say_why(text: str) -> None:
    with pytest.raises(AllowError, match="--allow"):
        parse_allow(text)


def test_the_quick_policy_loads_and_allows_dns_to_the_resolvers_first() -> None:
    text = quick_policy([parse_allow("github.com:443/tcp"), parse_allow("10.0.0.0/8"),
                         parse_allow("x.org:8000-8099")])
    policy = parse_policy_texts([("command line", text)]).policies["exec-allow"]
    first = policy.rules[0]
    assert first.resolvers and first.ports == frozenset({53}) and not first.names
    github = policy.rules[1]
    assert [n.text for n in github.names] == ["github.com"]
    assert github.proto == "tcp" and github.ports == frozenset({443})
    assert len(policy.rules[2].networks) == 1 and not policy.rules[2].names
    assert policy.rules[3].port_ranges


def test_allow_all_adds_a_policy_allowing_everything() -> None:
    policies = parse_policy_texts([("command line", quick_policy([], allow_all=True))]).policies
    (rule,) = policies["exec-allow-all"].rules
    assert rule.any_destination and rule.action == "allow"
