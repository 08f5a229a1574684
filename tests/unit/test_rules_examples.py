"""The example policies in rules/: each loads alone, all load together, `check` passes, and
the tier files mean what their headers say."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from nfguard import cli
from nfguard.config import EngineConfig
from nfguard.engine import Engine
from nfguard.policy.load import load_policy_files
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import Client
from nfguard.policy.resolve import Queries, QueryJudge
from nfguard.procs import ProcessInfo
from nfguard.wire.ip import TCP, UDP, Packet

RULES = Path(__file__).resolve().parents[2] / "rules"
FILES = sorted(RULES.glob("*.toml"))
TIERS = ["tier-app", "tier-bastion", "tier-ci-runner", "tier-database", "tier-gateway",
         "tier-web"]


def test_the_tier_files_are_there() -> None:
    names = {f.stem for f in FILES}
    assert {"base", *TIERS} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_loads_alone(path: Path) -> None:
    policies = load_policy_files([path])
    assert policies.clients
    # Every policy a client names is defined in the same file.
    for client in policies.clients:
        assert set(client.policies) <= set(policies.policies)


def test_all_files_load_together() -> None:
    policies = load_policy_files(FILES)
    assert len(policies.files) == len(FILES)
    names = [c.name for c in policies.clients]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("tier", TIERS)
def test_tier_files_are_prefixed_documented_and_end_in_deny_all(tier: str) -> None:
    path = RULES / f"{tier}.toml"
    text = path.read_text()
    assert text.startswith("# Tier example:")
    assert "How to adapt it" in text
    assert "PLACEHOLDER" in text
    prefix = tier.removeprefix("tier-") + "-"
    policies = load_policy_files([path])
    assert all(c.name.startswith(prefix) for c in policies.clients)
    assert all(name.startswith(prefix) for name in policies.policies)
    for client in policies.clients:
        last = policies.policies[client.policies[-1]]
        assert [(r.action, r.any_destination, r.ports, r.proto) for r in last.rules] == [
            ("deny", True, None, None)]
    # The last client takes every process nothing before it matched.
    assert policies.clients[-1].match == ()


def test_check_passes_on_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in FILES:
        shutil.copy(path, rules / path.name)
    config = tmp_path / "nfguard.toml"
    config.write_text('[engine]\npolicy_dir = "rules"\n[metrics]\nlisten = ""\n')
    assert cli.main(["check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{config}: ok; {len(FILES)} policy files"), err
    for path in FILES:
        for other in rules.iterdir():
            other.unlink()
        shutil.copy(path, rules / path.name)
        assert cli.main(["check", "--config", str(config)]) == 0, path
        capsys.readouterr()


# ---------------------------------------------------------------- what the tiers allow


RESOLVER = "10.0.0.53"  # the host's resolver, as the engines below are told


def engine_for(tier: str, default: str = "allow", private: str = "allow") -> Engine:
    return Engine(EngineConfig(default=default),
                  CompiledPolicySet(load_policy_files([RULES / f"{tier}.toml"])),
                  resolvers=lambda ip: ip == RESOLVER, private=private)


def decision(engine: Engine, dst: str, port: int, proto: str = "tcp", name: str | None = None,
             exe: str | None = None, user: str | None = None,
             sender: ProcessInfo | None = None) -> str:
    """`sender`: who sends, when more than an exe and a user (a routed client)."""
    address = ipaddress.ip_address(dst)
    packet = Packet(address.version, TCP if proto == "tcp" else UDP, "10.9.9.9", dst, 40000,
                    port, int(address), 0, 0, 0)
    process = sender or ProcessInfo(exe=exe, user=user, uid=1000 if user else None)
    names = [(name, "dns")] if name else []
    return engine.decide(packet, process, names).action


PUBLIC = "93.184.216.34"


@pytest.mark.parametrize("policy", ["base", *TIERS])
def test_dns_goes_to_the_hosts_resolvers_only(policy: str) -> None:
    engine = engine_for(policy, default="deny")
    assert decision(engine, RESOLVER, 53, "udp") == "allow"
    assert decision(engine, RESOLVER, 53, "tcp") == "allow"
    assert decision(engine, PUBLIC, 53, "udp") == "deny", "a server of the sender's choosing"


def test_database_tier() -> None:
    engine = engine_for("tier-database")
    assert decision(engine, "10.0.0.123", 123, "udp") == "allow"
    assert decision(engine, "10.3.0.4", 5432, user="postgres") == "allow"
    assert decision(engine, "fd12::4", 5432, user="postgres") == "allow"
    assert decision(engine, "10.3.0.4", 5432, user="alice") == "deny"  # not the server
    assert decision(engine, PUBLIC, 5432, user="postgres") == "deny"
    assert decision(engine, PUBLIC, 443, name="pypi.org") == "deny"
    assert decision(engine, "10.0.50.7", 443, exe="/usr/bin/pgbackrest") == "allow"


def test_app_tier() -> None:
    engine = engine_for("tier-app")
    for name in ("deb.debian.org", "security.debian.org", "pypi.org", "files.pythonhosted.org",
                 "registry.npmjs.org"):
        assert decision(engine, PUBLIC, 443, name=name) == "allow", name
    assert decision(engine, PUBLIC, 443, name="evil.example.org") == "deny"
    assert decision(engine, "10.1.2.3", 6379, user="app") == "allow"
    assert decision(engine, PUBLIC, 443, name="api.example.com", user="app") == "allow"
    assert decision(engine, PUBLIC, 443, name="github.com", user="app") == "deny"


def test_web_tier() -> None:
    engine = engine_for("tier-web")
    assert decision(engine, "10.20.3.4", 8080) == "allow"
    assert decision(engine, "10.21.3.4", 8080) == "deny"  # not the app tier
    assert decision(engine, PUBLIC, 80, name="r11.o.lencr.org") == "allow"
    assert decision(engine, PUBLIC, 443, name="acme-v02.api.letsencrypt.org") == "allow"
    assert decision(engine, PUBLIC, 443, name="r11.o.lencr.org") == "deny"
    assert decision(engine, PUBLIC, 443, name="pypi.org") == "deny"


def test_bastion_tier() -> None:
    engine = engine_for("tier-bastion")
    assert decision(engine, "10.1.2.3", 22, exe="/usr/bin/ssh") == "allow"
    assert decision(engine, "192.168.7.7", 22, exe="/usr/bin/ssh") == "allow"
    assert decision(engine, PUBLIC, 22, exe="/usr/bin/ssh") == "deny"
    assert decision(engine, "10.1.2.3", 22, exe="/usr/bin/nc") == "deny"
    assert decision(engine, "10.1.2.3", 443, exe="/usr/bin/ssh") == "deny"


def test_ci_runner_tier() -> None:
    engine = engine_for("tier-ci-runner")
    for name in ("github.com", "api.github.com", "objects.githubusercontent.com",
                 "codeload.github.com", "gitlab.com", "registry.npmjs.org", "pypi.org"):
        assert decision(engine, PUBLIC, 443, name=name) == "allow", name
    assert decision(engine, PUBLIC, 22, name="github.com") == "allow"
    assert decision(engine, PUBLIC, 443, name="paste.example.com") == "deny"
    assert decision(engine, PUBLIC, 443) == "deny"
    # The internal registry's name leads inside (private = true); a public one's does not.
    for private in ("allow", "deny"):
        engine = engine_for("tier-ci-runner", default="deny", private=private)
        assert decision(engine, "10.20.0.5", 443, name="registry.ci.internal.example") == \
            "allow"
        assert decision(engine, "169.254.169.254", 443, name="pypi.org") == "deny"
        assert decision(engine, "10.20.0.5", 443, name="pypi.org") == (
            "allow" if private == "allow" else "deny")


# ---------------------------------------------------------------- which names they resolve

RESOLVED = ProcessInfo(exe="/usr/lib/systemd/systemd-resolved", user="systemd-resolve",
                       uid=990)


def judge_for(path: Path, default: str = "deny") -> tuple[Engine, QueryJudge]:
    engine = Engine(EngineConfig(default=default),
                    CompiledPolicySet(load_policy_files([path])),
                    resolvers=lambda ip: ip == RESOLVER)
    return engine, QueryJudge(engine.policies, Queries.POLICY, default)


def example_name(pattern: str) -> str:
    """A name the pattern matches: each wildcard a label or two of its own."""
    return ".".join("x.y" if label == "**" else "x" if label == "*" else label
                    for label in pattern.split("."))


def member(client: Client) -> ProcessInfo:
    """A sender the client's match table takes (the examples match on exe and user; the
    gateway's on a routed client's interface and source address)."""
    keys = dict(client.match)
    assert set(keys) <= {"exe", "user", "interface"}, keys
    if "interface" not in keys and not client.sources:
        return ProcessInfo(exe=keys.get("exe"), user=keys.get("user"),
                           uid=1000 if "user" in keys else None)
    network = ipaddress.ip_network(str(client.sources[0])) if client.sources else None
    source = ("10.99.99.99" if network is None
              else str(network[1] if network.num_addresses > 1 else network[0]))
    return ProcessInfo(interface=keys.get("interface", "eth1").rstrip("*"), source=source)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_client_may_resolve_the_names_it_may_connect_to(path: Path) -> None:
    engine, judge = judge_for(path)
    checked = 0
    for client in load_policy_files([path]).clients:
        process = member(client)
        taken = engine.client_for(process)
        assert taken is not None and taken.name == client.name, "an earlier client takes it"
        for policy in client.policies:
            for rule in engine.policies.policies[policy].rules:
                ports = sorted(rule.ports or ()) or [443]
                for pattern in rule.names:
                    name = example_name(pattern.text)
                    flow = decision(engine, PUBLIC, ports[0], rule.proto or "tcp", name,
                                    sender=process)
                    if flow == "allow":
                        checked += 1
                        assert judge.decide(client, name).action == "allow", name
                for pattern in rule.resolve:
                    name = example_name(pattern.text)
                    expected = judge.decide(client, name)
                    assert expected.action == rule.action or expected.rule != rule.name
                    checked += rule.action == "allow"
        # and nothing else: a name no rule names is refused (but by the stub's client,
        # which only asks what the others were allowed to ask it)
        refused = judge.decide(client, "x.attacker.example").action == "deny"
        assert refused != (client.queries == Queries.ANY), client.name
    assert checked or path.stem in ("tier-bastion", "tier-database", "encrypted-dns")


@pytest.mark.parametrize("policy", ["base", *TIERS])
def test_the_resolver_stub_has_a_client_of_its_own(policy: str) -> None:
    """systemd-resolved asks upstream what local processes were allowed to ask it: its own
    queries pass, its flows go to the host's resolvers on 53 and nowhere else."""
    engine, judge = judge_for(RULES / f"{policy}.toml")
    client = engine.client_for(RESOLVED)
    assert client is not None and client.name.endswith("systemd-resolved")
    assert client.queries == Queries.ANY
    assert judge.decide(client, "anything.example").action == "allow"
    assert judge.decide(client, "").action == "allow"  # the root: DNSSEC's keys
    stub = (RESOLVED.exe, RESOLVED.user)
    assert decision(engine, RESOLVER, 53, "udp", None, *stub) == "allow"
    assert decision(engine, RESOLVER, 53, "tcp", None, *stub) == "allow"
    assert decision(engine, PUBLIC, 53, "udp", None, *stub) == "deny"
    assert decision(engine, PUBLIC, 443, "tcp", "deb.debian.org", *stub) == "deny"
    # a process pretending to be it under another user is not it
    other = engine.client_for(ProcessInfo(exe=RESOLVED.exe, user="mallory", uid=1000))
    assert other is not None and other is not client


def test_base_lets_a_stock_debian_resolve_what_it_uses() -> None:
    engine, judge = judge_for(RULES / "base.toml")
    everyone = engine.client_for(ProcessInfo(exe="/usr/lib/apt/methods/http", user="_apt",
                                             uid=42))
    assert everyone is not None and everyone.name == "everyone"
    for name in ("deb.debian.org", "security.debian.org", "_http._tcp.deb.debian.org",
                 "_http._tcp.security.debian.org", "pypi.org", "files.pythonhosted.org"):
        assert judge.decide(everyone, name).action == "allow", name
    for name in ("x.attacker.example", "0.debian.pool.ntp.org", "1.2.0.192.in-addr.arpa"):
        assert judge.decide(everyone, name).action == "deny", name
    timesync = ProcessInfo(exe="/usr/lib/systemd/systemd-timesyncd", user="systemd-timesync",
                           uid=991)
    client = engine.client_for(timesync)
    assert client is not None and client.name == "systemd-timesyncd"
    assert judge.decide(client, "2.debian.pool.ntp.org").action == "allow"
    assert judge.decide(client, "deb.debian.org").action == "deny"
    assert decision(engine, PUBLIC, 123, "udp", "2.debian.pool.ntp.org", timesync.exe,
                    timesync.user) == "allow"
    assert decision(engine, RESOLVER, 53, "udp", None, timesync.exe, timesync.user) == "allow"


def test_encrypted_dns_first_leaves_names_to_the_next_policies(tmp_path: Path) -> None:
    """Put first in a client's policies (as its header says), encrypted-dns refuses the
    DoH servers' names and every reverse name, and no other name."""
    path = tmp_path / "combined.toml"
    path.write_text((RULES / "base.toml").read_text().replace(
        'policies = ["dns", "package-mirrors"]',
        'policies = ["encrypted-dns", "dns", "package-mirrors"]')
        + (RULES / "encrypted-dns.toml").read_text().split("[[policy]]", 1)[1].join(
            ["\n[[policy]]", ""]))
    engine, judge = judge_for(path)
    everyone = engine.client_for(ProcessInfo(exe="/usr/bin/curl", user="alice", uid=1000))
    assert everyone is not None and everyone.name == "everyone"
    assert judge.decide(everyone, "deb.debian.org").action == "allow"
    refused = judge.decide(everyone, "dns.google")
    assert (refused.action, refused.rule) == ("deny", "encrypted-dns/public-doh-by-name")
    ptr = judge.decide(everyone, "8.8.8.8.in-addr.arpa")
    assert ptr.action == "deny" and ptr.rule is not None
    assert decision(engine, "192.0.2.1", 853, "tcp") == "deny"
    assert decision(engine, "192.0.2.1", 853, "udp") == "deny"


def test_gateway_tier() -> None:
    """Routed clients by their original source (and VLAN), the gateway's own processes by
    what they run; a LAN address no client names gets nothing."""
    engine = engine_for("tier-gateway", default="deny")

    def routed(source: str, interface: str = "eth1") -> ProcessInfo:
        return ProcessInfo(interface=interface, source=source)

    def client(sender: ProcessInfo) -> str | None:
        found = engine.client_for(sender)
        return None if found is None else found.name

    assert client(routed("10.42.16.5", "eth1.16")) == "gateway-servers"
    assert client(routed("2001:db8:42::7", "eth1.16")) == "gateway-servers"
    assert client(routed("10.42.16.5", "eth1.17")) == "gateway-lan-rest", "not its VLAN"
    assert client(routed("10.42.17.5")) == "gateway-office-monitoring"
    assert client(routed("10.42.17.9")) == "gateway-office"
    assert client(routed("10.42.99.1")) == "gateway-lan-rest"
    assert client(ProcessInfo(exe="/usr/bin/apt", user="root")) == "gateway-host"
    servers = routed("10.42.16.5", "eth1.16")
    assert decision(engine, PUBLIC, 443, name="github.com", sender=servers) == "allow"
    assert decision(engine, "10.50.1.2", 22, sender=servers) == "allow"
    assert decision(engine, PUBLIC, 443, name="mail.example.net", sender=servers) == "deny"
    office = routed("10.42.17.9")
    assert decision(engine, PUBLIC, 443, name="mail.example.net", sender=office) == "allow"
    assert decision(engine, PUBLIC, 443, name="monitoring.example.net",
                    sender=office) == "deny"
    assert decision(engine, PUBLIC, 443, name="monitoring.example.net",
                    sender=routed("10.42.17.5")) == "allow"
    assert decision(engine, PUBLIC, 443, name="github.com", sender=routed("10.42.99.1")) == (
        "deny")
    # the gateway's own flows are never a LAN client's, whatever their address
    assert decision(engine, PUBLIC, 443, name="github.com", exe="/usr/bin/curl") == "deny"

