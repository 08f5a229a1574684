"""Cleans up after `nfguard exec` however it ends, `kill -9` included.

A forked process of its own session waits on a pipe whose only writer is exec. A clean
exit writes DONE first; end of file without it means exec died: the watchdog kills the
command's processes (with no engine left, they are cut, never freed: until then the
ruleset, with no bypass, drops what they send for the queue), then removes the ruleset
and the cgroup.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

DONE = b"d"


class Watchdog:
    def __init__(self, cleanup: Callable[[], None], keep_fds: tuple[int, ...] = ()) -> None:
        read_end, self._write = os.pipe()
        pid = os.fork()
        if pid == 0:
            _watch(read_end, self._write, cleanup, keep_fds)
        os.close(read_end)
        self.pid = pid

    def release(self) -> None:
        """Exec cleaned up itself: the watchdog exits without touching anything."""
        with contextlib.suppress(OSError):
            os.write(self._write, DONE)
        self._close()

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._write)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _watch(read_end: int, write_end: int, cleanup: Callable[[], None],
           keep_fds: tuple[int, ...]) -> None:
    """The watchdog process; never returns."""
    status = 0
    try:
        os.setsid()  # the terminal's signals are not for it
        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
                       signal.SIGTSTP):
            signal.signal(signum, signal.SIG_IGN)
        os.close(write_end)
        keep = {read_end, 0, 1, 2, *keep_fds}
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        word = b""
        with contextlib.suppress(OSError):
            word = os.read(read_end, 1)
        if word != DONE:
            cleanup()
    except BaseException:
        status = 1
    os._exit(status)
