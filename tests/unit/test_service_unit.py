"""The systemd unit: the shipped copy is what nfguard renders, systemd accepts it, and
`nfguard install --systemd` writes it for the nfguard being run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nfguard import cli, service
from nfguard.config import DEFAULT_PATH, Config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "systemd" / "nfguard.service"


def settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_repository_copy_is_current() -> None:
    assert SHIPPED.read_text(encoding="utf-8") == service.render_unit(
        service.BOOTSTRAP_COMMAND, DEFAULT_PATH)


def test_unit_contract() -> None:
    unit = settings(SHIPPED.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/usr/local/sbin/nfguard run --config /etc/nfguard/nfguard.toml"]
    assert unit["ExecReload"] == [
        "/usr/local/sbin/nfguard reload --config /etc/nfguard/nfguard.toml"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["WatchdogSec"]
    assert unit["CapabilityBoundingSet"] == [" ".join(service.CAPABILITIES)]
    assert "AmbientCapabilities" not in unit
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/var/log/nfguard /run/nfguard"]
    # After the services that load a whole ruleset at boot (nftables.service flushes it),
    # still before the network: none of them orders itself after the network.
    after = unit["After"][0].split()
    for loader in ("nftables.service", "firewalld.service", "netfilter-persistent.service"):
        assert loader in after
    assert "network-pre.target" in unit["Before"][0].split()
    assert not {"docker.service", "network.target", "network-online.target"} & set(after), \
        "ordered before network-pre.target: after any of these would be a cycle"
    # The default audit log and control socket are inside the writable paths.
    config = Config()
    assert config.audit.path.startswith("/var/log/nfguard/")
    assert config.control.socket.startswith("/run/nfguard/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (./bootstrap.sh test installs it)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that the commands exist: render for the nfguard that runs these tests.
    unit = tmp_path / service.UNIT_NAME
    unit.write_text(service.render_unit(service.this_command(), DEFAULT_PATH))
    # Its Documentation= man pages are installed by the Debian package only.
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    # The same template with the shipped command differs only in the command.
    shipped = SHIPPED.read_text().replace(service.BOOTSTRAP_COMMAND, service.this_command())
    assert shipped == unit.read_text()


def test_this_command_runs_nfguard() -> None:
    command = service.this_command().split()
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "status" in result.stdout and "reload" in result.stdout


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    config = tmp_path / "nfguard.toml"
    config.write_text('[engine]\npolicy_dir = "rules"\n')
    return config


def test_install_systemd_writes_the_unit(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    units = tmp_path / "units"
    assert cli.main(["install", "--systemd", "--unit-dir", str(units),
                     "--config", str(config)]) == 0
    written = (units / "nfguard.service").read_text()
    assert written == service.render_unit(service.this_command(), str(config))
    assert re.search(rf"^ExecStart=.* run --config {re.escape(str(config))}$", written, re.M)
    assert (units / "nfguard.service").stat().st_mode & 0o777 == 0o644
    assert f"installed {units / 'nfguard.service'}" in capsys.readouterr().out


def test_install_systemd_dry_run_prints(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert cli.main(["install", "--systemd", "--dry-run", "--config", str(config)]) == 0
    assert capsys.readouterr().out == service.render_unit(service.this_command(), str(config))


def test_install_systemd_refuses_a_broken_config(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "nfguard.toml"
    config.write_text('[engine]\nmode = "loud"\n')
    units = tmp_path / "units"
    assert cli.main(["install", "--systemd", "--unit-dir", str(units),
                     "--config", str(config)]) == 1
    assert f"{config}:2" in capsys.readouterr().err
    assert not units.exists()


def test_unit_command_quotes_odd_paths() -> None:
    unit = service.render_unit(sys.executable + " -m nfguard", "/etc/nf guard/x.toml")
    assert "--config '/etc/nf guard/x.toml'" in unit
