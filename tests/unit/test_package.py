"""What the installed package carries: `nfguard --version` from its metadata, and the default
config and policies read through importlib.resources (no source checkout needed)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from nfguard import cli, package, service
from nfguard.config import parse_config
from nfguard.policy.load import load_policy_dir

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "nfguard" / "data"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_comes_from_the_installed_distribution(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"nfguard {metadata.version('nfguard')}\n"
    assert package.version() == pyproject()["project"]["version"]


def test_the_debian_package_has_the_same_upstream_version() -> None:
    first = (REPO / "debian" / "changelog").read_text(encoding="utf-8").partition("\n")[0]
    found = re.match(r"^nfguard \(([^)-]+)(-[^)]+)?\) \w+; urgency=\w+$", first)
    assert found, first
    assert found[1] == pyproject()["project"]["version"]


def test_version_without_metadata_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert package.version() == package.NOT_INSTALLED


def test_version_as_a_command() -> None:
    result = subprocess.run([sys.executable, "-m", "nfguard", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"nfguard {package.version()}\n")


def test_checkout_paths_are_links_to_the_package_data() -> None:
    """rules/ and etc/nfguard/nfguard.toml (what the README and ./bootstrap.sh name) are the
    very files the package ships, not copies that could drift apart."""
    assert (REPO / "rules").resolve() == DATA / "rules"
    assert (REPO / "etc" / "nfguard" / "nfguard.toml").resolve() == DATA / "nfguard.toml"


def test_policies_and_config_are_read_from_the_package() -> None:
    assert package.policies() == {path.name: path.read_text(encoding="utf-8")
                                  for path in sorted(DATA.glob("rules/*.toml"))}
    assert package.BASE_POLICY in package.policies()
    shipped = (DATA / "nfguard.toml").read_text(encoding="utf-8")
    assert package.default_config("/etc/nfguard/rules") == shipped


def test_every_data_file_is_declared_as_package_data() -> None:
    globs = pyproject()["tool"]["setuptools"]["package-data"]["nfguard"]
    files = [str(path.relative_to(REPO / "nfguard")) for path in DATA.rglob("*")
             if path.is_file()]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, glob) for glob in globs)] == []


def test_data_is_read_where_the_package_is_a_zip(tmp_path: Path) -> None:
    """importlib.resources, not paths beside the source: the package imported from a zip
    archive (no directory tree at all) still finds its config and policies."""
    archive = tmp_path / "nfguard.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in (REPO / "nfguard").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zipped.write(path, path.relative_to(REPO))
    probe = ("import nfguard.package as p; print(p.__file__); print(sorted(p.policies())); "
             "print(p.default_config('/x').count('policy_dir = \"/x\"'))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                            env={"PYTHONPATH": str(archive)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    where, names, count = result.stdout.splitlines()
    assert where.startswith(str(archive))
    assert names == str(sorted(package.policies())) and count == "1"


def test_default_config_written_elsewhere_reads_its_rules_beside_it() -> None:
    odd = '/srv/odd "dir"/rules'
    config = parse_config(package.default_config(odd), "/srv/x.toml")
    assert config.engine.policy_dir == odd
    assert config.engine.mode == "audit"  # what a new host starts in


def test_install_defaults_lays_out_a_host_and_never_overwrites(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "nfguard.toml"
    rules = tmp_path / "etc" / "rules"
    assert package.install_defaults(config) == [config, rules / "base.toml"]
    assert load_policy_dir(str(rules)).rule_count > 0
    assert (config.stat().st_mode & 0o777, (rules / "base.toml").stat().st_mode & 0o777) == (
        0o644, 0o644)
    config.write_text(config.read_text() + "\n# edited\n")
    (rules / "base.toml").write_text("# emptied by the operator\n")
    assert package.install_defaults(config) == []
    assert config.read_text().endswith("# edited\n")
    assert (rules / "base.toml").read_text() == "# emptied by the operator\n"


def test_install_defaults_fills_only_an_empty_policy_dir(tmp_path: Path) -> None:
    config = tmp_path / "nfguard.toml"
    config.write_text('[engine]\npolicy_dir = "mine"\n')
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "10-own.toml").write_text("")
    assert package.install_defaults(config) == []
    (tmp_path / "mine" / "10-own.toml").unlink()
    assert package.install_defaults(config) == [tmp_path / "mine" / "base.toml"]


def test_install_systemd_on_a_bare_host_writes_config_policy_and_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`pip install nfguard` then `nfguard install --systemd`: nothing else on the host."""
    config, units = tmp_path / "nfguard" / "nfguard.toml", tmp_path / "units"
    assert cli.main(["install", "--systemd", "--unit-dir", str(units),
                     "--config", str(config)]) == 0
    out = capsys.readouterr().out
    for path in (config, tmp_path / "nfguard" / "rules" / "base.toml",
                 units / service.UNIT_NAME):
        assert path.exists() and str(path) in out
    assert cli.main(["check", "--config", str(config)]) == 0
    assert (units / service.UNIT_NAME).read_text() == service.render_unit(
        service.this_command(), str(config))

