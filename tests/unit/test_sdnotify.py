"""sd_notify: the datagrams systemd would receive, on a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from nfguard.sdnotify import Notifier


def listen(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def lines(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_path_socket_gets_ready_reloading_stopping_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with listen(str(path)) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        assert notifier.ready("enforce, 3 rules")
        assert lines(sock) == ["READY=1", "STATUS=enforce, 3 rules", f"MAINPID={os.getpid()}"]
        assert notifier.reloading()
        reloading = lines(sock)
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=") and reloading[1][15:].isdigit()
        notifier.watchdog()
        assert lines(sock) == ["WATCHDOG=1"]
        notifier.status("reloading")
        assert lines(sock) == ["STATUS=reloading"]
        notifier.stopping()
        assert lines(sock) == ["STOPPING=1"]
        notifier.close()
        assert not notifier.enabled


def test_abstract_socket() -> None:
    name = f"nfguard-test-{uuid.uuid4().hex}"
    with listen(b"\0" + name.encode()) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready("ok")
        assert lines(sock)[0] == "READY=1"


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_without_a_usable_socket_every_call_is_a_no_op(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.ready("x") is False


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str],
                                                    interval: float | None) -> None:
    assert Notifier(env).watchdog_interval == interval
