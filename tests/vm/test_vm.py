"""The VM test: the e2e suite on a stock Debian kernel, where nft's native queue exists.

vagrant/vm-test boots the kernel with virtme-ng on a snapshot of this machine; these tests
run it and read what the guest reported. In CI every prerequisite is installed by
bootstrap.sh, so there a missing one fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
RUNNER = VAGRANT_DIR / "vm-test"

pytestmark = pytest.mark.vm


def runner() -> ModuleType:
    """vagrant/vm-test as a module (a script without the .py suffix)."""
    loader = SourceFileLoader("vm_test", str(RUNNER))
    module = module_from_spec(spec_from_loader("vm_test", loader))  # type: ignore[arg-type]
    loader.exec_module(module)
    return module


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI installs everything through ./bootstrap.sh test")
    pytest.skip(reason)


def test_e2e_suite_in_a_stock_kernel_uses_the_native_queue(
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = runner().missing_prerequisites()
    if missing:
        skip_or_fail("the VM test needs " + "; ".join(missing))
    result = subprocess.run([sys.executable, str(RUNNER), "--timeout", "1200"],
                            cwd=RUNNER.parent.parent, capture_output=True, text=True,
                            timeout=1300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    guest_kernel = re.search(r"^vm-test: guest kernel (\S+),", out, re.M)
    assert guest_kernel, out
    assert guest_kernel[1] != os.uname().release, "the guest must boot its own kernel"
    assert "nfguard install --dry-run: # queue path: native nft queue" in out, out
    engines = re.search(r"^vm-test: engines started in the guest: (\d+) on the native nft "
                        r"queue path, (\d+) on the xt NFQUEUE fallback$", out, re.M)
    assert engines, out
    assert int(engines[1]) > 0 and int(engines[2]) == 0, engines[0]
    summary = re.search(r"^=+ (\d+) passed in [^=]+=+$", out, re.M)
    assert summary and int(summary[1]) > 0, out
    assert not re.search(r"^(FAILED|ERROR) ", out, re.M), out
    with capsys.disabled():  # what the guest proved, in the CI log even when all is well
        print()
        for line in out.splitlines():
            if line.startswith("vm-test: ") or " PASSED" in line:
                print(f"    {line}")


def test_unit_under_systemd_in_a_stock_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    """systemd as init in the guest: the shipped unit starts (READY=1), reloads, rejects a
    broken policy and keeps running, is restarted by the watchdog when hung, and stops."""
    missing = runner().missing_prerequisites(systemd=True)
    if missing:
        skip_or_fail("the systemd VM test needs " + "; ".join(missing))
    result = subprocess.run([sys.executable, str(RUNNER), "--systemd", "--timeout", "900"],
                            cwd=RUNNER.parent.parent, capture_output=True, text=True,
                            timeout=1000)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"^vm-test: guest kernel \S+, init systemd, systemd \d+", out, re.M), out
    checks = re.findall(r"^vm-test: (ok|FAILED): (.*)$", out, re.M)
    assert [name for state, name in checks if state == "FAILED"] == [], out
    names = " ".join(name for _, name in checks)
    for step in ("systemctl start", "native nft queue", "systemctl reload", "broken policy",
                 "watchdog and restarted", "systemctl stop"):
        assert step in names, f"{step!r} was not checked:\n{out}"
    with capsys.disabled():
        print()
        for line in out.splitlines():
            if line.startswith("vm-test: "):
                print(f"    {line}")


def test_vagrantfile_is_valid(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        skip_or_fail("vagrant is not installed (apt: vagrant, vagrant-libvirt)")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"), VAGRANT_CHECKPOINT_DISABLE="1")
    result = subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    if "No usable default provider" in result.stderr:
        # Neither vagrant-libvirt nor VirtualBox here: the common part is still checked.
        result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT_DIR,
                                env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
