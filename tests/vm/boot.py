"""The VM test's one boot, started as soon as the session knows it will run, so that the
guest's suite (about 18 minutes under TCG) runs beside the host's tests instead of after
them; the test waits for what the guest reported.

The guest uses about one core of two under TCG, so the host's tests still have the other.
NFGUARD_VM_SERIAL=1 boots it only when its test comes, after the rest of the suite.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "vagrant" / "vm-test"
TEST_FILE = Path(__file__).resolve().with_name("test_vm.py")  # the tests that read it
# About 15 minutes on a quiet machine; twice that and more where other work shares it.
GUEST_TIMEOUT = 2700
WAIT_TIMEOUT = GUEST_TIMEOUT + 100


class Boot:
    """`vagrant/vm-test --systemd`, its output kept in a file. The runner kills its guest
    when it is stopped (SIGTERM, or Ctrl-C in the terminal, which reaches it too)."""

    def __init__(self) -> None:
        # kept open while the guest runs; read and closed by output()
        self._output = tempfile.TemporaryFile(mode="w+", prefix="nfguard-vm-")  # noqa: SIM115
        self.started = time.monotonic()
        self._report: str | None = None
        self._proc = subprocess.Popen(
            [sys.executable, str(RUNNER), "--systemd", "--timeout", str(GUEST_TIMEOUT)],
            cwd=RUNNER.parent.parent, stdin=subprocess.DEVNULL, stdout=self._output,
            stderr=subprocess.STDOUT, text=True, preexec_fn=_end_with_parent)

    def output(self) -> str:
        """All the runner printed, once it has exited (killed after WAIT_TIMEOUT s)."""
        if self._report is not None:
            return self._report
        try:
            self._proc.wait(timeout=max(1, WAIT_TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
        with self._output:
            self._output.seek(0)
            self._report = self._output.read()
        return self._report

    def stop(self) -> None:
        """Stop the runner and with it its guest (a session cut short must not leave qemu)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _end_with_parent() -> None:
    """In the runner: SIGTERM when pytest ends, however it ends (the runner then stops
    its guest), so no guest outlives a killed session."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
_boot: Boot | None = None


def start() -> None:
    """Boot now, unless NFGUARD_VM_SERIAL asks to wait for the test, or it is booted."""
    global _boot
    if _boot is None and not os.environ.get("NFGUARD_VM_SERIAL"):
        _boot = Boot()


def output() -> str:
    """The boot's report: the one started early, else one started now."""
    global _boot
    if _boot is None:
        _boot = Boot()
    return _boot.output()


def stop() -> None:
    if _boot is not None:
        _boot.stop()
