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
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import pytest

from tests.vm import boot

RUNNER = boot.RUNNER
VAGRANT_DIR = RUNNER.parent

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


@pytest.fixture(scope="module")
def vm_run() -> str:
    """One boot for both tests: systemd as init, the e2e subset, then the unit checks
    (booted when the session began, unless NFGUARD_VM_SERIAL says now: see boot.py)."""
    missing = runner().missing_prerequisites(systemd=True)
    if missing:
        skip_or_fail("the VM test needs " + "; ".join(missing))
    out = boot.output()
    assert re.search(r"^vm-test: guest \S+ exited \d+ after \d+ s$", out, re.M), out
    return out


def show(lines: list[str]) -> None:
    """What the guest proved, in the CI log even when all is well."""
    print()
    for line in lines:
        print(f"    {line}")


def test_e2e_suite_in_a_stock_kernel_uses_the_native_queue(
    vm_run: str, capsys: pytest.CaptureFixture[str],
) -> None:
    out = vm_run.partition("vm-test: systemd unit checks\n")[0]
    guest_kernel = re.search(r"^vm-test: guest kernel (\S+),", out, re.M)
    assert guest_kernel, out
    assert guest_kernel[1] != os.uname().release, "the guest must boot its own kernel"
    assert "nfguard install --dry-run: # queue path: native nft queue" in out, out
    assert re.search(r"^vm-test: guest suite exited 0 after \d+ s$", out, re.M), out
    engines = re.search(r"^vm-test: engines started in the guest: (\d+) on the native nft "
                        r"queue path, (\d+) on the xt NFQUEUE fallback$", out, re.M)
    assert engines, out
    assert int(engines[1]) > 0 and int(engines[2]) == 0, engines[0]
    summary = re.search(r"^=+ (\d+) passed in [^=]+=+$", out, re.M)
    assert summary and int(summary[1]) > 0, out
    assert not re.search(r"^(FAILED|ERROR) ", out, re.M), out
    with capsys.disabled():
        show([line for line in out.splitlines()
              if line.startswith("vm-test: ") or " PASSED" in line])


def test_unit_under_systemd_in_a_stock_kernel(
    vm_run: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """systemd as init in the guest: the shipped unit starts (READY=1), reloads, rejects a
    broken policy and keeps running, judges an `nfguard exec` command as a transient
    client, is restarted by the watchdog when hung, and stops."""
    assert re.search(r"^vm-test: guest kernel \S+, \d+ CPUs, init systemd, systemd \d+",
                     vm_run, re.M), vm_run
    _, marker, out = vm_run.partition("vm-test: systemd unit checks\n")
    assert marker, vm_run
    checks = re.findall(r"^vm-test: (ok|FAILED): (.*)$", out, re.M)
    assert [name for state, name in checks if state == "FAILED"] == [], vm_run
    names = " ".join(name for _, name in checks)
    for step in ("is systemd/nfguard.service", "systemctl start", "native nft queue",
                 "record socket owners", "systemctl reload", "broken policy",
                 "transient client",
                 "watchdog and restarted", "systemctl stop"):
        assert step in names, f"{step!r} was not checked:\n{vm_run}"
    assert re.search(r"^vm-test: systemd checks: 0 failed, after \d+ s$", out, re.M), vm_run
    with capsys.disabled():
        show([line for line in out.splitlines() if line.startswith("vm-test: ")])


def test_sandbox_dropin_binds_only_what_the_unit_hides() -> None:
    dropin = runner().sandbox_dropin
    assert dropin(["/work/project", "/opt/venv"]) == []
    assert dropin(["/var/tmp/ci.1"]) == [
        ("BindReadOnlyPaths=/var/tmp/ci.1", "PrivateTmp=yes hides /var/tmp")]
    settings = [setting for setting, _ in dropin(
        ["/root/.pyenv/versions/3.11.7", "/tmp/ci.2", "/home/me/nfguard"])]
    assert settings == ["ProtectHome=tmpfs", "BindReadOnlyPaths=/root/.pyenv/versions/3.11.7",
                        "BindReadOnlyPaths=/tmp/ci.2", "BindReadOnlyPaths=/home/me/nfguard"]
    assert dropin(["/tmpfoo/x", "/rooted"]) == []


def test_runtime_dirs_are_the_project_venv_and_interpreter_outside_usr() -> None:
    module = runner()
    root = str(module.ROOT)
    assert module.runtime_dirs(f"{root}/.venv", "/usr") == [root]
    assert module.runtime_dirs("/opt/venv", "/opt/python") == sorted(
        [root, "/opt/venv", "/opt/python"])


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


def test_a_guest_that_dies_before_its_runner_reports_shows_its_console(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """vng's stdout is the guest command's output, passed on; its stderr the console, kept
    aside and shown by the runner only when the guest's report is missing."""
    module = runner()
    script = ("echo 'vm-test: guest kernel 6.1'; echo 'Kernel panic - not syncing' >&2; "
              "{report}exit 1")
    for report, reported in (("", False), *((f"echo '{line} 1 after 9 s'; ", True)
                                            for line in module.REPORTED)):
        proc = subprocess.Popen(["sh", "-c", script.format(report=report)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert module.relay(proc) == (reported, ["Kernel panic - not syncing\n"])
        proc.wait()
        assert "Kernel panic" not in capsys.readouterr().out


def test_prerequisites_say_which_package_brings_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """A fresh minimal Debian has neither `file` nor systemd as init: the runner says so
    before it boots anything, naming the packages (which bootstrap.sh installs)."""
    module = runner()
    found = module.tool
    monkeypatch.setattr(module, "tool", lambda name: None if name == "file" else found(name))
    monkeypatch.setattr(module, "systemd_init", lambda: False)
    without_systemd = " ".join(module.missing_prerequisites())
    missing = " ".join(module.missing_prerequisites(systemd=True))
    assert "(apt: file)" in without_systemd and "systemd-sysv" not in without_systemd
    assert "(apt: file)" in missing and "(apt: systemd-sysv)" in missing, missing
    (tmp_path / "systemd").touch()
    (tmp_path / "init").symlink_to(tmp_path / "systemd")
    (tmp_path / "sysvinit").touch()
    assert runner().systemd_init(tmp_path / "init")
    assert not runner().systemd_init(tmp_path / "sysvinit")
    assert not runner().systemd_init(tmp_path / "nothing")
