"""Who is talking: process, user and systemd unit of a new outbound flow.

Per flow, without scanning /proc:
1. sock_diag exact-tuple lookup (raw netlink, ~5-10 µs) → uid, socket inode, cgroup id;
2. cgroup id → cgroup v2 path (a lazily walked map; the id is the directory's inode);
3. inode → pid: a cache validated by one readlink of the remembered /proc/PID/fd/N, else the
   fds of only the pids in that cgroup's `cgroup.procs`; if that fails, a bounded scan of the
   socket owner's processes (counted as a fallback);
4. pid → exe, cmdline, parent: cached, checked against the exe link (catches exec) and the
   start time (catches pid reuse).

The uid comes from the kernel's socket, so it is known even when the process is not.
`lookup` never raises: an unknown answer is a ProcessInfo with None fields.

Not thread-safe: use one Attributor per thread (each has its own netlink socket).
"""

from __future__ import annotations

import logging
import pwd
import socket
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from nfguard.procs.cgroups import CgroupMap, find_cgroup2_root, unit_from_path
from nfguard.procs.process import ProcReader, split_deleted
from nfguard.procs.sockdiag import SockDiag

__all__ = ["UNKNOWN", "Attributor", "ProcessInfo"]

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """Who sent a flow. Any field may be None: sockets and processes vanish."""

    uid: int | None = None
    user: str | None = None
    inode: int | None = None
    pid: int | None = None
    exe: str | None = None
    exe_deleted: bool = False
    cmdline: tuple[str, ...] = ()
    ppid: int | None = None
    parent_exe: str | None = None
    cgroup: str | None = None
    unit: str | None = None


UNKNOWN = ProcessInfo()


class LRU(Generic[K, V]):
    """A small bounded mapping; the least recently used entry goes first."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        val = self._d.get(key)
        if val is not None:
            self._d.move_to_end(key)
        return val

    def put(self, key: K, val: V) -> None:
        self._d[key] = val
        self._d.move_to_end(key)
        if len(self._d) > self.cap:
            self._d.popitem(last=False)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


@dataclass(frozen=True, slots=True)
class _ProcEntry:
    starttime: int
    exe_link: str | None
    exe: str | None
    exe_deleted: bool
    cmdline: tuple[str, ...]
    ppid: int | None
    parent_exe: str | None
    cgroup: str | None


@dataclass
class Counters:
    """lookups = hits + misses + (lookups that found no socket or inode) + errors.
    misses that the cgroup route could not settle are also counted in fallbacks;
    failures counts lookups that ended without a pid."""

    lookups: int = 0
    hits: int = 0
    misses: int = 0
    fallbacks: int = 0
    failures: int = 0
    no_socket: int = 0
    errors: int = 0
    pids_scanned: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "misses": self.misses,
            "fallbacks": self.fallbacks,
            "failures": self.failures,
            "no_socket": self.no_socket,
            "errors": self.errors,
            "pids_scanned": self.pids_scanned,
        }


_FAMILIES = {
    4: socket.AF_INET,
    6: socket.AF_INET6,
    int(socket.AF_INET): socket.AF_INET,
    int(socket.AF_INET6): socket.AF_INET6,
}


class Attributor:
    """Attribute flows to processes. See the module docstring for the route taken."""

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        cache_size: int = 65536,
        proc_cache_size: int = 8192,
        scan_limit: int = 4096,
        fallback_limit: int = 1024,
        fingerprint_threshold: int = 2,
        diag: SockDiag | None = None,
    ) -> None:
        """cache_size bounds inode→(pid, fd); proc_cache_size bounds pid→process info;
        scan_limit / fallback_limit bound the pids whose fds one lookup may read;
        cgroups with more pids than fingerprint_threshold are searched changed-fd-count
        first."""
        self._diag = diag if diag is not None else SockDiag()
        self._proc = ProcReader(proc_root)
        self._cgroups = CgroupMap(find_cgroup2_root(cgroup_root, proc_root))
        self._inodes: LRU[int, tuple[int, int]] = LRU(cache_size)
        self._procs: LRU[int, _ProcEntry] = LRU(proc_cache_size)
        self._users: LRU[int, tuple[str | None]] = LRU(4096)
        self._recent: LRU[str, deque[int]] = LRU(1024)
        self._fdcounts: LRU[int, int] = LRU(cache_size)
        self.scan_limit = scan_limit
        self.fallback_limit = fallback_limit
        self.fingerprint_threshold = fingerprint_threshold
        self.counters = Counters()

    @property
    def cgroup_root(self) -> str | None:
        """The cgroup v2 mount used (may be `/sys/fs/cgroup/unified` on hybrid hosts)."""
        return self._cgroups.root

    def stats(self) -> dict[str, int]:
        out = self.counters.as_dict()
        out["inode_cache"] = len(self._inodes)
        out["proc_cache"] = len(self._procs)
        out["cgroup_walks"] = self._cgroups.walks
        return out

    def clear_caches(self) -> None:
        """Forget everything learned (benchmarks measure cold lookups with this)."""
        self._inodes.clear()
        self._procs.clear()
        self._users.clear()
        self._recent.clear()
        self._fdcounts.clear()
        self._cgroups = CgroupMap(self._cgroups.root)

    def close(self) -> None:
        self._diag.close()

    def __enter__(self) -> Attributor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the lookup -------------------------------------------------------------------------

    def lookup(
        self, proto: str, family: int, src: str, sport: int, dst: str, dport: int
    ) -> ProcessInfo:
        """Who sent (proto, src:sport → dst:dport) out of this host. Never raises."""
        self.counters.lookups += 1
        try:
            return self._lookup(proto, _FAMILIES[family], src, sport, dst, dport)
        except Exception:
            self.counters.errors += 1
            self.counters.failures += 1
            log.debug(
                "attribution failed for %s %s:%s -> %s:%s",
                proto,
                src,
                sport,
                dst,
                dport,
                exc_info=True,
            )
            return UNKNOWN

    def _lookup(
        self, proto: str, family: int, src: str, sport: int, dst: str, dport: int
    ) -> ProcessInfo:
        c = self.counters
        d = self._diag.find(proto, family, src, sport, dst, dport)
        if d is None:
            c.no_socket += 1
            c.failures += 1
            return UNKNOWN
        uid = d.uid
        user = self._user(uid)
        cg_path = self._cgroups.path(d.cgroup_id)
        inode = d.inode or None
        base = ProcessInfo(
            uid=uid, user=user, inode=inode, cgroup=cg_path, unit=unit_from_path(cg_path)
        )
        if inode is None:
            c.failures += 1
            return base

        pid: int | None = None
        cached = self._inodes.get(inode)
        if cached is not None and self._proc.fd_holds(cached[0], cached[1], inode):
            c.hits += 1
            pid = cached[0]
            proven = True
        else:
            c.misses += 1
            proven = False
            found = self._search(inode, uid, d.cgroup_id, cg_path)
            if found is not None:
                pid, fd = found
                self._inodes.put(inode, (pid, fd))
        if pid is None:
            c.failures += 1
            return base

        entry = self._entry(pid, proven)
        if entry is None:  # exited between the fd check and now
            c.failures += 1
            return base
        cgroup = cg_path if cg_path is not None else entry.cgroup
        return ProcessInfo(
            uid=uid,
            user=user,
            inode=inode,
            pid=pid,
            exe=entry.exe,
            exe_deleted=entry.exe_deleted,
            cmdline=entry.cmdline,
            ppid=entry.ppid,
            parent_exe=entry.parent_exe,
            cgroup=cgroup,
            unit=unit_from_path(cgroup),
        )

    def _learn(self, inode: int, pid: int, fd: int) -> None:
        self._inodes.put(inode, (pid, fd))

    def _search(
        self, inode: int, uid: int, cgroup_id: int | None, cg_path: str | None
    ) -> tuple[int, int] | None:
        """inode → (pid, fd): the socket's cgroup first, then the owner's processes."""
        tried: set[int] = set()
        if cg_path is not None:
            procs = self._cgroups.procs(cg_path)
            if procs is None and cgroup_id is not None:
                self._cgroups.forget(cgroup_id)
            if procs:
                order = self._candidates(procs, cg_path)
                res = self._proc.find_socket(
                    order, inode, self._learn, self._fdcounts.put, limit=self.scan_limit
                )
                if res is not None:
                    pid, fd, scanned = res
                    self.counters.pids_scanned += scanned
                    self._remember(cg_path, pid)
                    return pid, fd
                self.counters.pids_scanned += min(len(procs), self.scan_limit)
                tried.update(procs)
        # The cgroup route failed: the process moved, the socket was passed to another
        # cgroup, or the cgroup is gone. Read only the socket owner's processes, bounded.
        self.counters.fallbacks += 1
        cands = sorted(
            (p for p in self._proc.pids() if p not in tried and self._proc.owner(p) == uid),
            reverse=True,
        )[: self.fallback_limit]
        res = self._proc.find_socket(cands, inode, self._learn, self._fdcounts.put)
        if res is None:
            self.counters.pids_scanned += len(cands)
            return None
        pid, fd, scanned = res
        self.counters.pids_scanned += scanned
        return pid, fd

    def _candidates(self, procs: list[int], cg_path: str) -> Iterator[int]:
        """Pids of the cgroup in the order worth reading their fds, lazily.

        Recently seen socket owners of this cgroup first, then newest pid first (a short-lived
        client is usually a new pid). In cgroups bigger than fingerprint_threshold, a pid whose
        fd count (one stat()) is what it was when we last listed its fds cannot hold a socket
        we have not seen, so it is put off to the end; stat()s stop when the holder is found.
        """
        recent = self._recent.get(cg_path)
        members = set(procs)
        head = [p for p in reversed(recent) if p in members] if recent else []
        order = head + sorted(members.difference(head), reverse=True)
        if len(order) <= self.fingerprint_threshold:
            yield from order
            return
        deferred: list[int] = []
        counts = self._fdcounts
        for p in order:
            n = self._proc.fd_count(p)
            if n is None:
                continue
            if counts.get(p) == n:
                deferred.append(p)
            else:
                yield p
        yield from deferred

    def _remember(self, cg_path: str, pid: int) -> None:
        recent = self._recent.get(cg_path)
        if recent is None:
            recent = deque(maxlen=8)
            self._recent.put(cg_path, recent)
        if pid in recent:
            recent.remove(pid)
        recent.append(pid)

    def _entry(self, pid: int, proven: bool) -> _ProcEntry | None:
        """Process info for pid, from cache when the exe link and start time still match.

        `proven`: the pid was just shown to hold the flow's socket through a cached fd, so
        only an exec can have changed it; the exe link check is enough.
        """
        link = self._proc.exe_link(pid)
        entry = self._procs.get(pid)
        if entry is not None and entry.exe_link == link:
            if proven:
                return entry
            st = self._proc.stat(pid)
            if st is not None and st.starttime == entry.starttime:
                return entry
        st = self._proc.stat(pid)
        if st is None:
            self._procs.pop(pid)
            return None
        exe, deleted = split_deleted(link) if link is not None else (None, False)
        parent_exe = None
        if st.ppid > 0:
            plink = self._proc.exe_link(st.ppid)
            parent_exe = split_deleted(plink)[0] if plink is not None else None
        entry = _ProcEntry(
            starttime=st.starttime,
            exe_link=link,
            exe=exe,
            exe_deleted=deleted,
            cmdline=self._proc.cmdline(pid),
            ppid=st.ppid if st.ppid > 0 else None,
            parent_exe=parent_exe,
            cgroup=self._proc.cgroup(pid),
        )
        self._procs.put(pid, entry)
        return entry

    def _user(self, uid: int) -> str | None:
        hit = self._users.get(uid)
        if hit is not None:
            return hit[0]
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = None
        self._users.put(uid, (name,))
        return name
