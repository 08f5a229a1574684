"""Who the command runs as, and its status as a shell reports it."""

from __future__ import annotations

import os
import signal

import pytest

from nfguard.exec import command
from nfguard.exec.command import caller, exit_status


def test_exit_status_is_the_code_or_128_plus_the_signal() -> None:
    assert exit_status(0) == 0
    assert exit_status(7 << 8) == 7
    assert exit_status(signal.SIGKILL) == 128 + 9


def test_caller_is_the_sudo_user_unless_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command.os, "geteuid", lambda: 0)
    monkeypatch.setattr(command.os, "getgrouplist", lambda name, gid: [gid, 27])
    uid = os.getuid() or 65534
    environ = {"SUDO_UID": str(uid), "SUDO_GID": "100"}
    who = caller(environ, as_root=False)
    assert who is not None and who.uid == uid and who.gid == 100 and 100 in who.groups
    assert caller(environ, as_root=True) is None
    assert caller({}, as_root=False) is None
    assert caller({"SUDO_UID": "0", "SUDO_GID": "0"}, as_root=False) is None
    assert caller({"SUDO_UID": "x", "SUDO_GID": "1"}, as_root=False) is None


def test_not_root_stays_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command.os, "geteuid", lambda: 1000)
    assert caller({"SUDO_UID": "1000", "SUDO_GID": "1000"}, as_root=False) is None
