"""The Debian package: `./bootstrap.sh deb` builds it (lintian passing), its contents are what
the host needs, and its whole life runs under systemd on a stock kernel (vagrant/vm-test
--deb: install, start, a decision, upgrade over an edited policy, remove, purge).

NFGUARD_DEB=path/to.deb tests a package built before; NFGUARD_DEB_BUILD=1 builds one
first. Neither set: skipped (the default test run does not build the package).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nfguard import service
from tests.vm.test_vm import RUNNER, runner, show, skip_or_fail

ROOT = RUNNER.parent.parent

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def deb() -> Path:
    given = os.environ.get("NFGUARD_DEB")
    if given:
        return Path(given).resolve()
    if os.environ.get("NFGUARD_DEB_BUILD") != "1":
        pytest.skip("the package is tested on request (building it takes two minutes, its "
                    "VM run six): NFGUARD_DEB=dist/nfguard_*.deb, or NFGUARD_DEB_BUILD=1 to "
                    "build it here")
    if os.geteuid() != 0:
        skip_or_fail("./bootstrap.sh deb needs root (it installs the build dependencies)")
    result = subprocess.run([str(ROOT / "bootstrap.sh"), "deb"], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    built = re.findall(r"^bootstrap: built (\S+\.deb) ", result.stderr, re.M)
    assert len(built) == 1, result.stderr
    return Path(built[0])


def dpkg_deb(deb: Path, *args: str) -> str:
    return subprocess.run(["dpkg-deb", *args, str(deb)], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_contents(deb: Path, tmp_path: Path) -> None:
    listing = dpkg_deb(deb, "--contents")
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    links = dict(re.findall(r"\.(\S+) -> (\S+)$", listing, re.M))
    assert links["/usr/sbin/nfguard"] == "../lib/nfguard/bin/nfguard"
    for path in ("/usr/lib/nfguard/bin/nfguard", "/lib/systemd/system/nfguard.service",
                 "/etc/nfguard/nfguard.toml", "/etc/nfguard/rules/base.toml",
                 "/etc/logrotate.d/nfguard", "/usr/share/man/man8/nfguard.8.gz",
                 "/usr/share/man/man5/nfguard.toml.5.gz", "/usr/share/doc/nfguard/copyright",
                 "/usr/share/bash-completion/completions/nfguard",
                 "/usr/lib/nfguard/lib/python3.11/site-packages/nfguard/data/rules/base.toml"):
        assert path in paths, path
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in paths if p.startswith(("/opt", "/usr/local"))]

    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True, timeout=120)
    unit = (tmp_path / "lib/systemd/system/nfguard.service").read_text()
    assert unit == service.render_unit("/usr/sbin/nfguard")
    assert (tmp_path / "etc/nfguard/nfguard.toml").read_text() == \
        (ROOT / "nfguard/data/nfguard.toml").read_text()
    logrotate = (tmp_path / "etc/logrotate.d/nfguard").read_text()
    assert "/var/log/nfguard/audit.jsonl" in logrotate
    # No trace of the build machine's paths: the virtualenv works only where it is installed.
    leaked = subprocess.run(["grep", "-rl", "--binary-files=without-match", "nfguard-deb\\.",
                             str(tmp_path / "usr/lib/nfguard")], capture_output=True, text=True)
    assert leaked.stdout == ""

    control = dpkg_deb(deb, "--info")
    depends = re.search(r"^ Depends: (.*)$", control, re.M)
    assert depends, control
    for needed in ("libnetfilter-queue1", "libnftables1", "nftables", "iptables",
                   "python3 (>= 3.11)", "python3 (<< 3.12)"):
        assert needed in depends[1], needed
    names = [re.split(r"[ (]", entry.strip())[0] for entry in depends[1].split(",")]
    assert not [name for name in names if name.endswith("-dev") or name in ("gcc", "cc")]


def test_conffiles(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "conffiles").read_text().split() == [
        "/etc/logrotate.d/nfguard", "/etc/nfguard/nfguard.toml", "/etc/nfguard/rules/base.toml"]


def test_life_under_systemd_on_a_stock_kernel(deb: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = runner().missing_prerequisites(systemd=True)
    if missing:
        skip_or_fail("the VM test needs " + "; ".join(missing))
    result = subprocess.run([sys.executable, str(RUNNER), "--deb", str(deb), "--timeout", "1500"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1600)
    out = result.stdout + result.stderr
    checks = re.findall(r"^vm-test: (ok|FAILED): (.*)$", out, re.M)
    assert [name for state, name in checks if state == "FAILED"] == [], out
    names = " ".join(name for _, name in checks)
    for step in ("dpkg --install", "enabled but not started", "--version", "conffiles",
                 "man pages", "systemctl start", "native nft queue", "a decision in the audit",
                 "upgrade with an edited policy", "the edit is kept", "restarted",
                 "upgraded engine decides", "apt-get remove", "no ruleset behind",
                 "remove keeps config", "purge removes config and logs"):
        assert step in names, f"{step!r} was not checked:\n{out}"
    assert re.search(r"^vm-test: Debian package checks: 0 failed, after \d+ s$", out, re.M), out
    assert result.returncode == 0, out
    with capsys.disabled():
        show([line for line in out.splitlines() if line.startswith("vm-test: ")])
