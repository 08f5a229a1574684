"""Running the command: in its cgroup, as the calling user, with its status passed back.

The child joins the cgroup and drops to the caller's uid, gid and groups (under sudo:
SUDO_UID / SUDO_GID, unless `--as-root`) before it execs the command, so nothing it runs
was ever outside the cgroup or root. Environment, working directory and terminal are
inherited as they are. Whether the exec failed (not found: 127, as a shell says) comes
back over a close-on-exec pipe.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import sys
from typing import NamedTuple

from nfguard.exec.cgroup import Cgroup

NOT_FOUND = 127  # the command could not be started
# Signals passed on to the command. SIGINT and SIGQUIT from the terminal reach it
# directly (same process group); passed on only when the terminal did not send them.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
             signal.SIGCONT)
TERMINAL = (signal.SIGINT, signal.SIGQUIT)


class Credentials(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...]


def caller(environ: dict[str, str], as_root: bool) -> Credentials | None:
    """Who the command runs as: the sudo caller when root runs under sudo, else None
    (stay as we are)."""
    if as_root or os.geteuid() != 0:
        return None
    uid, gid = environ.get("SUDO_UID", ""), environ.get("SUDO_GID", "")
    if not uid.isdigit() or not gid.isdigit() or int(uid) == 0:
        return None
    try:
        name = pwd.getpwuid(int(uid)).pw_name
        groups = tuple(os.getgrouplist(name, int(gid)))
    except KeyError:
        groups = (int(gid),)
    return Credentials(int(uid), int(gid), groups)


def exit_status(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


class Child:
    """The command's first process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.status is None:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = exit_status(wait_status)
                os.close(self.pidfd)
        return self.status

    def signal(self, signum: int) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class StartError(OSError):
    """The command could not be executed."""


def spawn(argv: list[str], cgroup: Cgroup, credentials: Credentials | None) -> Child:
    """Fork, join the cgroup, drop privileges, exec; StartError if the exec failed."""
    read_end, write_end = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:  # the child: nothing here may return
        try:
            os.close(read_end)
            cgroup.join()
            for signum in (*FORWARDED, *TERMINAL, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            if credentials is not None:
                os.setgroups(list(credentials.groups))
                os.setgid(credentials.gid)
                os.setuid(credentials.uid)
            os.execvp(argv[0], argv)
        except BaseException as exc:
            errno_ = exc.errno if isinstance(exc, OSError) and exc.errno else 0
            with contextlib.suppress(OSError):
                os.write(write_end, f"{errno_} {exc}".encode())
        os._exit(NOT_FOUND)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        number, _, text = failure.decode(errors="replace").partition(" ")
        raise StartError(int(number or 0), f"{argv[0]}: {text}")
    return Child(pid)


def terminal_signal_direct() -> bool:
    """Whether SIGINT / SIGQUIT from the terminal reach the command without us: we run in
    the terminal's foreground process group (which the child shares)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False
