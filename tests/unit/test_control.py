"""The control socket: a real Unix socket served from a select loop, as the daemon does."""

from __future__ import annotations

import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfguard import control
from nfguard.control import ControlError, ControlServer, Reply, request


class Loop:
    """The daemon's loop in miniature: a selector whose keys carry the callable to run."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        server.register(self.selector)
        self.calls: list[Any] = []  # run in the loop's thread
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.02):
                key.data()
            while self.calls:
                self.calls.pop(0)()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.server.close()
        self.selector.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Loop, list[Reply]]]:
    waiting: list[Reply] = []

    def handler(req: dict[str, Any], reply: Reply) -> dict[str, Any] | None:
        if req["command"] == "later":
            waiting.append(reply)
            return None
        if req["command"] == "boom":
            raise RuntimeError("broken handler")
        return {"ok": True, "echo": req["command"]}

    loop = Loop(ControlServer(str(tmp_path / "run" / "nfguard.sock"), handler))
    try:
        yield loop, waiting
    finally:
        loop.stop()


def test_request_and_answer(served: tuple[Loop, list[Reply]]) -> None:
    loop, _ = served
    assert request(loop.server.path, "status") == {"ok": True, "echo": "status"}
    # One request per connection; the server keeps serving new ones.
    assert request(loop.server.path, "again") == {"ok": True, "echo": "again"}


def test_socket_is_private(served: tuple[Loop, list[Reply]]) -> None:
    loop, _ = served
    mode = os.stat(loop.server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(loop.server.path)).st_mode) == 0o700


def test_answer_can_come_later(served: tuple[Loop, list[Reply]]) -> None:
    loop, waiting = served
    answers: list[dict[str, Any]] = []
    client = threading.Thread(target=lambda: answers.append(request(loop.server.path, "later")))
    client.start()
    deadline = time.monotonic() + 5
    while not waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiting and not answers, "the client waits for the deferred answer"
    loop.calls.append(lambda: waiting[0].send({"ok": False, "error": "x.toml:3: bad"}))
    client.join(timeout=5)
    assert answers == [{"ok": False, "error": "x.toml:3: bad"}]


def test_bad_requests_get_an_error_not_a_crash(served: tuple[Loop, list[Reply]]) -> None:
    loop, _ = served
    for payload in (b"not json\n", b"[1, 2]\n", b'{"cmd": "status"}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(loop.server.path)
            sock.sendall(payload)
            answer = sock.recv(4096)
        assert b'"ok":false' in answer and b"bad request" in answer
    assert request(loop.server.path, "boom") == {"ok": False,
                                                 "error": "internal error: broken handler"}
    assert request(loop.server.path, "status")["ok"] is True


def test_silent_clients_are_dropped(served: tuple[Loop, list[Reply]]) -> None:
    loop, _ = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(loop.server.path)
        sock.sendall(b'{"command": ')  # and nothing more
        time.sleep(0.1)
        loop.calls.append(lambda: loop.server.expire(time.monotonic() + control.IDLE_TIMEOUT + 1))
        assert sock.recv(4096) == b"", "closed without an answer"
    assert request(loop.server.path, "status")["ok"] is True


def test_no_daemon(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="nfguard is not running"):
        request(str(tmp_path / "nothing.sock"), "status")


def test_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "nfguard.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a daemon that died
    server = ControlServer(path, lambda req, reply: {"ok": True})
    try:
        with pytest.raises(OSError, match="another nfguard answers"):
            ControlServer(path, lambda req, reply: {"ok": True})
    finally:
        server.close()
    assert not os.path.exists(path), "close removes the socket"
    Path(path).write_text("not a socket")
    with pytest.raises(OSError, match="is not a socket"):
        ControlServer(path, lambda req, reply: {"ok": True})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_other_users_are_refused(served: tuple[Loop, list[Reply]]) -> None:
    loop, _ = served
    os.chmod(loop.server.path, 0o666)  # even if the mode were wrong
    os.chmod(os.path.dirname(loop.server.path), 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                answer = repr(request(loop.server.path, "status", timeout=5))
            except ControlError as exc:
                answer = f"refused: {exc}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    assert answer.startswith("refused"), answer
