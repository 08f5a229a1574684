"""Reading one process out of /proc, and finding which of a few pids holds a socket inode.

Why these exact files: /proc/PID/exe is the binary the kernel mapped (argv[0] and comm are
whatever the process says they are); /proc/PID/stat field 22 (start time in clock ticks)
tells a reused pid from the process we cached; /proc/PID/fd/N links read `socket:[INODE]`.
Every reader returns None on a vanished process instead of raising: processes exit while
we look at them.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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


def parse_status_gids(data: bytes) -> tuple[int, ...]:
    """/proc/PID/status → (effective gid, then supplementary gids), deduplicated, in order.

    The effective gid is what file access checks use; supplementary groups are what
    `id` lists. Both count for a `group` match."""
    effective: list[int] = []
    extra: list[int] = []
    for line in data.split(b"\n"):
        if line.startswith(b"Gid:"):
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                effective = [int(fields[2])]
        elif line.startswith(b"Groups:"):
            extra = [int(f) for f in line.split()[1:] if f.isdigit()]
    return tuple(dict.fromkeys(effective + extra))


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
    """Up to `size` bytes of a /proc file. Reads 4 KiB at a time: asking os.read for 1 MiB
    allocates (and faults in) 1 MiB per call, ~50 µs, for a cmdline of a few dozen bytes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, min(size, 4096))
        if len(data) < 4096 or len(data) >= size:
            return data
        chunks = [data]
        total = len(data)
        while total < size:
            chunk = os.read(fd, min(65536, size - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
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

    def gids(self, pid: int) -> tuple[int, ...]:
        data = _read(f"{self.root}/{pid}/status", 16384)
        return parse_status_gids(data) if data else ()

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


FOUND = "found"
UNCHANGED = "unchanged"  # fd count as at the last listing: put off, not ruled out
PARTIAL = "partial"  # only fds new since the last listing were read: not ruled out
MISS = "miss"  # every fd was read: not there now
GONE = "gone"
_PUT_OFF: tuple[str, int | None] = (UNCHANGED, None)


@dataclass(slots=True)
class _FdDir:
    dirfd: int
    count: int  # st_size of /proc/PID/fd when last listed (open-fd count); -1: list again
    fds: frozenset[str]  # fd names whose links were read (meaningful once `listed`)
    listed: bool = False
    serial: int = 0  # which opening of /proc/PID/fd this is: the same one, the same process
    # fd name → socket inode last read there, oldest first: a busy client closes its
    # oldest connection and the next socket takes the freed (lowest) fd number
    socks: dict[str, int] = field(default_factory=dict)


def _nofile_soft() -> int:
    try:
        import resource

        return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return 1024


class FdDirs:
    """Open /proc/PID/fd directories, kept per pid, with what was last listed in each.

    Why: a path stat of /proc/PID/fd costs ~2.2 µs (procfs path walk), an fstat of a kept
    directory fd ~1 µs, and readlinkat through it skips the walk too. The kept fd pins the
    process it was opened for: once that one exits every call on it fails with ENOENT, so a
    reused pid can never be mistaken for the old process (the entry is reopened by pid).

    Since Linux 6.2 the directory's st_size is its open-fd count. A count unchanged since
    the last listing makes a new socket there unlikely (close + socket would keep it), so
    such pids are only put off (UNCHANGED), and a caller that finds nothing elsewhere reads
    them in full. Size 0 (older kernels, fake trees) counts as "changed".

    Bounded: at most `cap` directory fds (and a quarter of RLIMIT_NOFILE) stay open.
    """

    def __init__(self, proc_root: str = "/proc", cap: int = 4096) -> None:
        self.root = proc_root
        self.cap = max(8, min(cap, _nofile_soft() // 4))
        self._d: OrderedDict[int, _FdDir] = OrderedDict()
        self._opened = 0

    def __len__(self) -> int:
        return len(self._d)

    def serial(self, pid: int) -> int | None:
        """Which opening of pid's fd directory is kept (None: none is). A directory fd
        stops working when its process exits, so while the serial stays the same, so does
        the process behind the pid: a cache keyed by it needs no start-time check."""
        ent = self._d.get(pid)
        return ent.serial if ent is not None else None

    def holds(self, pid: int, fd: int, inode: int) -> bool:
        """Whether fd `fd` of pid is socket `inode`: one readlink, through pid's kept
        directory (True then also proves its process alive) or else by path (a directory
        is not opened for it: that would take a slot from the pids being searched)."""
        ent = self._d.get(pid)
        try:
            if ent is None:
                return os.readlink(f"{self.root}/{pid}/fd/{fd}") == f"socket:[{inode}]"
            return os.readlink(str(fd), dir_fd=ent.dirfd) == f"socket:[{inode}]"
        except OSError:
            return False

    def refresh(self, pid: int) -> None:
        """Drop pid's kept directory if the process it was opened for has exited (one
        fstat), so that a cache entry tied to a kept serial describes a live process; with
        none kept, open one for next time."""
        ent = self._d.get(pid)
        if ent is None:
            self._open(pid)
            return
        try:
            os.fstat(ent.dirfd)
        except OSError:
            self.drop(pid)

    def _open(self, pid: int) -> _FdDir | None:
        try:
            fd = os.open(f"{self.root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        self._opened += 1
        ent = _FdDir(fd, -1, frozenset(), serial=self._opened)
        self._d[pid] = ent
        if len(self._d) > self.cap:
            _pid, old = self._d.popitem(last=False)
            os.close(old.dirfd)
        return ent

    def drop(self, pid: int) -> None:
        ent = self._d.pop(pid, None)
        if ent is not None:
            os.close(ent.dirfd)

    def clear(self) -> None:
        for ent in self._d.values():
            os.close(ent.dirfd)
        self._d.clear()

    def probe(
        self,
        pid: int,
        inode: int,
        learn: Callable[[int, int, int], None] | None = None,
        full: bool = False,
        hint: int = 0,
    ) -> tuple[str, int | None]:
        """Does pid hold `socket:[inode]`? → (FOUND, fd) or (UNCHANGED | PARTIAL | MISS |
        GONE, None). `hint`: first re-read that many of the fds that held this pid's oldest
        known sockets (where a busy client's next socket lands). Without `full`, a pid
        listed before is then put off when its fd count did not change, and otherwise only
        its new fd names are read (highest first: a new socket usually is the newest fd).
        Other sockets met are passed to `learn`."""
        ent = self._d.get(pid)
        if ent is not None:
            if hint and ent.socks:
                fd = _reread_oldest(ent, pid, inode, hint, learn)
                if fd is not None:
                    return FOUND, fd
            if not full and ent.count > 0:  # fast path: one fstat, no LRU bump
                try:
                    if os.stat(ent.dirfd).st_size == ent.count:
                        return _PUT_OFF
                except OSError:
                    pass  # gone: handled below
            self._d.move_to_end(pid)
        else:
            ent = self._open(pid)
            if ent is None:
                return GONE, None
        for attempt in (0, 1):
            try:
                count = os.stat(ent.dirfd).st_size
                names = None
                if not full and count and count == ent.count:
                    return UNCHANGED, None
                names = os.listdir(ent.dirfd)
                break
            except OSError:  # the process this fd was opened for is gone
                self.drop(pid)
                if attempt:
                    return GONE, None
                ent = self._open(pid)  # the pid may have a new owner
                if ent is None:
                    return GONE, None
        assert names is not None
        partial = not full and ent.listed
        known = ent.fds.intersection(names) if partial else frozenset()
        todo = sorted((n for n in names if n not in known), key=_fdnum, reverse=True)
        if full and ent.socks:  # where a reused fd number most likely is: oldest sockets
            first = [n for n in ent.socks if n in names]
            todo = first + [n for n in todo if n not in ent.socks]
        want = f"socket:[{inode}]"
        dirfd = ent.dirfd
        done: list[str] = []
        met: list[tuple[int, str]] = []  # sockets first seen here: added oldest (inode) first
        for name in todo:
            try:
                target = os.readlink(name, dir_fd=dirfd)
            except OSError:
                ent.socks.pop(name, None)
                continue
            if target == want:
                # not every new fd was read: no count to trust, but what was read stays read
                ent.count, ent.fds, ent.listed = -1, known.union(done, (name,)), True
                _remember_all(ent, met)
                _remember(ent, name, inode)
                return FOUND, int(name)
            done.append(name)
            _note_link(ent, pid, name, target, learn, met)
        _remember_all(ent, met)
        ent.count, ent.fds, ent.listed = count, frozenset(names), True
        if not partial:
            for gone in [n for n in ent.socks if n not in ent.fds]:
                del ent.socks[gone]
        return (PARTIAL if partial else MISS), None


def _remember(ent: _FdDir, name: str, inode: int) -> None:
    """fd `name` now holds socket `inode`: the newest known socket of this pid."""
    if ent.socks.get(name) != inode:
        ent.socks.pop(name, None)
        ent.socks[name] = inode


def _remember_all(ent: _FdDir, met: list[tuple[int, str]]) -> None:
    """Sockets met in a listing, in inode order: the kernel numbers sockets as it makes
    them, so this is their age, as far as we can tell."""
    for inode, name in sorted(met):
        _remember(ent, name, inode)


def _note_link(
    ent: _FdDir, pid: int, name: str, target: str,
    learn: Callable[[int, int, int], None] | None,
    met: list[tuple[int, str]] | None = None,
) -> None:
    """Keep `socks` in step with a link just read (sockets not known before go to `met`
    when given); pass other sockets to `learn`."""
    other = parse_socket_link(target) if target.startswith("socket:[") else None
    if other is None:
        ent.socks.pop(name, None)
        return
    if met is not None and ent.socks.get(name) != other:
        ent.socks.pop(name, None)
        met.append((other, name))
    else:
        _remember(ent, name, other)
    if learn is not None:
        learn(other, pid, int(name))


def _reread_oldest(
    ent: _FdDir, pid: int, inode: int, count: int,
    learn: Callable[[int, int, int], None] | None,
) -> int | None:
    """Re-read the fds of up to `count` of pid's oldest known sockets; the fd now holding
    `inode`, if one does. One readlink each, no listing."""
    want = f"socket:[{inode}]"
    for name in list(itertools.islice(ent.socks, count)):
        try:
            target = os.readlink(name, dir_fd=ent.dirfd)
        except OSError:
            ent.socks.pop(name, None)
            continue
        if target == want:
            _remember(ent, name, inode)
            return int(name)
        _note_link(ent, pid, name, target, learn)
    return None


def _fdnum(name: str) -> int:
    return int(name) if name.isdigit() else -1
