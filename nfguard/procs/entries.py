"""pid -> what was read of its process (exe, arguments, parent, groups), kept while it
provably describes the same process running the same program (step 6 of the route in
procs.attributor): checked against the exe link and start time, or dropped by process
events, and the parent's exe believed only if that program forked it."""

from __future__ import annotations

import dataclasses
import grp
import os
import time
from collections.abc import Callable

from nfguard.lru import LRU
from nfguard.procs.exepath import ExePaths
from nfguard.procs.info import ProcEntry
from nfguard.procs.owners import ExecTimes, image_unchanged
from nfguard.procs.process import FdDirs, ProcReader, split_deleted

LINK_RECHECK_NS = 1_000_000_000  # a cached entry's exe link is read at least this often


class ProcessEntries:
    """The cache of ProcEntry by pid, and what it needs to tell a cached entry still holds.

    `live()`: whether process events keep the cache current (an exec, exit or fork drops
    the entry), so a cached entry needs no reading; `execs()`: the kernel's exec record
    (owners.ExecTimes) where it loads."""

    def __init__(self, proc: ProcReader, fds: FdDirs, paths: ExePaths, size: int, *,
                 live: Callable[[], bool], execs: Callable[[], ExecTimes | None]) -> None:
        self._proc = proc
        self._fds = fds
        self._paths = paths
        self._live = live
        self._execs = execs
        self._hz = os.sysconf("SC_CLK_TCK")
        self.cache: LRU[int, ProcEntry] = LRU(size)
        self._groups: LRU[int, tuple[str | None]] = LRU(4096)
        # pid → when its exe link was last seen to be its cached entry's (boot ns)
        self._linked: LRU[int, int] = LRU(size)
        # pid → when the process connector last saw it exec (boot ns): what stands in for
        # the kernel's exec record (owners.ExecTimes) where that cannot be loaded
        self.exec_seen: LRU[int, int] = LRU(size)
        # pid → (when it was forked, boot ns; by whom), from process events
        self.forked: LRU[int, tuple[int, int | None]] = LRU(size)

    def clear(self) -> None:
        """Forget what was read (exec and fork times stay: they are facts, not reads)."""
        self.cache.clear()
        self._groups.clear()
        self._linked.clear()

    def get(self, pid: int, proven: bool, want_cgroup: bool,
            exec_checked: bool = False) -> ProcEntry | None:
        """Process info for pid, from cache when the exe link and start time still match.

        With process events (drained by every lookup before this), an exec, exit or fork
        of the pid would have dropped the entry, so a cached one needs no reading.
        Without: `proven`, the pid was just shown to hold the flow's socket through a
        cached fd, so only an exec can have changed it; the exe link check is enough. So it
        is when the socket was found through the same kept fd directory the entry was read
        with.
        `want_cgroup`: the socket's cgroup is unknown, so read the process's (skipped
        otherwise: ~10 µs).
        `exec_checked`: the caller holds the entry's read_at against the kernel's exec
        times afterwards (the recorded route: an exec begun or ended since the reading is
        seen there, and read again). Where the kernel sees every exec from its start, a
        cached entry of the same process (its kept directory) then needs no exe link read,
        but for one every LINK_RECHECK_NS: the kernel's exec record is an LRU map, and
        the link catches an exec whose record later ones pushed out (a map's worth of
        execs, tens of thousands, takes seconds).
        """
        entry = self.cache.get(pid)
        if entry is not None and want_cgroup and entry.cgroup is None:
            entry = None
        if entry is not None and self._live():
            return entry
        serial = self._fds.serial(pid)
        same_process = entry is not None and serial is not None and serial == entry.fd_serial
        read_at = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if same_process and exec_checked and self._sees_exec_begin():
            linked = self._linked.get(pid)
            if linked is not None and read_at - linked < LINK_RECHECK_NS:
                return entry
        link = self._proc.exe_link(pid)
        if entry is not None and entry.exe_link == link:
            if proven or same_process:
                self._linked.put(pid, read_at)
                return self._vouched(pid, entry, serial)
            st = self._proc.stat(pid)
            if st is not None and st.starttime == entry.starttime:
                self._linked.put(pid, read_at)
                return self._vouched(pid, entry, serial)
        st = self._proc.stat(pid)
        if st is None:
            self.cache.pop(pid)
            return None
        exe, deleted = split_deleted(link) if link is not None else (None, False)
        mismatch = exe is not None and (deleted or not self._paths.names_its_file(pid, exe))
        parent_exe = None
        if st.ppid > 0:
            plink = self._proc.exe_link(st.ppid)
            if (plink is not None and self._paths.names_its_file(st.ppid, plink)
                    and self.started_it(st.ppid, pid, st.starttime, read_at)):
                parent_exe = plink
        gids = self._proc.gids(pid)
        entry = ProcEntry(
            starttime=st.starttime,
            exe_link=link,
            exe=exe,
            exe_deleted=deleted,
            exe_mismatch=mismatch,
            cmdline=self._proc.cmdline(pid),
            ppid=st.ppid if st.ppid > 0 else None,
            parent_exe=parent_exe,
            cgroup=self._proc.cgroup(pid) if want_cgroup else None,
            gids=gids,
            groups=tuple(name for name in map(self.group_name, gids) if name is not None),
            fd_serial=serial,
            read_at=read_at,
        )
        self.cache.put(pid, entry)
        self._linked.put(pid, read_at)
        return entry

    def _sees_exec_begin(self) -> bool:
        execs = self._execs()
        return execs is not None and execs.sees_exec_begin

    def _vouched(self, pid: int, entry: ProcEntry, serial: int | None) -> ProcEntry:
        """The entry, just shown to describe pid's process, tied to the fd directory kept
        for pid now: a lookup through that directory proves it alive, hence the same
        process, and skips the exe link check (`get`)."""
        if serial is None or serial == entry.fd_serial:
            return entry
        entry = dataclasses.replace(entry, fd_serial=serial)
        self.cache.put(pid, entry)
        return entry

    def started_it(self, ppid: int, pid: int, start_ticks: int, read_at: int) -> bool:
        """Whether the program ppid runs (read before `read_at`) is the one that forked pid:
        not when ppid exec'd since (a process forks its payload, then execs git), nor when
        pid was forked by another process (reparented: its parent exited). The fork time
        comes from process events; without them, the start of pid's start tick: an exec
        within that tick may have come after the fork, so it counts as after."""
        forked = self.forked.get(pid)
        if forked is not None:
            at, parent = forked
            if parent is not None and parent != ppid:
                return False
        else:
            at = start_ticks * 1_000_000_000 // self._hz
        prepared, done = self.exec_times(ppid)
        return image_unchanged(at, prepared, done, read_at)

    def exec_times(self, pid: int) -> tuple[int | None, int | None]:
        """When pid's last exec began and ended (boot ns), as far as anything here saw."""
        execs = self._execs()
        prepared, done = execs.of(pid) if execs is not None else (None, None)
        seen = self.exec_seen.get(pid)
        if seen is not None and (done is None or seen > done):
            done = seen
        return prepared, done

    def group_name(self, gid: int) -> str | None:
        return name_of(self._groups, gid, lambda g: grp.getgrgid(g).gr_name)


def name_of(cache: LRU[int, tuple[str | None]], ident: int,
             resolve: Callable[[int], str]) -> str | None:
    """A user or group name by id, cached (misses too: NSS lookups can be slow)."""
    hit = cache.get(ident)
    if hit is not None:
        return hit[0]
    try:
        name: str | None = resolve(ident)
    except (KeyError, OverflowError):
        name = None
    cache.put(ident, (name,))
    return name
