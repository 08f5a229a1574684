"""Policy loading: valid files, and every problem named by exact file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfguard.policy.load import PolicyError, load_policy_dir, parse_policy_texts
from nfguard.policy.model import PortRange
from tests.unit.policies import QUERIES


def problems_of(*documents: tuple[str, str]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy_texts(list(documents))
    problems = [str(p) for p in info.value.problems]
    # The exception text lists every problem, one per line.
    assert str(info.value).splitlines() == problems
    return problems


def only_problem(text: str, path: str = "p.toml") -> str:
    problems = problems_of((path, text))
    assert len(problems) == 1, problems
    return problems[0]


GOOD_A = """\
[[client]]
name = "deploy-bot"
match = { exe = "/usr/bin/git", user = "deploy" }
policies = ["github", "deny-all"]

[[policy]]
name = "github"

[[policy.rule]]
name = "github-https"
action = "allow"
to = ["github.com", "*.github.com", "140.82.112.0/20", "2606:50c0::/32"]
ports = [443, "8000-8099"]
proto = "tcp"

[[policy.rule]]
action = "deny"
"""

GOOD_B = """\
[[client]]
name = "everyone"
policies = ["deny-all"]

[[policy]]
name = "deny-all"

[[policy.rule]]
name = "nothing"
action = "deny"
"""


# ---------------------------------------------------------------- valid policies


def test_valid_policy_dir_in_file_name_order_with_global_policy_ids(tmp_path: Path) -> None:
    # "b" references a policy defined only in "a", and vice versa: names are global.
    (tmp_path / "20-b.toml").write_text(GOOD_B)
    (tmp_path / "10-a.toml").write_text(GOOD_A)
    (tmp_path / "README.md").write_text("not a policy [[[")
    policies = load_policy_dir(tmp_path)

    assert policies.files == (str(tmp_path / "10-a.toml"), str(tmp_path / "20-b.toml"))
    assert [c.name for c in policies.clients] == ["deploy-bot", "everyone"]
    assert set(policies.policies) == {"github", "deny-all"}
    assert policies.rule_count == 3

    bot = policies.clients[0]
    assert bot.match == (("exe", "/usr/bin/git"), ("user", "deploy"))
    assert bot.policies == ("github", "deny-all")
    assert bot.mode is None
    assert str(bot.location) == f"{tmp_path / '10-a.toml'}:1"
    assert str(policies.clients[1].location) == f"{tmp_path / '20-b.toml'}:1"

    github = policies.policies["github"]
    assert str(github.location) == f"{tmp_path / '10-a.toml'}:6"
    first, second = github.rules
    assert first.name == "github/github-https"
    assert first.action == "allow"
    assert first.proto == "tcp"
    assert first.ports == frozenset({443})
    assert first.port_ranges == (PortRange(8000, 8099),)
    assert [str(n) for n in first.networks] == ["140.82.112.0/20", "2606:50c0::/32"]
    assert [p.text for p in first.names] == ["github.com", "*.github.com"]
    assert str(first.location) == f"{tmp_path / '10-a.toml'}:9"
    # Unnamed rules are shown by their 1-based index.
    assert second.name == "github/#2"
    assert second.ports is None and second.proto is None and second.any_destination
    assert str(second.location) == f"{tmp_path / '10-a.toml'}:16"
    assert policies.policies["deny-all"].rules[0].name == "deny-all/nothing"


def test_file_name_order_decides_client_order(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text('[[client]]\nname = "first"\npolicies = ["p"]\n')
    (tmp_path / "a.toml").write_text(
        '[[client]]\nname = "zeroth"\npolicies = ["p"]\n'
        '[[policy]]\nname = "p"\n[[policy.rule]]\naction = "allow"\n'
    )
    policies = load_policy_dir(tmp_path)
    assert [c.name for c in policies.clients] == ["zeroth", "first"]


def test_client_mode_and_match_keys() -> None:
    text = """\
[[client]]
name = "ci"
mode = "audit"
match = { user = 1001, sha256 = "AB%s", unit = "ci.service" }
policies = ["p"]
[[policy]]
name = "p"
""" % ("0" * 62)
    policies = parse_policy_texts([("x.toml", text)])
    client = policies.clients[0]
    assert client.mode == "audit"
    # uids are accepted as integers, digests are lower-cased.
    assert client.match == (("user", "1001"), ("sha256", "ab" + "0" * 62),
                            ("unit", "ci.service"))
    assert policies.policies["p"].rules == ()


def test_match_as_sub_table() -> None:
    text = '[[client]]\nname = "c"\npolicies = ["p"]\n[client.match]\nexe = "/bin/sh"\n' \
           '[[policy]]\nname = "p"\n'
    assert parse_policy_texts([("x.toml", text)]).clients[0].match == (("exe", "/bin/sh"),)


def test_empty_directory_and_missing_directory(tmp_path: Path) -> None:
    empty = load_policy_dir(tmp_path)
    assert empty.clients == () and empty.policies == {} and empty.files == ()
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}:0: policy directory not found"


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'bad.toml'}:0: cannot read:")


# ---------------------------------------------------------------- errors, file and line


def test_toml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD_B)
    (tmp_path / "b.toml").write_text('[[policy]]\nname = "p"\n\n[[policy.rule]\naction = 1\n')
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'b.toml'}:4: invalid TOML: Expected ']]' at the end of an array "
        "declaration",
    ]


def test_toml_duplicate_key_is_a_syntax_error() -> None:
    assert only_problem('[[policy]]\nname = "p"\nname = "q"\n') == (
        "p.toml:3: invalid TOML: Cannot overwrite a value"
    )


def test_toml_error_at_end_of_document_has_a_real_line() -> None:
    problem = only_problem('[[policy]]\nname = "p"\nx = [1,\n')
    assert problem.startswith("p.toml:3: invalid TOML")


def test_unknown_keys_at_every_level() -> None:
    text = """\
x = 1
[[client]]
name = "c"
foo = 1
match = { exe = "/bin/a", bogus = "z" }
policies = ["p"]
[[policy]]
name = "p"
bar = 2
[[policy.rule]]
action = "deny"
baz = 3
"""
    assert problems_of(("p.toml", text)) == [
        "p.toml:1: unknown key 'x' in top level (allowed: client, policy)",
        "p.toml:4: unknown key 'foo' in [[client]] (allowed: name, match, policies, mode, "
        "queries)",
        "p.toml:5: unknown match key 'bogus' (allowed: exe, cmdline, user, group, unit, "
        "cgroup, parent_exe, sha256, interface, container, image)",
        "p.toml:9: unknown key 'bar' in [[policy]] (allowed: name, rule)",
        "p.toml:12: unknown key 'baz' in [[policy.rule]] (allowed: name, action, to, "
        "resolve, ports, proto)",
    ]


def test_unknown_match_key_in_sub_table_gives_its_line() -> None:
    text = '[[client]]\nname = "c"\npolicies = ["p"]\n[client.match]\nexe = "/bin/sh"\n' \
           'bogus = "y"\n[[policy]]\nname = "p"\n'
    assert only_problem(text).startswith("p.toml:6: unknown match key 'bogus'")


def test_bad_match_values() -> None:
    text = """\
[[client]]
name = "c"
policies = ["p"]
match = { exe = "", sha256 = "abc" }
[[client]]
name = "d"
policies = ["p"]
match = "git"
[[policy]]
name = "p"
"""
    assert problems_of(("p.toml", text)) == [
        "p.toml:4: match.exe must be a non-empty string",
        "p.toml:4: match.sha256 must be 64 hex digits",
        'p.toml:8: match must be a table: { exe = "/usr/bin/git" }',
    ]


def test_missing_required_keys() -> None:
    text = """\
[[client]]
policies = ["p"]

[[client]]
name = "c"

[[policy]]
[[policy.rule]]
to = ["1.2.3.4"]

[[policy]]
name = "q"

[[policy.rule]]
to = ["1.2.3.4"]
"""
    assert problems_of(("p.toml", text)) == [
        "p.toml:1: missing required key 'name'",
        "p.toml:4: missing required key 'policies'",
        "p.toml:7: missing required key 'name'",
        "p.toml:14: missing required key 'action' (allow | deny)",
    ]


def test_wrong_types() -> None:
    text = """\
[[client]]
name = 3
policies = ["p"]
[[client]]
name = "c"
policies = "p"
[[policy]]
name = "p"
[[policy.rule]]
name = "a/b"
action = "allow"
to = "github.com"
ports = 443
"""
    assert problems_of(("p.toml", text)) == [
        "p.toml:2: name must be a non-empty string",
        "p.toml:6: policies must be a list of strings",
        "p.toml:10: a rule name may not contain '/'",
        "p.toml:12: to must be a list of strings",
        'p.toml:13: ports must be a non-empty list, e.g. [443] or ["8000-8099"]',
    ]


def test_policy_written_as_plain_table() -> None:
    assert only_problem('[policy]\nname = "p"\n') == (
        "p.toml:1: 'policy' must be written as [[policy]] tables"
    )


def test_undefined_policy_reference_line_of_element_in_multiline_list() -> None:
    text = """\
[[client]]
name = "x"
policies = [
  "p",
  "nope",
]

[[policy]]
name = "p"
"""
    assert only_problem(text, "c.toml") == (
        "c.toml:5: client 'x' references policy 'nope', which no policy file defines"
    )


def test_undefined_policy_reference_in_second_file_and_second_client() -> None:
    a = '[[policy]]\nname = "p"\n'
    b = '[[client]]\nname = "one"\npolicies = ["p"]\n\n[[client]]\nname = "two"\n' \
        'policies = ["p", "missing"]\n'
    assert problems_of(("a.toml", a), ("b.toml", b)) == [
        "b.toml:7: client 'two' references policy 'missing', which no policy file defines",
    ]


def test_undefined_policy_reference_single_quoted() -> None:
    text = "[[client]]\nname = 'x'\npolicies = [\n  'p',\n  'nope',\n]\n[[policy]]\nname = 'p'\n"
    assert only_problem(text).startswith("p.toml:5: client 'x' references policy 'nope'")


def _rule(body: str) -> str:
    return f'[[policy]]\nname = "p"\n\n[[policy.rule]]\naction = "allow"\n{body}'


def test_bad_cidr_with_host_bits_gives_a_hint() -> None:
    assert only_problem(_rule('to = ["10.1.1.1/8"]\n')) == (
        "p.toml:6: bad CIDR or address '10.1.1.1/8': 10.1.1.1/8 has host bits set; "
        "did you mean 10.0.0.0/8?"
    )


def test_bad_ipv6_cidrs() -> None:
    text = _rule('to = [\n  "2001:db8::/32",\n  "2001:db8::1/32",\n  "2001:db8::zz",\n'
                 '  "::1/129",\n]\n')
    assert problems_of(("p.toml", text)) == [
        "p.toml:8: bad CIDR or address '2001:db8::1/32': 2001:db8::1/32 has host bits set; "
        "did you mean 2001:db8::/32?",
        "p.toml:9: bad CIDR or address '2001:db8::zz': '2001:db8::zz' does not appear to be "
        "an IPv4 or IPv6 network",
        "p.toml:10: bad CIDR or address '::1/129': '::1/129' does not appear to be an IPv4 "
        "or IPv6 network",
    ]


def test_bad_ipv4_addresses() -> None:
    text = _rule('to = [\n  "300.1.1.1",\n  "10.0.0.0/33",\n]\n')
    problems = problems_of(("p.toml", text))
    assert [p.split(": bad CIDR")[0] for p in problems] == ["p.toml:7", "p.toml:8"]
    assert "'300.1.1.1'" in problems[0] and "'10.0.0.0/33'" in problems[1]


def test_bad_name_patterns_on_their_lines() -> None:
    text = _rule('to = [\n  "github.com",\n  "a*b.com",\n  "-bad.example",\n  "a..b",\n'
                 f'  "{"x" * 64}.com",\n]\n')
    assert problems_of(("p.toml", text)) == [
        "p.toml:8: bad name pattern: 'a*b.com': a wildcard must be a whole label "
        "('*' one label, '**' any depth)",
        "p.toml:9: bad name pattern: '-bad.example': '-bad' is not a valid DNS label",
        "p.toml:10: bad name pattern: 'a..b': '' is not a valid DNS label",
        f"p.toml:11: bad name pattern: '{'x' * 64}.com': '{'x' * 64}' is not a valid DNS "
        "label",
    ]


def test_resolvers_stand_beside_addresses_and_names() -> None:
    policies = parse_policy_texts([("p.toml", _rule(
        'to = ["@resolvers", "10.0.0.0/8", "dns.example"]\nports = [53]\n'))])
    rule = policies.policies["p"].rules[0]
    assert rule.resolvers and not rule.any_destination
    assert [str(n) for n in rule.networks] == ["10.0.0.0/8"]
    assert [p.text for p in rule.names] == ["dns.example"]
    alone = parse_policy_texts([("p.toml", _rule('to = ["@resolvers"]\n'))])
    assert not alone.policies["p"].rules[0].any_destination
    assert only_problem(_rule('to = [\n  "@resolvers",\n  "@resolver",\n]\n')) == (
        "p.toml:8: unknown address set '@resolver': the only one is '@resolvers' (the "
        "host's DNS resolvers)")


def test_name_longer_than_253() -> None:
    name = ".".join(["a" * 60] * 5)
    assert only_problem(_rule(f'to = ["{name}"]\n')) == (
        f"p.toml:6: bad name pattern: name {name!r} is longer than 253 characters"
    )


@pytest.mark.parametrize("port", ["0", "70000", '"10-5"', '"0-10"', '"1-65536"', '"443"',
                                  "true", "1.5"])
def test_bad_port(port: str) -> None:
    problem = only_problem(_rule(f"ports = [443, {port}]\n"))
    assert problem.startswith("p.toml:6: bad port ")
    assert problem.endswith(': ports are 1-65535, or "LOW-HIGH"')


def test_bad_ports_reported_together() -> None:
    assert problems_of(("p.toml", _rule('ports = [0, 70000, "10-5"]\n'))) == [
        'p.toml:6: bad port 0: ports are 1-65535, or "LOW-HIGH"',
        'p.toml:6: bad port 70000: ports are 1-65535, or "LOW-HIGH"',
        "p.toml:6: bad port '10-5': ports are 1-65535, or \"LOW-HIGH\"",
    ]


def test_empty_ports_list() -> None:
    assert only_problem(_rule("ports = []\n")) == (
        'p.toml:6: ports must be a non-empty list, e.g. [443] or ["8000-8099"]'
    )


def test_bad_port_in_multiline_list_named_by_line() -> None:
    text = _rule('ports = [\n  443,\n  "10-5",\n  70000,\n]\n')
    assert problems_of(("p.toml", text)) == [
        "p.toml:8: bad port '10-5': ports are 1-65535, or \"LOW-HIGH\"",
        'p.toml:9: bad port 70000: ports are 1-65535, or "LOW-HIGH"',
    ]


def test_bad_port_zero_in_multiline_list_named_by_its_own_line() -> None:
    text = _rule("ports = [\n  80,\n  8080,\n  0,\n]\n")
    assert only_problem(text).startswith("p.toml:9: bad port 0")


@pytest.mark.parametrize("proto", ['"icmp"', '"TCP"', "6"])
def test_bad_proto(proto: str) -> None:
    problem = only_problem(_rule(f"proto = {proto}\n"))
    assert problem.startswith("p.toml:6: proto must be one of tcp | udp, not ")


def test_bad_action_and_mode() -> None:
    text = """\
[[client]]
name = "c"
policies = ["p"]
mode = "learn"
[[policy]]
name = "p"
[[policy.rule]]
action = "accept"
"""
    assert problems_of(("p.toml", text)) == [
        "p.toml:4: mode must be one of enforce | audit, not 'learn'",
        "p.toml:8: action must be one of allow | deny, not 'accept'",
    ]


def test_queries_and_resolve_are_read() -> None:
    policies = parse_policy_texts([("q.toml", QUERIES)])
    assert {c.name: c.queries for c in policies.clients} == {
        "app": None, "strict": None, "ops": None, "legacy": "any", "judged": "policy"}
    rules = {r.name: r for r in policies.policies["app"].rules}
    assert [p.text for p in rules["app/discovery"].resolve] == [
        "_ldap._tcp.example.org", "**.svc.example"]
    assert rules["app/discovery"].names == () and rules["app/discovery"].networks == ()
    assert not rules["app/discovery"].any_destination  # it reaches nothing
    assert rules["app/api"].resolve == ()


def test_a_rule_may_name_what_it_reaches_and_what_it_only_resolves() -> None:
    text = """\
[[policy]]
name = "p"
[[policy.rule]]
action = "allow"
to = ["ldap.example.org"]
resolve = ["_LDAP._tcp.Example.org."]
ports = [636]
"""
    rule = parse_policy_texts([("p.toml", text)]).policies["p"].rules[0]
    assert [p.text for p in rule.resolve] == ["_ldap._tcp.example.org"]
    assert rule.ports == frozenset({636})


def test_bad_queries_and_resolve_on_their_lines() -> None:
    text = """\
[[client]]
name = "c"
policies = ["p"]
queries = "all"
[[policy]]
name = "p"
[[policy.rule]]
action = "allow"
resolve = [
  "ok.example",
  "10.0.0.0/8",
  "@resolvers",
  "bad*.example",
]
[[policy.rule]]
action = "allow"
resolve = []
[[policy.rule]]
action = "deny"
resolve = ["x.example"]
ports = [53]
proto = "udp"
[[policy.rule]]
action = "allow"
resolve = "one.example"
"""
    assert problems_of(("p.toml", text)) == [
        "p.toml:4: queries must be one of policy | any, not 'all'",
        "p.toml:11: resolve takes name patterns, not '10.0.0.0/8' (reverse lookups follow the "
        'addresses the rules allow; or name them: "**.in-addr.arpa")',
        "p.toml:12: resolve takes name patterns, not '@resolvers' (reverse lookups follow the "
        'addresses the rules allow; or name them: "**.in-addr.arpa")',
        "p.toml:13: bad name pattern: 'bad*.example': a wildcard must be a whole label "
        "('*' one label, '**' any depth)",
        "p.toml:17: 'resolve' is empty: leave it out",
        "p.toml:21: ports does not apply to a rule with 'resolve' and no 'to': it allows or "
        "denies no connection",
        "p.toml:22: proto does not apply to a rule with 'resolve' and no 'to': it allows or "
        "denies no connection",
        "p.toml:25: resolve must be a list of strings",
    ]


def test_duplicate_client_policy_rule_ids_across_files() -> None:
    a = """\
[[client]]
name = "c"
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
name = "r"
action = "allow"

[[policy.rule]]
name = "r"
action = "deny"
"""
    b = """\
# another file
[[client]]
name = "c"
policies = ["p"]

[[policy]]
name = "p"
"""
    assert problems_of(("a.toml", a), ("b.toml", b)) == [
        "a.toml:13: duplicate rule name 'p/r' in policy 'p'",
        "b.toml:3: duplicate client name 'c'",
        "b.toml:7: duplicate policy name 'p' (first defined at a.toml:5)",
    ]


def test_empty_to() -> None:
    assert only_problem(_rule("to = []\n")) == (
        "p.toml:6: 'to' is empty: leave it out to match any destination"
    )


def test_several_errors_in_several_files_reported_together(tmp_path: Path) -> None:
    (tmp_path / "1.toml").write_text(_rule('to = ["1.2.3.4/8"]\nproto = "sctp"\n'))
    (tmp_path / "2.toml").write_text("[[client]\n")
    (tmp_path / "3.toml").write_text('[[client]]\nname = "c"\npolicies = ["p", "q"]\n')
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 4, problems
    assert problems[0].startswith(f"{tmp_path / '1.toml'}:6: bad CIDR or address '1.2.3.4/8'")
    assert problems[1] == f"{tmp_path / '1.toml'}:7: proto must be one of tcp | udp, not 'sctp'"
    assert problems[2].startswith(f"{tmp_path / '2.toml'}:1: invalid TOML: ")
    assert problems[3] == (f"{tmp_path / '3.toml'}:3: client 'c' references policy 'q', "
                           "which no policy file defines")


def test_a_bad_rule_is_not_applied_but_the_rest_is_checked() -> None:
    # A problem anywhere means no PolicySet at all, however many good parts there are.
    good = _rule('to = ["1.2.3.4"]\n')
    with pytest.raises(PolicyError):
        parse_policy_texts([("good.toml", good), ("bad.toml", "x = 1\n")])
    assert parse_policy_texts([("good.toml", good)]).rule_count == 1
