"""The lab itself: one whose set-up fails half way leaves no namespace behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import lab as lab_module
from tests.e2e.lab import Lab


@pytest.fixture(autouse=True)
def _needs_ip() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip for network namespaces")

REFUSED = "refused by the test"


class Commands:
    """Stands in for lab.run: counts the commands and fails the `fail_at`-th (from 1) as
    a refused command does; runs all the others."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int = 0) -> None:
        self.fail_at = fail_at
        self.count = 0
        self.real = lab_module.run
        monkeypatch.setattr(lab_module, "run", self)

    def __call__(self, *argv: str, **kw: object) -> subprocess.CompletedProcess:
        self.count += 1
        if self.count == self.fail_at:
            raise subprocess.CalledProcessError(2, argv, "", REFUSED)
        return self.real(*argv, **kw)  # type: ignore[arg-type]


def test_a_start_that_fails_at_any_command_leaves_no_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted = Commands(monkeypatch)
    Lab(tmp_path).start().close()
    steps = counted.count - 4  # close: `ip netns pids` and `del` for each namespace
    assert steps > 10, steps  # the namespaces, the link, addresses and routes
    for fail_at in range(1, steps + 1):
        lab = Lab(tmp_path)
        Commands(monkeypatch, fail_at)
        with pytest.raises(subprocess.CalledProcessError) as refused:
            lab.start()
        assert refused.value.stderr == REFUSED  # the test's failure, not another
        assert lab.namespaces_left() == [], f"failed at command {fail_at} of {steps}"


def test_a_container_that_fails_half_way_goes_with_its_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = Lab(tmp_path).start()
    try:
        counted = Commands(monkeypatch)
        lab.add_container()
        steps = counted.count
    finally:
        lab.close()
    for fail_at in range(1, steps + 1):
        lab = Lab(tmp_path).start()
        try:
            Commands(monkeypatch, fail_at)
            with pytest.raises(subprocess.CalledProcessError) as refused:
                lab.add_container()
            assert refused.value.stderr == REFUSED
            assert (lab.container in lab.namespaces_left()) == (fail_at > 1)
        finally:
            lab.close()
        assert lab.namespaces_left() == [], f"failed at command {fail_at} of {steps}"
