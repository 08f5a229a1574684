"""The command line, in-process (capsys) and once as `python -m nfguard`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nfguard import cli
from nfguard.nft import NATIVE, XT, installer
from nfguard.nft.ruleset import render
from nfguard.suggest.build import suggest
from tests.unit.policies import PRIVATE_NAMES
from tests.unit.suggest.samples import APT_LOG, MIXED, flows_of, lines
from tests.unit.suggest.samples import POLICY as SUGGEST_POLICY

REPO = Path(__file__).resolve().parents[2]

POLICY = """\
[[client]]
name = "git"
match = { exe = "/usr/bin/git" }
policies = ["deny-all"]

[[client]]
name = "everyone"
policies = ["web", "lab"]

[[policy]]
name = "web"

[[policy.rule]]
name = "github"
action = "allow"
to = ["github.com", "140.82.112.0/20"]
ports = [443]

[[policy]]
name = "lab"

[[policy.rule]]
name = "https"
action = "allow"
to = ["198.18.0.0/15", "2001:db8::/32"]
ports = [443]
proto = "tcp"

[[policy.rule]]
name = "rest"
action = "deny"
to = ["198.18.0.0/15"]

[[policy]]
name = "deny-all"

[[policy.rule]]
action = "deny"
"""


def write_config(tmp_path: Path, policy: str = POLICY, engine: str = "") -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(parents=True)
    (rules / "10-main.toml").write_text(policy)
    config = tmp_path / "nfguard.toml"
    config.write_text(f'[engine]\npolicy_dir = "rules"\n{engine}\n[metrics]\nlisten = ""\n')
    return config


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_explain(capsys: pytest.CaptureFixture[str], config: Path, to: str,
                *flags: str) -> tuple[int, str, str]:
    """`nfguard explain --config CONFIG --to TO FLAGS...`"""
    return run(capsys, "explain", "--config", str(config), "--to", to, *flags)


# ---------------------------------------------------------------- check


def test_check_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, err = run(capsys, "check", "--config", str(config))
    assert code == 0, err
    assert out == (f"{config}: ok; 1 policy files, 2 clients, 3 policies, 4 rules\n")


def test_check_bad_policy_gives_file_and_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = POLICY.replace('"198.18.0.0/15", "2001:db8::/32"', '"198.18.0.1/15"')
    config = write_config(tmp_path, bad)
    code, out, err = run(capsys, "check", "--config", str(config))
    assert code == 1
    assert out == ""
    policy_file = tmp_path / "rules" / "10-main.toml"
    assert err.splitlines() == [
        f"{policy_file}:25: bad CIDR or address '198.18.0.1/15': 198.18.0.1/15 has host bits "
        "set; did you mean 198.18.0.0/15?",
    ]


def test_check_bad_config_gives_file_and_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, engine='mode = "learning"\n')
    code, _out, err = run(capsys, "check", "--config", str(config))
    assert code == 1
    assert err.strip() == f"{config}:3: engine.mode must be one of enforce | audit, not 'learning'"


def test_check_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "check", "--config", str(tmp_path / "none.toml"))
    assert code == 1
    assert err.startswith(f"{tmp_path / 'none.toml'}:0: cannot read config")


def _module_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_check_as_python_dash_m(tmp_path: Path) -> None:
    good = write_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "nfguard", "check", "--config", str(good)],
                            capture_output=True, text=True, env=_module_env(), timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok; 1 policy files" in result.stdout
    (tmp_path / "rules" / "20-bad.toml").write_text('[[policy]]\nname = "x"\n[[policy.rule]]\n'
                                                   'action = "allow"\nproto = "icmp"\n')
    result = subprocess.run([sys.executable, "-m", "nfguard", "check", "--config", str(good)],
                            capture_output=True, text=True, env=_module_env(), timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 1
    assert (f"{tmp_path / 'rules' / '20-bad.toml'}:5: proto must be one of tcp | udp, "
            "not 'icmp'") in result.stderr.splitlines()


# ---------------------------------------------------------------- install --dry-run


class _NoKernel:
    def __init__(self) -> None:
        raise OSError("Operation not permitted")


def test_install_dry_run_without_root_prints_native(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(installer, "Installer", _NoKernel)
    config = write_config(tmp_path, engine="queue = 4\n")
    code, out, err = run(capsys, "install", "--config", str(config), "--dry-run")
    assert code == 0
    assert out.startswith("# queue path: native nft queue\n")
    assert "table inet nfguard {" in out
    assert "queue num 4" in out
    assert "cannot probe the kernel" in err
    assert out == render(cli.load_config(config).engine, NATIVE).describe()


def test_install_without_dry_run_needs_the_kernel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(installer, "Installer", _NoKernel)
    config = write_config(tmp_path)
    code, _out, err = run(capsys, "install", "--config", str(config))
    assert code == 1
    assert "Operation not permitted" in err


def test_install_dry_run_uses_the_probed_path_and_loads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Probed:
        def probe_path(self) -> str:
            return XT

        def install(self, ruleset: object) -> None:
            raise AssertionError("dry run loaded the ruleset")

    monkeypatch.setattr(installer, "Installer", Probed)
    config = write_config(tmp_path, engine='fail = "open"\n')
    code, out, _err = run(capsys, "install", "--config", str(config), "--dry-run")
    assert code == 0
    assert out.startswith("# queue path: xt NFQUEUE target")
    # OUTPUT, INPUT (DNS answers) and FORWARD (containers' flows and answers), per family
    assert out.count("--queue-bypass") == 6
    assert out.count(" -t security -I ") == 6


# ---------------------------------------------------------------- explain


def test_explain_ip_and_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443")
    assert code == 0
    policy_file = tmp_path / "rules" / "10-main.toml"
    lines = out.splitlines()
    assert lines[0] == "flow: tcp to 198.18.1.5:443"
    assert "destination 198.18.1.5:" in lines
    assert f"  client: everyone [{policy_file}:6] matched on (everyone)" in lines
    assert "  policy web: no rule matches" in lines
    assert f"  policy lab: rule lab/https [{policy_file}:22] matches (cidr) -> allow" in lines
    assert lines[-1] == ("  decision: allow (rule_match, evidence cidr); mode enforce, "
                         "the kernel is told allow")


def test_explain_udp_falls_to_the_deny_rule(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, engine='mode = "audit"\n')
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--proto", "udp")
    assert code == 0
    assert "rule lab/rest" in out and "-> deny" in out
    assert out.splitlines()[-1] == ("  decision: deny (rule_match, evidence cidr); mode audit, "
                                    "the kernel is told allow")


def test_explain_names_the_hosts_resolvers(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    policy = ('[[client]]\nname = "everyone"\npolicies = ["dns"]\n\n[[policy]]\nname = "dns"\n'
              '\n[[policy.rule]]\nname = "resolvers"\naction = "allow"\n'
              'to = ["@resolvers"]\nports = [53]\n')
    config = write_config(tmp_path, policy, engine='[names]\nresolvers = ["10.0.0.53"]\n')
    code, out, _err = run_explain(capsys, config, "10.0.0.53:53", "--proto", "udp")
    assert code == 0
    assert "  10.0.0.53 is one of the host's DNS resolvers (@resolvers)" in out
    assert "rule dns/resolvers" in out and "decision: allow" in out
    code, out, _err = run_explain(capsys, config, "10.0.0.54:53", "--proto", "udp")
    assert "@resolvers" not in out and "decision: deny (no_rule_match" in out


def test_explain_ipv6_in_brackets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, _err = run_explain(capsys, config, "[2001:db8::5]:443")
    assert code == 0
    assert "flow: tcp to 2001:db8::5:443" in out
    assert "rule lab/https" in out and "decision: allow" in out


def test_explain_no_rule_match_gets_default(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, _err = run_explain(capsys, config, "192.0.2.1:80")
    assert code == 0
    assert "  policy web: no rule matches" in out
    assert "  policy lab: no rule matches" in out
    assert "decision: deny (no_rule_match, evidence default)" in out


def test_explain_with_exe_matches_the_exe_client(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--exe", "/usr/bin/git", "--user", "root")
    assert code == 0
    policy_file = tmp_path / "rules" / "10-main.toml"
    assert "  from exe=/usr/bin/git user=root" in out
    assert f"  client: git [{policy_file}:1] matched on exe=/usr/bin/git" in out
    assert "policy deny-all: rule deny-all/#1" in out
    assert "decision: deny (rule_match, evidence cidr)" in out
    # Another exe falls through to the catch-all client.
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--exe", "/usr/bin/curl", "--user", "nobody-here-12345")
    assert code == 0
    assert "user=nobody-here-12345" in out
    assert "client: everyone" in out and "decision: allow" in out


def test_explain_user_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }', 'match = { user = "0" }')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--user", "root")
    assert code == 0
    assert "client: git" in out and "decision: deny" in out


def test_explain_host_name_uses_dns_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:
        assert host.lower() == "github.com"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.77", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    config = write_config(tmp_path)
    code, out, _err = run_explain(capsys, config, "GitHub.com:443")
    assert code == 0
    assert "GitHub.com resolves to 192.0.2.77 (evidence: dns)" in out
    assert "policy web: rule web/github" in out and "(dns github.com)" in out
    assert "decision: allow (rule_match, evidence dns)" in out
    # A name rule on 443: the flow would wait for the name the client presents.
    assert "first packet: pending; the name the client presents decides" in out
    assert ("if it presents github.com (TLS SNI / HTTP Host): allow (rule_match, "
            "rule web/github)") in out


def test_explain_address_only_flow_is_not_pending(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:80")
    assert code == 0
    assert "pending" not in out


def test_explain_bad_policy_is_an_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, POLICY + "\n[[policy]]\nname = \"web\"\n")
    code, out, err = run_explain(capsys, config, "198.18.1.5")
    assert code == 1 and out == ""
    policy_file = tmp_path / "rules" / "10-main.toml"
    assert err.strip() == (f"{policy_file}:41: duplicate policy name 'web' "
                           f"(first defined at {policy_file}:10)")


@pytest.mark.parametrize(("target", "expected"), [
    ("198.18.1.5:443", ("198.18.1.5", 443)),
    ("198.18.1.5", ("198.18.1.5", None)),
    ("github.com", ("github.com", None)),
    ("github.com:8443", ("github.com", 8443)),
    ("2001:db8::1", ("2001:db8::1", None)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[2001:db8::1]", ("2001:db8::1", None)),
])
def test_split_target(target: str, expected: tuple[str, int | None]) -> None:
    assert cli._split_target(target) == expected


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_explain_group_client_uses_the_users_groups(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }', 'match = { group = "root" }')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--user", "root")
    assert code == 0
    assert "client: git" in out and "decision: deny" in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--user", "nobody")
    assert code == 0
    assert "client: everyone" in out


def test_explain_interface_is_a_forwarded_flow(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }', 'match = { interface = "br-*" }')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--interface", "br-1a2b")
    assert code == 0
    assert "  forwarded from interface br-1a2b (a container, VM or routed network)" in out
    assert "client: git" in out and "matched on interface=br-*" in out
    assert "decision: deny" in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--interface", "eth0")
    assert code == 0 and "client: everyone" in out and "decision: allow" in out


def test_explain_a_process_in_a_container(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }',
                            'match = { interface = "br-*", exe = "/usr/bin/git" }')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--interface", "br-1", "--exe", "/usr/bin/git")
    assert code == 0 and "client: git" in out and "decision: deny" in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--exe", "/usr/bin/git")
    assert code == 0 and "client: everyone" in out, "the host's git is not the container's"
    # nor is a client of the host's git (exe alone) the container's
    config = write_config(tmp_path / "host", POLICY)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--interface", "br-1", "--exe", "/usr/bin/git")
    assert code == 0 and "from exe=/usr/bin/git" in out and "client: everyone" in out


def test_explain_a_process_in_a_container_of_an_image(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }',
                            'match = { image = "alpine/git:*", exe = "/usr/bin/git" }')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--image", "alpine/git:2.45", "--exe", "/usr/bin/git")
    assert code == 0 and "  in container name=- image=alpine/git:2.45" in out
    assert "client: git" in out and "decision: deny" in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--container", "build", "--exe", "/usr/bin/git")
    assert code == 0 and "client: everyone" in out, "a container of another image"


def test_explain_an_image_by_its_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = "ab12" * 16
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }',
                            f'match = {{ image = "sha256:{digest[:12]}*" }}')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443",
                                  "--image", f"SHA256:{digest.upper()}")
    assert code == 0 and f"  in container name=- image=SHA256:{digest.upper()}" in out
    assert "client: git" in out and "decision: deny" in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--image", "alpine/git:2")
    assert code == 0 and "client: everyone" in out, "a reference is not the id"


# ---------------------------------------------------------------- explain: the query


def query_lines(out: str) -> list[str]:
    """The query section of explain's output: from "query:" to "resolving:"."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("query: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("  resolving: "))
    return lines[start:end + 1]


QUERY_POLICY = POLICY.replace('["web", "lab"]', '["web", "lab", "find"]') + """
[[policy]]
name = "find"

[[policy.rule]]
name = "srv"
action = "allow"
resolve = ["_ldap._tcp.**.example.org"]
"""


def test_explain_says_whether_the_client_may_resolve_the_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, QUERY_POLICY)
    policy_file = tmp_path / "rules" / "10-main.toml"
    code, out, _err = run_explain(capsys, config, "github.com:443")
    assert code == 0
    assert query_lines(out) == [
        "query: github.com (any type: the name is judged)",
        "  client: everyone",
        f"  policy web: rule web/github [{policy_file}:13] covers it (name github.com) -> allow",
        "  resolving: allow (rule_match, evidence name); it goes to the resolver"]
    code, out, _err = run_explain(capsys, config, "_ldap._tcp.dc.example.org")
    assert query_lines(out)[1:] == [
        "  client: everyone",
        "  policy web: covers no such name",
        "  policy lab: covers no such name",
        f"  policy find: rule find/srv [{policy_file}:43] covers it "
        "(resolve _ldap._tcp.**.example.org) -> allow",
        "  resolving: allow (rule_match, evidence resolve); it goes to the resolver"]
    code, out, _err = run_explain(capsys, config, "x.attacker.example")
    assert query_lines(out)[-2:] == [
        "  no rule covers it: engine.default decides",
        "  resolving: deny (name_not_allowed, evidence default); answered REFUSED at once, "
        "nothing leaves the host"]
    code, out, _err = run_explain(capsys, config, "x.attacker.example", "--exe", "/usr/bin/git")
    assert query_lines(out)[1:] == [
        "  client: git",
        f"  policy deny-all: rule deny-all/#1 [{policy_file}:37] covers it "
        "(any: a rule without `to` covers every name) -> deny",
        "  resolving: deny (rule_match, evidence any); answered REFUSED at once, "
        "nothing leaves the host"]


def test_explain_an_address_judges_its_ptr_name(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, QUERY_POLICY, engine='mode = "audit"\n')
    policy_file = tmp_path / "rules" / "10-main.toml"
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443")
    assert code == 0
    assert query_lines(out) == [
        "query: PTR 5.1.18.198.in-addr.arpa (the reverse name of 198.18.1.5)",
        "  client: everyone",
        "  policy web: covers no such name",
        f"  policy lab: rule lab/https [{policy_file}:22] covers it "
        "(cidr: the address is inside its `to` networks) -> allow",
        "  resolving: allow (rule_match, evidence cidr); it goes to the resolver"]
    assert out.splitlines()[-1].startswith("  decision: allow")  # the flow's, as before
    code, out, _err = run_explain(capsys, config, "192.0.2.1")
    assert query_lines(out)[0] == (
        "query: PTR 1.2.0.192.in-addr.arpa (the reverse name of 192.0.2.1)")
    assert query_lines(out)[-1] == (
        "  resolving: deny (name_not_allowed, evidence default); audit mode: it goes to the "
        "resolver, recorded as refused")


def test_explain_queries_any_passes_unjudged(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, engine='[names]\nqueries = "any"\n')
    code, out, _err = run_explain(capsys, config, "x.attacker.example")
    assert code == 0
    assert query_lines(out) == [
        "query: x.attacker.example (any type: the name is judged)",
        "  client: everyone",
        '  [names] queries = "any": every query passes, unjudged',
        "  resolving: allow (queries_any, evidence default); it goes to the resolver"]


# ---------------------------------------------------------------- log


def audit_file(path: Path) -> Path:
    from nfguard.audit import audit_event, render_json
    from tests.unit.test_audit import ALLOW, DENY_AUDIT, NO_CLIENT, NOW, PROCESS, V4

    with path.open("wb") as file:
        for i, decision in enumerate((ALLOW, DENY_AUDIT, NO_CLIENT)):
            file.write(render_json(audit_event(decision, V4, NOW + i * 3600, PROCESS)))
        file.write(b"a text line\n")
    return path


def test_log_from_the_configs_audit_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    audit = audit_file(tmp_path / "audit.jsonl")
    config.write_text(config.read_text() + f'[audit]\npath = "{audit}"\n')
    code, out, err = run(capsys, "log", "--config", str(config))
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()] == ["ALLOW", "DENY*", "DENY"]
    assert "\x1b" not in out, "not a terminal: plain"
    assert "skipped 1 lines that are not audit events" in err
    code, out, _err = run(capsys, "log", "--config", str(config), "--deny", "--client", "ci")
    assert [line.split()[2] for line in out.splitlines()] == ["DENY*"]
    code, out, _err = run(capsys, "log", "--file", str(audit), "--since",
                          "2023-11-14T23:00:00Z", "--json")
    assert [json.loads(line)["event"]["reason"] for line in out.splitlines()] == [
        "no_rule_match", "no_client_match"]
    code, out, _err = run(capsys, "log", "--file", str(audit), "-n", "1")
    assert len(out.splitlines()) == 1 and " DENY " in out


def test_log_refuses_what_it_cannot_read(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '[audit]\npath = "-"\n')
    code, _out, err = run(capsys, "log", "--config", str(config))
    assert code == 2 and "to stdout" in err
    code, _out, err = run(capsys, "log", "--file", str(tmp_path / "none"))
    assert code == 1 and "cannot read" in err
    code, _out, err = run(capsys, "log", "--file", str(tmp_path / "none"), "--since", "soon")
    assert code == 2 and "--since 'soon'" in err


def test_log_follow_shows_a_deny_within_a_second(tmp_path: Path) -> None:
    """`nfguard log -f` as a process: an event appended shows at once, after a rotation too."""
    import time

    from nfguard.audit import audit_event, render_json
    from tests.unit.test_audit import NO_CLIENT, NOW, V4

    audit = audit_file(tmp_path / "audit.jsonl")
    follow = subprocess.Popen([sys.executable, "-m", "nfguard", "log", "-f", "--deny",
                               "--file", str(audit)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "NO_COLOR": "1"})
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # history: the last denies
        assert " DENY* " in first
        assert " DENY " in follow.stdout.readline()
        for rotate in (False, True):
            if rotate:
                audit.rename(audit.with_name("audit.jsonl.1"))
            event = audit_event(NO_CLIENT, V4, NOW)
            event["destination"]["domain"] = f"rotated-{rotate}.test"
            with audit.open("ab") as file:
                file.write(render_json(event))
            written = time.monotonic()
            line = follow.stdout.readline()
            assert f"rotated-{rotate}.test" in line
            assert time.monotonic() - written < 1.0
    finally:
        follow.terminate()
        follow.wait(5)


def test_explain_source_is_a_routed_flow_from_that_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = POLICY.replace('match = { exe = "/usr/bin/git" }',
                            'match = { source = ["10.42.16.0/27", "2001:db8:42::/64"], '
                            'interface = "eth1*" }')
    config = write_config(tmp_path, policy)
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--source", "10.42.16.5",
                                  "--interface", "eth1.42")
    assert code == 0
    assert "  forwarded from source address 10.42.16.5" in out
    assert "client: git" in out
    assert "matched on interface=eth1* source=10.42.16.0/27" in out
    # without the interface, or from outside the networks: not that client
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--source", "10.42.16.5")
    assert "(no --interface: clients with `interface` do not match)" in out
    assert "client: git" not in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--source",
                                  "2001:db8:42::7", "--interface", "eth1")
    assert "matched on interface=eth1* source=2001:db8:42::/64" in out
    code, out, _err = run_explain(capsys, config, "198.18.1.5:443", "--source",
                                  "10.42.17.5", "--interface", "eth1")
    assert "client: git" not in out
    with pytest.raises(SystemExit):
        run_explain(capsys, config, "198.18.1.5:443", "--source", "lan.example")
    assert "not an IP address: 'lan.example'" in capsys.readouterr().err


@pytest.mark.parametrize(("private", "address", "kind"), [
    ("allow", "169.254.169.254", "metadata"), ("deny", "10.0.0.5", "private")])
def test_explain_shows_a_name_kept_from_inside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    private: str, address: str, kind: str,
) -> None:
    """The DNS rebinding guard: the address is inside, and a name alone does not reach it."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_args, **_kw: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))])
    config = write_config(tmp_path, PRIVATE_NAMES)
    config.write_text(config.read_text() + f'[names]\nprivate = "{private}"\n')
    code, out, _err = run_explain(capsys, config, "api.example.com:443")
    assert code == 0
    assert (f'{address} is inside ({kind}): [names] private = "{private}" keeps a name '
            "alone from it") in out
    assert "decision: deny (name_private_address, evidence dns)" in out
    assert "if it presents api.example.com (TLS SNI / HTTP Host): deny " \
           "(name_private_address, rule web/api)" not in out  # decided at its SYN
    code, out, _err = run_explain(capsys, config, "db.corp.example:443")
    assert "decision: allow (rule_match, evidence dns)" in out
    assert "rule web/corp" in out


# ---------------------------------------------------------------- suggest


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
    (rules / "p.toml").write_text(SUGGEST_POLICY)
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
    (rules / "50-suggested.toml").write_text(SUGGEST_POLICY)
    code, out, _err = run(capsys, "suggest", str(audit), "--policy", str(rules))
    assert code == 1, "a refused query fails the gate too"
    # apt's names fall to everyone's rule without `to`: only curl's example.org is refused
    assert out.splitlines()[-2:] == [
        "# 1 distinct names refused to their clients (2 of 5 observed queries): each needs a "
        "rule whose `to` or `resolve` names it",
        "refuse MX/TXT example.org  2 queries, first seen 2026-12-07T10:00:00.000Z, last "
        "2026-12-07T10:05:00.000Z  from exe=/usr/bin/curl user=alice  client=curl "
        "reason=name_not_allowed"]
