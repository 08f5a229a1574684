"""Boots the VM test's guest as soon as the session's tests are known (see boot.py)."""

from __future__ import annotations

import pytest

from tests.vm import boot

# The tests that read the one boot's report.
BOOTED = ("test_e2e_suite_in_a_stock_kernel_uses_the_native_queue",
          "test_unit_under_systemd_in_a_stock_kernel")


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.path == boot.TEST_FILE and item.name in BOOTED for item in session.items):
        from tests.vm.test_vm import runner
        if not runner().missing_prerequisites(systemd=True):  # else the test says why
            boot.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    boot.stop()
