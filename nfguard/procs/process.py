"""Reading one process out of /proc, and finding which of a few pids holds a socket inode.

Why these exact files: /proc/PID/exe is the binary the kernel mapped (argv[0] and comm are
whatever the process says they are); /proc/PID/stat field 22 (start time in clock ticks)
tells a reused pid from the process we cached; /proc/PID/fd/N links read `socket:[INODE]`.
Every reader returns None on a vanished process instead of raising: processes exit while
we look at them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nfguard.procs.cgroups import parse_proc_cgroup

DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The /proc/PID/stat fields attribution needs."""

    comm: str
    state: str
    ppid: int
    starttime: int


def parse_stat(data: bytes) -> ProcStat | None:
    """Parse /proc/PID/stat. comm may hold spaces and ')' so split after the last ')'."""
    try:
        open_ = data.index(b"(")
        close = data.rindex(b")")
    except ValueError:
        return None
    comm = data[open_ + 1 : close].decode("utf-8", "replace")
    rest = data[close + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    if len(rest) < 20:
        return None
    try:
        return ProcStat(
            comm=comm,
            state=rest[0].decode("ascii", "replace"),
            ppid=int(rest[1]),
            starttime=int(rest[19]),
        )
    except ValueError:
        return None


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """NUL-separated argv → tuple. A process that rewrote its argv (setproctitle) may have
    put spaces instead of NULs; that is what it shows and we keep it as is."""
    if not data:
        return ()
    if data.endswith(b"\0"):
        data = data[:-1]
    return tuple(arg.decode("utf-8", "surrogateescape") for arg in data.split(b"\0"))


def split_deleted(target: str) -> tuple[str, bool]:
    """`/usr/bin/x (deleted)` → (`/usr/bin/x`, True): the binary was replaced or removed
    while it ran — worth flagging (upgrades do it, so does malware that unlinks itself)."""
    if target.endswith(DELETED_SUFFIX):
        return target[: -len(DELETED_SUFFIX)], True
    return target, False


def parse_socket_link(target: str) -> int | None:
    """`socket:[12345]` → 12345; anything else → None."""
    if target.startswith("socket:[") and target.endswith("]"):
        try:
            return int(target[8:-1])
        except ValueError:
            return None
    return None


def _read(path: str, size: int = 65536) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcReader:
    """/proc readers rooted at `proc_root` (a fake tree in tests)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.root = proc_root

    def stat(self, pid: int) -> ProcStat | None:
        data = _read(f"{self.root}/{pid}/stat", 4096)
        return parse_stat(data) if data else None

    def exe_link(self, pid: int) -> str | None:
        """The raw /proc/PID/exe target (kernel threads and gone processes: None)."""
        try:
            return os.readlink(f"{self.root}/{pid}/exe")
        except OSError:
            return None

    def cmdline(self, pid: int) -> tuple[str, ...]:
        data = _read(f"{self.root}/{pid}/cmdline", 1 << 20)
        return parse_cmdline(data) if data else ()

    def cgroup(self, pid: int) -> str | None:
        data = _read(f"{self.root}/{pid}/cgroup", 65536)
        return parse_proc_cgroup(data.decode("utf-8", "replace")) if data else None

    def owner(self, pid: int) -> int | None:
        """The effective uid of a process (owner of /proc/PID), one stat() call."""
        try:
            return os.stat(f"{self.root}/{pid}").st_uid
        except OSError:
            return None

    def pids(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(self.root) if n.isdigit()]
        except OSError:
            return []

    def fd_count(self, pid: int) -> int | None:
        """Open fds of pid from one stat(): since Linux 6.2 /proc/PID/fd reports its entry
        count as st_size (0 on older kernels, which only makes every pid look changed)."""
        try:
            return os.stat(f"{self.root}/{pid}/fd").st_size
        except OSError:
            return None

    def fd_holds(self, pid: int, fd: int, inode: int) -> bool:
        """Whether /proc/PID/fd/FD is still socket INODE: one readlink, the cache check."""
        try:
            return os.readlink(f"{self.root}/{pid}/fd/{fd}") == f"socket:[{inode}]"
        except OSError:
            return False

    def find_socket(
        self,
        pids: Iterable[int],
        inode: int,
        learn: Callable[[int, int, int], None] | None = None,
        seen: Callable[[int, int], None] | None = None,
        limit: int | None = None,
    ) -> tuple[int, int, int] | None:
        """Search the fds of `pids` for `socket:[inode]`; stop at the first holder.

        Returns (pid, fd, pids_scanned) or None. Every other socket seen on the way is
        passed to `learn(inode, pid, fd)` so the next lookup of it is a cache hit, and the
        fd count of every pid listed to `seen(pid, count)`.
        Highest fd numbers are read first: a just-opened socket is usually the newest fd.
        """
        want = f"socket:[{inode}]"
        scanned = 0
        for pid in pids:
            if limit is not None and scanned >= limit:
                break
            scanned += 1
            base = f"{self.root}/{pid}/fd"
            try:
                names = os.listdir(base)
            except OSError:
                continue
            if seen is not None:
                seen(pid, len(names))
            fds = sorted((int(n) for n in names if n.isdigit()), reverse=True)
            for fd in fds:
                try:
                    target = os.readlink(f"{base}/{fd}")
                except OSError:
                    continue
                if target == want:
                    return pid, fd, scanned
                if learn is not None and target.startswith("socket:["):
                    other = parse_socket_link(target)
                    if other is not None:
                        learn(other, pid, fd)
        return None
