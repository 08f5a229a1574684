"""Who holds a socket, found without reading all of /proc (step 5 of the route in
procs.attributor): the pids of the socket's cgroup, likeliest first, each probed through a
kept /proc/PID/fd directory; then, bounded, the processes of the socket's owner."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nfguard.procs.cgroups import CgroupMap
from nfguard.procs.counters import Counters
from nfguard.procs.members import Group, Members
from nfguard.procs.process import FOUND, PARTIAL, UNCHANGED, FdDirs, ProcReader

# Per lookup, the first HINTED_PIDS pids tried re-read up to HINTED_FDS fds each, those of
# their oldest known sockets: a client that keeps many connections (a pool, a load
# generator, a crawler) closes one and opens the next on the fd number just freed, so its
# fd count does not change and a full read would cost one readlink per open fd. Sixteen:
# with eight, a load generator with 32 connections (the bench's wrk) missed its new socket
# in 30% of the hinted reads and went on to cgroup.procs and a full read; with sixteen,
# 1%, and 2.7 readlinks per connection instead of 3.5.
HINTED_PIDS = 4
HINTED_FDS = 16


class HolderSearch:
    """inode -> (pid, fd) of a process holding it now. Owns the cgroup memberships
    (members): `live()` says whether process events keep them current (else cgroup.procs
    is re-read per miss); `poll_events` folds those in; `learn(inode, pid, fd)` is told of
    every socket seen on the way. scan_limit / fallback_limit bound the pids whose fds one
    search may read."""

    def __init__(self, proc: ProcReader, fds: FdDirs, cgroups: CgroupMap, counters: Counters,
                 *, live: Callable[[], bool], poll_events: Callable[[], int],
                 learn: Callable[[int, int, int], None], scan_limit: int,
                 fallback_limit: int) -> None:
        self._proc = proc
        self._fds = fds
        self._cgroups = cgroups
        self._counters = counters
        self._live = live
        self._poll_events = poll_events
        self._learn = learn
        self.members = Members()
        self.scan_limit = scan_limit
        self.fallback_limit = fallback_limit

    def find(
        self, inode: int, uid: int, cgroup_id: int | None, cg_path: str | None
    ) -> tuple[int, int] | None:
        """inode → (pid, fd): the socket's cgroup first, then the owner's processes."""
        tried: set[int] = set()
        if cg_path is not None:
            later: list[int] = []  # not ruled out: fd count unchanged, or only new fds read
            self._poll_events()
            group = self.members.get(cg_path)
            hit = None
            if group is not None and not self._live():
                # no events keep this set current: only its recent socket owners are worth
                # a look before re-reading cgroup.procs (a busy client usually is one)
                hit = self._sweep(group.recent_first(), inode, tried, later)
                if hit is None:
                    group = None
            fresh = group is None
            if hit is None and group is None:
                group = self._load(cg_path, cgroup_id)
            if hit is None and group is not None:
                hit = self._sweep(group.order(), inode, tried, later)
            if hit is None and not fresh:
                # the live set missed: a process may have moved in (moves send no event)
                group = self._load(cg_path, cgroup_id)
                if group is not None:
                    hit = self._sweep(group.order(), inode, tried, later)
            if hit is None and later:
                # close + socket keeps a process's fd count, and a reused fd number is not
                # "new": read these in full before declaring the cgroup empty-handed
                hit = self._sweep(later, inode, set(), None, full=True)
            if hit is not None:
                if group is not None:
                    group.touch(hit[0])
                return hit
        # The cgroup route failed: the process moved, the socket was passed to another
        # cgroup, or the cgroup is gone. Read only the socket owner's processes, bounded.
        # Just-started processes first (from events: pids wrap, so "highest" is not
        # "newest"), then highest pid first.
        self._counters.fallbacks += 1
        self._poll_events()
        recent = [p for p in self.members.recent() if p not in tried]
        head = set(recent)
        rest = sorted(
            (p for p in self._proc.pids() if p not in tried and p not in head), reverse=True
        )
        cands = [p for p in recent + rest if self._proc.owner(p) == uid][: self.fallback_limit]
        res = self._proc.find_socket(cands, inode, self._learn)
        if res is None:
            self._counters.pids_scanned += len(cands)
            return None
        pid, fd, scanned = res
        self._counters.pids_scanned += scanned
        # Found by path, not through a kept fd directory: one kept for this pid may belong
        # to a process that exited since, and must not vouch for the one found (entries).
        self._fds.drop(pid)
        return pid, fd

    def _load(self, cg_path: str, cgroup_id: int | None) -> Group | None:
        """Read the cgroup's `cgroup.procs` into the membership cache (None: it is gone)."""
        self._counters.procs_reads += 1
        procs = self._cgroups.procs(cg_path)
        if procs is None:
            if cgroup_id is not None:
                self._cgroups.forget(cgroup_id)
            return None
        return self.members.load(cg_path, procs)

    def _sweep(
        self,
        order: Iterable[int],
        inode: int,
        tried: set[int],
        later: list[int] | None,
        full: bool = False,
    ) -> tuple[int, int] | None:
        """Probe pids in order, stop at the first holder; put off the ones not ruled out.
        The first HINTED_PIDS pids (the likeliest) get their oldest sockets re-read first
        (a full read starts there anyway)."""
        c = self._counters
        listed = probed = 0
        for pid in order:
            if pid in tried:
                continue
            if listed >= self.scan_limit:
                break
            tried.add(pid)
            hint = HINTED_FDS if not full and probed < HINTED_PIDS else 0
            probed += 1
            c.pids_probed += 1
            status, fd = self._fds.probe(pid, inode, self._learn, full=full, hint=hint)
            if status == FOUND:
                c.pids_scanned += 1
                assert fd is not None
                return pid, fd
            if status == UNCHANGED:
                if later is not None:
                    later.append(pid)
                continue
            if status == PARTIAL and later is not None:
                later.append(pid)
            listed += 1
            c.pids_scanned += 1
        return None
