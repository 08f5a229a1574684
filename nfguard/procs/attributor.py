"""Who is talking: process, user and systemd unit of a new outbound flow.

Per flow, without scanning /proc:
1. sock_diag exact-tuple lookup (raw netlink, ~5-10 µs) → uid, socket inode, cookie,
   cgroup id;
2. cgroup id → cgroup v2 path (a lazily walked map; the id is the directory's inode);
3. where the kernel records socket owners (an eBPF map keyed by socket cookie, see owners),
   that record alone: the process that connected the socket (or sent on it), while it
   lives and runs the program it ran then (the kernel records execs too: a process that
   connects and then execs curl is not curl). A socket whose recorded process has exited
   or exec'd since, or that has no record, is never attributed to another holder (a
   fresh curl that inherited it): it gets its socket's uid and cgroup, no process;
4. else (no record: no CAP_BPF, no cgroup v2, or a socket connected before the engine
   started) who holds the socket now, given as `unproven` (what it runs proves nothing,
   its uid and cgroup do; a client's `exe`-like keys do not hold for it): inode → pid
   from a cache validated by one readlink of the remembered fd (through the pid's kept
   /proc/PID/fd directory when there is one, which also proves the process alive);
5. on a miss, the pids of the socket's cgroup, in the order most likely to hold a new
   socket (just forked or exec'd, recent socket owners, then newest pid first), each
   probed through a kept /proc/PID/fd directory fd: one fstat says whether its fd count
   changed since it was last listed, and only new fds are read. The pid set comes from
   `cgroup.procs` once and is then kept live by the kernel's process connector (members,
   cnproc); without it (not the initial netns, no CAP_NET_ADMIN) `cgroup.procs` is read
   per miss. Pids whose fd count did not change are only put off: they are read in full
   before giving up. If the cgroup does not hold it, a bounded scan of the socket owner's
   processes (a fallback);
6. pid → exe, cmdline, parent: cached, checked against the exe link (catches exec) and the
   start time (catches pid reuse). With process events, exec, fork and exit events drop
   the entry instead, so a cached entry needs no read. An exe path is believed only when
   it names the very file the process runs, in a tree the process could not rearrange
   (exepath): else `exe_mismatch` is set and no `exe` key matches it.

The uid comes from the kernel's socket, so it is known even when the process is not.
`lookup` never raises: an unknown answer is a ProcessInfo with None fields. Every pid
returned is the live process the kernel saw connect the socket, or, where no record is
kept, was just seen holding it (readlink of its fd): ordering hints and cached memberships
only decide where to look first, never what the answer is. A socket already closed when
its packet is looked up (a UDP sender that dropped it after sendto) has no owner left to
find: that flow gets the uid the kernel sent with the packet (the queue's NFQA_UID) and
pid None, not a guess.

Not thread-safe: use one Attributor per thread (each has its own netlink socket).
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import time
from typing import Protocol

from nfguard.lru import LRU, Memo
from nfguard.procs.cgroups import CgroupMap, find_cgroup2_root, unit_from_path
from nfguard.procs.cnproc import ProcEvent, ProcEvents
from nfguard.procs.containers import Containers
from nfguard.procs.counters import Counters
from nfguard.procs.entries import ProcessEntries, name_of
from nfguard.procs.exehash import ExeHashes
from nfguard.procs.exepath import ExePaths
from nfguard.procs.info import UNKNOWN, ProcEntry, ProcessInfo
from nfguard.procs.netns import Namespaces
from nfguard.procs.owners import (
    ExecTimes,
    SocketOwners,
    image_unchanged,
    socket_cookie,
    started_before,
)
from nfguard.procs.process import FdDirs, ProcReader
from nfguard.procs.search import HolderSearch
from nfguard.procs.sockdiag import SockDiag

log = logging.getLogger(__name__)

_FAMILIES = {
    4: socket.AF_INET,
    6: socket.AF_INET6,
    int(socket.AF_INET): socket.AF_INET,
    int(socket.AF_INET6): socket.AF_INET6,
}


class Owners(Protocol):
    """What the attributor needs of owners.SocketOwners (tests pass a fake)."""

    def lookup(self, cookie: int) -> tuple[int, int] | None: ...

    def close(self) -> None: ...


class EventSource(Protocol):
    """What the attributor needs of cnproc.ProcEvents (tests pass a fake)."""

    lost: bool

    def drain(self) -> list[ProcEvent]: ...

    def close(self) -> None: ...


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
        fd_dirs: int = 4096,
        events: EventSource | bool | None = None,
        owners: Owners | bool | None = None,
        diag: SockDiag | None = None,
        containers: Containers | None = None,
        paths: ExePaths | None = None,
    ) -> None:
        """cache_size bounds inode→(pid, fd); proc_cache_size bounds pid→process info;
        scan_limit / fallback_limit bound the pids whose fds one lookup may read; fd_dirs
        bounds the kept /proc/PID/fd directory fds. events: a cn_proc source, True to open
        one, False for none, None to open one when reading the real /proc. owners: the
        same for the kernel's record of socket owners (see owners), where it loads.
        containers: where containers' names and images are read (the runtimes' default
        state directories unless given). paths: what checks exe paths (tests pass a fake)."""
        self._diag = diag if diag is not None else SockDiag()
        self._proc = ProcReader(proc_root)
        self._fds = FdDirs(proc_root, fd_dirs)
        self._cgroups = CgroupMap(find_cgroup2_root(cgroup_root, proc_root))
        self._inodes: LRU[int, tuple[int, int]] = LRU(cache_size)
        self._users: LRU[int, tuple[str | None]] = LRU(4096)
        self._units: Memo[str | None, str | None] = Memo(4096)
        self._hashes = ExeHashes(proc_root)
        self._paths = paths if paths is not None else ExePaths(proc_root)
        self._entries = ProcessEntries(self._proc, self._fds, self._paths, proc_cache_size,
                                       live=lambda: self._events is not None,
                                       execs=lambda: self._execs)
        self._procs = self._entries.cache  # pid → ProcEntry
        self._namespaces = Namespaces(proc_root)
        self._containers = containers if containers is not None else Containers()
        if events is None:
            events = proc_root == "/proc"
        self._events: EventSource | None
        if isinstance(events, bool):
            self._events = ProcEvents.open() if events else None
        else:
            self._events = events
        self._owners: Owners | None
        if owners is None:
            owners = proc_root == "/proc"
        self.owners_error: str | None = None  # why the record could not be opened
        if isinstance(owners, bool):
            self._owners = self._open_owners() if owners else None
        else:
            self._owners = owners
        self._hz = os.sysconf("SC_CLK_TCK")
        self.counters = Counters()
        self._scan_limits = (scan_limit, fallback_limit)
        self._search = self._new_search()

    def _new_search(self) -> HolderSearch:
        return HolderSearch(self._proc, self._fds, self._cgroups, self.counters,
                            live=lambda: self._events is not None,
                            poll_events=self.poll_events, learn=self._learn,
                            scan_limit=self._scan_limits[0],
                            fallback_limit=self._scan_limits[1])

    @property
    def cgroup_root(self) -> str | None:
        """The cgroup v2 mount used (may be `/sys/fs/cgroup/unified` on hybrid hosts)."""
        return self._cgroups.root

    def _open_owners(self) -> SocketOwners | None:
        if self._cgroups.root is None:
            self.owners_error = "no cgroup v2 to attach to"
            return None
        try:
            owners = SocketOwners.open(self._cgroups.root)
        except OSError as e:
            self.owners_error = str(e)
            return None
        if owners.exec_error is not None:
            log.warning("the kernel does not record execs here (%s: CAP_PERFMON?); %s",
                        owners.exec_error,
                        "process events stand in, once an exec is done" if self._events
                        else "a process that connects, then execs, is taken for its new "
                        "program")
        return owners

    @property
    def recorded_owners(self) -> bool:
        """Whether the kernel records socket owners for this attributor (owners)."""
        return self._owners is not None

    @property
    def live_members(self) -> bool:
        """Whether process events keep cgroup memberships current (else re-read per miss)."""
        return self._events is not None

    def stats(self) -> dict[str, int]:
        out = self.counters.as_dict()
        out["inode_cache"] = len(self._inodes)
        out["inode_cache_evictions"] = self._inodes.evictions
        out["proc_cache"] = len(self._procs)
        out["proc_cache_evictions"] = self._procs.evictions
        out["exe_hashes"] = len(self._hashes.digests)
        out["exe_hashed"] = self._hashes.hashed
        out["fd_dirs"] = len(self._fds)
        out["cgroups_tracked"] = len(self._search.members)
        out["netns_rescans"] = self._namespaces.rescans
        out["cgroup_walks"] = self._cgroups.walks
        return out

    def clear_caches(self) -> None:
        """Forget everything learned (benchmarks measure cold lookups with this)."""
        self._inodes.clear()
        self._entries.clear()
        self._users.clear()
        self._fds.clear()
        self._cgroups = CgroupMap(self._cgroups.root)
        self._search = self._new_search()

    @property
    def exec_times(self) -> str:
        """How exec-after-connect is told: "kernel" (an exec seen from its start),
        "kernel-after" (only once done: kernels before 6.10), "events" (the process
        connector, once done), or "none"."""
        execs = self._execs
        if execs is not None:
            return "kernel" if execs.sees_exec_begin else "kernel-after"
        return "events" if self._events is not None else "none"

    @property
    def _execs(self) -> ExecTimes | None:
        return getattr(self._owners, "execs", None)

    def poll_events(self) -> int:
        """Fold in queued process events; the daemon may call this when idle so that the
        kernel's buffer does not overflow (lookups call it on every cache miss)."""
        ev = self._events
        if ev is None:
            return 0
        events = ev.drain()
        if ev.lost:  # the kernel dropped events: no membership nor process can be trusted
            ev.lost = False
            self._search.members.clear()
            self._procs.clear()
        for pid in self._search.members.apply(events):
            self._fds.drop(pid)
        boot = mono = 0
        for event in events:  # a new program, or another process: what was read is stale
            self._procs.pop(event.pid)
            if event.kind in ("exec", "fork") and event.at:
                if not mono:
                    mono, boot = _clocks()
                if event.kind == "exec":
                    self._entries.exec_seen.put(event.pid, event.at + boot - mono)
                else:
                    self._entries.forked.put(event.pid, (event.at + boot - mono, event.parent))
        self.counters.events += len(events)
        return len(events)

    def close(self) -> None:
        self._diag.close()
        self._fds.clear()
        if self._owners is not None:
            self._owners.close()
            self._owners = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> Attributor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the lookup -------------------------------------------------------------------------

    def lookup(
        self, proto: str, family: int, src: str, sport: int, dst: str, dport: int,
        hash_exe: bool = False, uid: int | None = None,
    ) -> ProcessInfo:
        """Who sent (proto, src:sport → dst:dport) out of this host. Never raises.

        `hash_exe`: also give the executable's SHA-256 (a policy matches on it); hashed
        once per file, but the first time costs a read of the whole binary.
        `uid`: the socket's owner as the kernel gave it with the packet; the answer when
        the socket is gone."""
        self.counters.lookups += 1
        try:
            return self._lookup(proto, _FAMILIES[family], src, sport, dst, dport, hash_exe,
                                uid)
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
            return self._uid_only(uid)

    def lookup_forwarded(
        self, proto: str, family: int, src: str, sport: int, dst: str, dport: int,
        interface: str, hash_exe: bool = False,
    ) -> ProcessInfo:
        """Who sent a flow forwarded from `interface` (a container's): the process holding
        its socket in the network namespace its source address belongs to, or, where the
        kernel records socket owners, the process the record names for that socket (the
        holder's fd gives its cookie), on the same terms as `lookup`. A VM's flow, or one
        whose socket is gone, is known by its interface alone. Never raises."""
        self.counters.forwarded += 1
        try:
            found = self._namespaces.find(proto, _FAMILIES[family], src, sport, dst, dport)
            if found is None:
                self.counters.failures += 1
                return ProcessInfo(interface=interface)
            user = self._user(found.uid)
            hit = self._proc.find_socket(found.pids, found.inode, self._learn)
            if hit is None:  # a process that joined the namespace since it was read
                hit = self._proc.find_socket(self._namespaces.refresh(found.space),
                                             found.inode, self._learn)
            if self._owners is not None and hit is not None:  # the holder leads to the record
                cookie = socket_cookie(hit[0], hit[1], found.inode)
                record = None if cookie is None else self._owners.lookup(cookie)
                if record is not None:
                    return self._recorded(found.uid, user, found.inode, record, None,
                                          hash_exe)._replace(interface=interface)
                self.counters.unrecorded += 1
            entry = self._entries.get(hit[0], False, True) if hit is not None else None
            if hit is None or entry is None:
                self.counters.failures += 1
                return self._socket_only(found.uid, user, found.inode, None)._replace(
                    interface=interface)
            return self._info(found.uid, user, found.inode, hit[0], entry, None, hash_exe,
                              unproven=True)._replace(interface=interface)
        except Exception:
            self.counters.errors += 1
            self.counters.failures += 1
            log.debug("attribution failed for forwarded %s %s:%s -> %s:%s", proto, src,
                      sport, dst, dport, exc_info=True)
            return ProcessInfo(interface=interface)

    def _lookup(
        self, proto: str, family: int, src: str, sport: int, dst: str, dport: int,
        hash_exe: bool, kernel_uid: int | None,
    ) -> ProcessInfo:
        c = self.counters
        d = self._diag.find(proto, family, src, sport, dst, dport)
        if d is None:
            c.no_socket += 1
            c.failures += 1
            return self._uid_only(kernel_uid)
        uid = d.uid
        user = self._user(uid)
        cg_path = self._cgroups.path(d.cgroup_id)
        inode = d.inode or None
        if inode is None:
            c.failures += 1
            return self._socket_only(uid, user, inode, cg_path)

        if self._owners is not None:  # the kernel's record decides (module docstring)
            record = self._owners.lookup(d.cookie)
            if record is not None:
                return self._recorded(uid, user, inode, record, cg_path, hash_exe)
            c.unrecorded += 1
        pid: int | None = None
        cached = self._inodes.get(inode)
        if cached is not None and self._fds.holds(cached[0], cached[1], inode):
            c.hits += 1
            pid = cached[0]
            proven = True
            # An exec since the entry was read has been reported by now (the kernel sends
            # it before the program can send anything): drained, it drops the entry, so
            # the entry needs no exe link check (the miss route drains them too).
            self.poll_events()
        else:
            c.misses += 1
            proven = False
            found = self._search.find(inode, uid, d.cgroup_id, cg_path)
            if found is not None:
                pid, fd = found
                self._inodes.put(inode, (pid, fd))
        if pid is None:
            c.failures += 1
            return self._socket_only(uid, user, inode, cg_path)

        entry = self._entries.get(pid, proven, cg_path is None)
        if entry is None:  # exited between the fd check and now
            c.failures += 1
            return self._socket_only(uid, user, inode, cg_path)
        return self._info(uid, user, inode, pid, entry, cg_path, hash_exe, unproven=True)

    def _recorded(self, uid: int, user: str | None, inode: int, record: tuple[int, int],
                  cg_path: str | None, hash_exe: bool) -> ProcessInfo:
        """The process the kernel saw connect (or send on) the socket, if it still lives
        and runs the program it ran then. Otherwise the socket alone: a child holding it
        now, or the program exec'd since, did not make this flow."""
        c = self.counters
        pid, connected_at = record
        if self._events is not None:
            self.poll_events()
        else:  # an entry read through a kept directory that still works describes the
            self._fds.refresh(pid)  # live process (entries)
        entry = self._entries.get(pid, False, cg_path is None, exec_checked=True)
        if entry is not None and started_before(entry.starttime, connected_at, self._hz):
            # everything about the process is read first, then its exec times: an exec
            # that replaced what was read has begun (or ended) by then
            info = self._info(uid, user, inode, pid, entry, cg_path, hash_exe)
            prepared, done = self._entries.exec_times(pid)
            if done is not None and entry.read_at < done:  # read before that exec: again
                self._procs.pop(pid)
                entry = self._entries.get(pid, False, cg_path is None)
                if entry is not None:
                    info = self._info(uid, user, inode, pid, entry, cg_path, hash_exe)
                    prepared, done = self._entries.exec_times(pid)
            if entry is not None and image_unchanged(connected_at, prepared, done,
                                                     entry.read_at):
                c.recorded += 1
                return info
        c.refused += 1
        c.failures += 1
        return self._socket_only(uid, user, inode, cg_path)

    def _info(self, uid: int, user: str | None, inode: int, pid: int, entry: ProcEntry,
              cg_path: str | None, hash_exe: bool, unproven: bool = False) -> ProcessInfo:
        cgroup = cg_path if cg_path is not None else entry.cgroup
        # positional, in ProcessInfo's order: keywords cost twice as much, once per flow
        return ProcessInfo(
            uid, user, inode, pid, entry.exe, entry.exe_deleted, entry.exe_mismatch,
            unproven, entry.cmdline, entry.ppid, entry.parent_exe, cgroup,
            self._unit(cgroup), entry.gids, entry.groups,
            self._hashes.sha256(pid) if hash_exe else None,
            None,  # interface: a forwarded flow's, given by lookup_forwarded
            self._containers.of(cgroup),
        )

    def _uid_only(self, uid: int | None) -> ProcessInfo:
        """What is known with no socket to look at: the uid the kernel gave, if any."""
        return UNKNOWN if uid is None else ProcessInfo(uid=uid, user=self._user(uid))

    def _socket_only(self, uid: int, user: str | None, inode: int | None,
                     cg_path: str | None) -> ProcessInfo:
        """What the socket alone tells when its process is not found."""
        return ProcessInfo(uid=uid, user=user, inode=inode, cgroup=cg_path,
                           unit=self._unit(cg_path), container=self._containers.of(cg_path))

    def _unit(self, cgroup: str | None) -> str | None:
        """unit_from_path, remembered: a busy host has a few hundred cgroups at most."""
        if cgroup in self._units:
            return self._units[cgroup]
        return self._units.put(cgroup, unit_from_path(cgroup))

    def _learn(self, inode: int, pid: int, fd: int) -> None:
        self._inodes.put(inode, (pid, fd))

    def _user(self, uid: int) -> str | None:
        return name_of(self._users, uid, _user_name)


def _user_name(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def _clocks() -> tuple[int, int]:
    """CLOCK_MONOTONIC and CLOCK_BOOTTIME now (process events carry the first)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.clock_gettime_ns(time.CLOCK_BOOTTIME)
