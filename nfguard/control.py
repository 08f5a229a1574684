"""The control socket: `nfguard status` and `nfguard reload` talking to the running daemon.

A Unix stream socket, mode 0600: only root, or the daemon's own user, may talk to it. With
`[control] group`, 0660 root:group: that group's members may connect too, but they are
served only the requests the daemon opens to them (`open_commands`: `nfguard exec`'s),
and each handler sees who asked (`Reply.peer`, the kernel's SO_PEERCRED of the
connection). One request per connection: a JSON object on one line
(`{"command": "status"}`), answered by one JSON object on one line. The server never
blocks the daemon: it lives in the daemon's select loop, reads what is there, and answers
when the answer is ready (a reload answers after the new policy was built, or rejected).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20  # bytes of one request line (an exec request carries its policy)
_CHUNK = 65536
MAX_CLIENTS = 16  # connections served at once; more wait in the listen backlog
MAX_PER_USER = 4  # of them from one user who is not root (a group member's cannot fill it)
IDLE_TIMEOUT = 10.0  # seconds a connection may take to send its request


class ControlError(Exception):
    """The daemon could not be reached, or answered with nonsense."""


class Peer(NamedTuple):
    """Who is on the other end of a connection, as the kernel saw it connect."""

    pid: int
    uid: int
    gid: int
    privileged: bool  # root or the daemon's own user; else a member of [control] group


class Reply:
    """Where the answer to one request goes; `send` may be called later (a reload)."""

    def __init__(self, server: ControlServer, conn: socket.socket, peer: Peer) -> None:
        self._server = server
        self._conn = conn
        self.peer = peer

    def send(self, answer: dict[str, Any]) -> None:
        data = json.dumps(answer, separators=(",", ":"), default=str).encode() + b"\n"
        try:
            # Answers are a few KiB: far below the socket buffer, so this does not wait
            # unless the peer stopped reading, and then only for the timeout.
            self._conn.settimeout(1.0)
            self._conn.sendall(data)
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        finally:
            self._server.drop(self._conn)


# A request handler answers at once (a dict) or later through the Reply (None).
Handler = Callable[[dict[str, Any], Reply], "dict[str, Any] | None"]


class ControlServer:
    def __init__(self, path: str, handler: Handler, group: int | None = None,
                 open_commands: Collection[str] = ()) -> None:
        """`group`: the gid whose members may connect (None: root only); they are served
        `open_commands` only."""
        self.path = path
        self.handler = handler
        self.group = group
        self.open_commands = frozenset(open_commands)
        self._peers: dict[socket.socket, Peer] = {}
        self._reading: dict[socket.socket, tuple[bytearray, float]] = {}
        self._answering: set[socket.socket] = set()  # request read, answer not sent yet
        self._selector: selectors.BaseSelector | None = None
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        _remove_stale(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is created 0600: no window with wider bits
        try:
            self._listener.bind(path)
        finally:
            os.umask(old_umask)
        if group is not None:
            self._open_to(group, directory)
        self._listener.listen(MAX_CLIENTS)
        self._listener.setblocking(False)

    def _open_to(self, group: int, directory: str) -> None:
        """The group's members must reach the socket: through the directory (traverse
        only, no listing), then the socket itself, for them and root alone. Giving the
        socket to a group takes CAP_CHOWN, or the daemon being in that group (systemd:
        SupplementaryGroups=); without either the socket stays root's alone."""
        try:
            os.chown(self.path, os.geteuid(), group)
        except PermissionError:
            log.error("control socket: cannot give %s to group %d (the daemon needs to be "
                      "in that group, or CAP_CHOWN): it stays root's only", self.path, group)
            self.group = None
            return
        os.chmod(self.path, 0o660)
        if directory:
            os.chmod(directory, stat.S_IMODE(os.stat(directory).st_mode) | 0o011)

    def register(self, selector: selectors.BaseSelector) -> None:
        """Serve from `selector`; each key's data is the callable to run when it is ready."""
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        while len(self._reading) + len(self._answering) < MAX_CLIENTS:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("control socket: accept failed: %s", exc)
                return
            peer = _peer(conn, self.group)
            if peer is None:
                conn.close()
                continue
            if not peer.privileged and sum(
                    1 for p in self._peers.values() if p.uid == peer.uid) >= MAX_PER_USER:
                log.warning("control socket: uid %d has %d connections open; refused pid %d",
                            peer.uid, MAX_PER_USER, peer.pid)
                conn.close()
                continue
            self._peers[conn] = peer
            conn.setblocking(False)
            self._reading[conn] = (bytearray(), time.monotonic())
            assert self._selector is not None
            self._selector.register(conn, selectors.EVENT_READ, lambda c=conn: self._read(c))

    def _read(self, conn: socket.socket) -> None:
        buffer, _ = self._reading[conn]
        try:
            data = conn.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buffer += data
        if b"\n" not in buffer and data and len(buffer) < MAX_REQUEST:
            return  # more to come
        assert self._selector is not None
        self._selector.unregister(conn)  # one request per connection
        del self._reading[conn]
        self._answering.add(conn)
        peer = self._peers[conn]
        reply = Reply(self, conn, peer)
        try:
            if b"\n" not in buffer and len(buffer) >= MAX_REQUEST:
                raise ValueError(f"longer than {MAX_REQUEST} bytes")
            request = json.loads(bytes(buffer).split(b"\n", 1)[0])
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("want a JSON object with a \"command\"")
        except ValueError as exc:
            reply.send({"ok": False, "error": f"bad request: {exc}"})
            return
        if not peer.privileged and request["command"] not in self.open_commands:
            log.warning("control socket: refused %r to pid %d (uid %d): root only",
                        request["command"], peer.pid, peer.uid)
            reply.send({"ok": False, "error": f"{request['command']!r} is for root only"})
            return
        try:
            answer = self.handler(request, reply)
        except Exception as exc:
            log.exception("control request %r failed", request.get("command"))
            answer = {"ok": False, "error": f"internal error: {exc}"}
        if answer is not None:
            reply.send(answer)

    def expire(self, now: float | None = None) -> None:
        """Close connections that sent no complete request within IDLE_TIMEOUT."""
        now = time.monotonic() if now is None else now
        for conn, (_, since) in list(self._reading.items()):
            if now - since > IDLE_TIMEOUT:
                self.drop(conn)

    def drop(self, conn: socket.socket) -> None:
        if self._reading.pop(conn, None) is not None and self._selector is not None:
            self._selector.unregister(conn)
        self._answering.discard(conn)
        self._peers.pop(conn, None)
        conn.close()

    def close(self) -> None:
        for conn in [*self._reading, *self._answering]:
            self.drop(conn)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def request(path: str, command: str, timeout: float = 60.0,
            **fields: Any) -> dict[str, Any]:
    """Send one command (with `fields`) to the daemon at `path`; its answer (a dict with
    "ok")."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"nfguard is not running (no daemon at {path}: "
                               f"{exc.strerror})") from exc
        except PermissionError as exc:
            raise ControlError(f"cannot talk to the daemon at {path}: {exc.strerror} "
                               "(run as root)") from exc
        sock.sendall(json.dumps({**fields, "command": command}).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError as exc:
        raise ControlError(f"the daemon at {path} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise ControlError(f"talking to the daemon at {path} failed: {exc}") from exc
    finally:
        sock.close()
    try:
        answer = json.loads(bytes(data))
    except ValueError as exc:
        raise ControlError(f"the daemon at {path} sent no answer (it may have stopped)") from exc
    if not isinstance(answer, dict):
        raise ControlError(f"the daemon at {path} sent an unexpected answer: {answer!r}")
    return answer


def _peer(conn: socket.socket, group: int | None) -> Peer | None:
    """Who connected, if they may: root and the daemon's own user; with a group, its
    members (primary or supplementary, as their process has it now). The socket's mode
    says the same; this makes sure."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", creds)
    if uid in (0, os.geteuid()):
        return Peer(pid, uid, gid, True)
    if group is not None and (gid == group or group in _groups(pid)):
        return Peer(pid, uid, gid, False)
    log.warning("control socket: refused pid %d (uid %d)", pid, uid)
    return None


def _groups(pid: int) -> tuple[int, ...]:
    """The supplementary groups of a process (none when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:] if g.isdigit())
    except OSError:
        pass
    return ()


def _remove_stale(path: str) -> None:
    """Unlink a socket left by a daemon that died; refuse if one still answers there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another nfguard answers on {path}")
