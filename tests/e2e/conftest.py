"""End-to-end fixtures: a fresh two-namespace lab per test, always torn down."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.lab import Lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.root)


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and the kernel queue")
    for tool in ("ip", "nft", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./bootstrap.sh test installs it)")
    lab = Lab(tmp_path).start()
    try:
        yield lab
    finally:
        lab.close()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lab.tag not in left, f"namespaces left behind: {left}"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """After the whole e2e run: no lab namespace and no engine of this session remains."""
    yield
    if os.geteuid() != 0:
        return
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    prefix = f"nfg{os.getpid() % 100000}x"
    ours = [line for line in namespaces.splitlines() if line.startswith(prefix)]
    assert not ours, f"namespaces left behind: {ours}"
    base = str(tmp_path_factory.getbasetemp())
    engines = subprocess.run(["pgrep", "-f", f"nfguard run --config {base}/"],
                             capture_output=True, text=True).stdout.split()
    assert not engines, f"engines left running: {engines}"
