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
from nfguard.procs import ProcessInfo
from nfguard.wire.ip import TCP, UDP, Packet

RULES = Path(__file__).resolve().parents[2] / "rules"
FILES = sorted(RULES.glob("*.toml"))
TIERS = ["tier-app", "tier-bastion", "tier-ci-runner", "tier-database", "tier-web"]


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


def engine_for(tier: str, default: str = "allow") -> Engine:
    return Engine(EngineConfig(default=default),
                  CompiledPolicySet(load_policy_files([RULES / f"{tier}.toml"])),
                  resolvers=lambda ip: ip == RESOLVER)


def decision(engine: Engine, dst: str, port: int, proto: str = "tcp", name: str | None = None,
             exe: str | None = None, user: str | None = None) -> str:
    address = ipaddress.ip_address(dst)
    packet = Packet(address.version, TCP if proto == "tcp" else UDP, "10.9.9.9", dst, 40000,
                    port, int(address), 0, 0, 0)
    process = ProcessInfo(exe=exe, user=user, uid=1000 if user else None)
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
