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

import dataclasses
import grp
import logging
import os
import pwd
import socket
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from nfguard.lru import LRU, Memo
from nfguard.procs.cgroups import CgroupMap, find_cgroup2_root, unit_from_path
from nfguard.procs.cnproc import ProcEvent, ProcEvents
from nfguard.procs.containers import Container, Containers
from nfguard.procs.exehash import ExeHashes
from nfguard.procs.exepath import ExePaths
from nfguard.procs.members import Group, Members
from nfguard.procs.netns import Namespaces
from nfguard.procs.owners import (
    ExecTimes,
    SocketOwners,
    image_unchanged,
    socket_cookie,
    started_before,
)
from nfguard.procs.process import (
    FOUND,
    PARTIAL,
    UNCHANGED,
    FdDirs,
    ProcReader,
    split_deleted,
)
from nfguard.procs.sockdiag import SockDiag

__all__ = ["UNKNOWN", "Attributor", "ProcessInfo"]

log = logging.getLogger(__name__)

class ProcessInfo(NamedTuple):
    """Who sent a flow. Any field may be None: sockets and processes vanish.

    A NamedTuple, not a frozen dataclass: one is built per new flow, about 4 times cheaper."""

    uid: int | None = None
    user: str | None = None
    inode: int | None = None
    pid: int | None = None
    exe: str | None = None
    exe_deleted: bool = False
    # the path shown does not name the file it runs where it must be read (exepath): a
    # mount of its own over it, or the file was deleted or replaced since it started
    exe_mismatch: bool = False
    # found holding the socket, not shown to be what made it (no record of who connected
    # it: no CAP_BPF, or connected before the engine started): a child that inherited it
    # across an exec looks the same. What it runs (exe, parent, hash, arguments) then
    # proves nothing; its uid, groups, unit and cgroup still do.
    unproven: bool = False
    cmdline: tuple[str, ...] = ()
    ppid: int | None = None
    parent_exe: str | None = None  # None too when its path does not name its file
    cgroup: str | None = None
    unit: str | None = None
    gids: tuple[int, ...] = ()  # effective gid first, then supplementary ones
    groups: tuple[str, ...] = ()  # their names, where the system knows them
    sha256: str | None = None  # of the executable; only looked up when a policy asks
    # A forwarded flow (a container's, a VM's): the interface it came in on; its process
    # when the flow came from a network namespace of this host (a container's).
    interface: str | None = None
    container: Container | None = None  # the container the process runs in, by its cgroup
    source: str | None = None  # a forwarded flow's original source address (match.source)


UNKNOWN = ProcessInfo()


@dataclasses.dataclass(frozen=True, slots=True)
class _ProcEntry:
    starttime: int
    exe_link: str | None
    exe: str | None
    exe_deleted: bool
    exe_mismatch: bool
    cmdline: tuple[str, ...]
    ppid: int | None
    parent_exe: str | None
    cgroup: str | None
    gids: tuple[int, ...]
    groups: tuple[str, ...]  # the gids' names, where the system knows them
    fd_serial: int | None  # FdDirs.serial(pid) when read: the same one proves the same process
    read_at: int  # CLOCK_BOOTTIME ns before the exe link was read (owners.image_unchanged)


@dataclasses.dataclass
class Counters:
    """lookups = recorded + hits + misses + (lookups that found no socket or inode) + errors;
    recorded: settled by the kernel's record of the socket's owner (owners); refused: the
    record names a process that exited or exec'd since it connected: no process is given
    for those, never another holder; unrecorded: records are kept but there is none for the
    socket, so its holder is searched for and given as unproven (also counted below).
    misses that the cgroup route could not settle are also counted in fallbacks;
    failures counts lookups that ended without a pid. forwarded: lookups of forwarded
    flows (lookup_forwarded), outside the sum above. pids_probed: pids looked at (one
    fstat); pids_scanned: pids whose fd list was read; procs_reads: cgroup.procs reads;
    events: process events folded in."""

    lookups: int = 0
    recorded: int = 0
    refused: int = 0
    unrecorded: int = 0
    hits: int = 0
    misses: int = 0
    fallbacks: int = 0
    failures: int = 0
    no_socket: int = 0
    errors: int = 0
    pids_probed: int = 0
    pids_scanned: int = 0
    procs_reads: int = 0
    events: int = 0
    forwarded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "lookups": self.lookups,
            "recorded": self.recorded,
            "refused": self.refused,
            "unrecorded": self.unrecorded,
            "hits": self.hits,
            "misses": self.misses,
            "fallbacks": self.fallbacks,
            "failures": self.failures,
            "no_socket": self.no_socket,
            "errors": self.errors,
            "pids_probed": self.pids_probed,
            "pids_scanned": self.pids_scanned,
            "procs_reads": self.procs_reads,
            "events": self.events,
            "forwarded": self.forwarded,
        }


# Per lookup, the first HINTED_PIDS pids tried re-read up to HINTED_FDS fds each, those of
# their oldest known sockets: a client that keeps many connections (a pool, a load
# generator, a crawler) closes one and opens the next on the fd number just freed, so its
# fd count does not change and a full read would cost one readlink per open fd. Sixteen:
# with eight, a load generator with 32 connections (the bench's wrk) missed its new socket
# in 30% of the hinted reads and went on to cgroup.procs and a full read; with sixteen,
# 1%, and 2.7 readlinks per connection instead of 3.5.
HINTED_PIDS = 4
HINTED_FDS = 16

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
        self._members = Members()
        self._inodes: LRU[int, tuple[int, int]] = LRU(cache_size)
        self._procs: LRU[int, _ProcEntry] = LRU(proc_cache_size)
        self._users: LRU[int, tuple[str | None]] = LRU(4096)
        self._groups: LRU[int, tuple[str | None]] = LRU(4096)
        self._units: Memo[str | None, str | None] = Memo(4096)
        self._hashes = ExeHashes(proc_root)
        self._paths = paths if paths is not None else ExePaths(proc_root)
        # pid → when the process connector last saw it exec (boot ns): what stands in for
        # the kernel's exec record (owners.ExecTimes) where that cannot be loaded
        self._exec_seen: LRU[int, int] = LRU(proc_cache_size)
        # pid → (when it was forked, boot ns; by whom), from process events
        self._forked: LRU[int, tuple[int, int | None]] = LRU(proc_cache_size)
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
        self.scan_limit = scan_limit
        self.fallback_limit = fallback_limit
        self.counters = Counters()

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
        out["cgroups_tracked"] = len(self._members)
        out["netns_rescans"] = self._namespaces.rescans
        out["cgroup_walks"] = self._cgroups.walks
        return out

    def clear_caches(self) -> None:
        """Forget everything learned (benchmarks measure cold lookups with this)."""
        self._inodes.clear()
        self._procs.clear()
        self._users.clear()
        self._groups.clear()
        self._fds.clear()
        self._members = Members()
        self._cgroups = CgroupMap(self._cgroups.root)

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
            self._members.clear()
            self._procs.clear()
        for pid in self._members.apply(events):
            self._fds.drop(pid)
        boot = mono = 0
        for event in events:  # a new program, or another process: what was read is stale
            self._procs.pop(event.pid)
            if event.kind in ("exec", "fork") and event.at:
                if not mono:
                    mono, boot = _clocks()
                if event.kind == "exec":
                    self._exec_seen.put(event.pid, event.at + boot - mono)
                else:
                    self._forked.put(event.pid, (event.at + boot - mono, event.parent))
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
            entry = self._entry(hit[0], False, True) if hit is not None else None
            if hit is None or entry is None:
                self.counters.failures += 1
                return self._socket_only(found.uid, user, found.inode, None)._replace(
                    interface=interface)
            return self._info(found.uid, user, found.inode, hit[0], entry, None,
                              hash_exe)._replace(interface=interface, unproven=True)
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
            found = self._search(inode, uid, d.cgroup_id, cg_path)
            if found is not None:
                pid, fd = found
                self._inodes.put(inode, (pid, fd))
        if pid is None:
            c.failures += 1
            return self._socket_only(uid, user, inode, cg_path)

        entry = self._entry(pid, proven, cg_path is None)
        if entry is None:  # exited between the fd check and now
            c.failures += 1
            return self._socket_only(uid, user, inode, cg_path)
        return self._info(uid, user, inode, pid, entry, cg_path, hash_exe)._replace(
            unproven=True)

    def _recorded(self, uid: int, user: str | None, inode: int, record: tuple[int, int],
                  cg_path: str | None, hash_exe: bool) -> ProcessInfo:
        """The process the kernel saw connect (or send on) the socket, if it still lives
        and runs the program it ran then. Otherwise the socket alone: a child holding it
        now, or the program exec'd since, did not make this flow."""
        c = self.counters
        pid, connected_at = record
        self.poll_events()
        if self._events is None:  # an entry read through a kept directory that still
            self._fds.refresh(pid)  # works describes the live process (_entry)
        entry = self._entry(pid, False, cg_path is None)
        if entry is not None and started_before(entry.starttime, connected_at, self._hz):
            # everything about the process is read first, then its exec times: an exec
            # that replaced what was read has begun (or ended) by then
            info = self._info(uid, user, inode, pid, entry, cg_path, hash_exe)
            prepared, done = self._exec_times(pid)
            if done is not None and entry.read_at < done:  # read before that exec: again
                self._procs.pop(pid)
                entry = self._entry(pid, False, cg_path is None)
                if entry is not None:
                    info = self._info(uid, user, inode, pid, entry, cg_path, hash_exe)
                    prepared, done = self._exec_times(pid)
            if entry is not None and image_unchanged(connected_at, prepared, done,
                                                     entry.read_at):
                c.recorded += 1
                return info
        c.refused += 1
        c.failures += 1
        return self._socket_only(uid, user, inode, cg_path)

    def _started_it(self, ppid: int, pid: int, start_ticks: int, read_at: int) -> bool:
        """Whether the program ppid runs (read before `read_at`) is the one that forked pid:
        not when ppid exec'd since (a process forks its payload, then execs git), nor when
        pid was forked by another process (reparented: its parent exited). The fork time
        comes from process events; without them, the start of pid's start tick: an exec
        within that tick may have come after the fork, so it counts as after."""
        forked = self._forked.get(pid)
        if forked is not None:
            at, parent = forked
            if parent is not None and parent != ppid:
                return False
        else:
            at = start_ticks * 1_000_000_000 // self._hz
        prepared, done = self._exec_times(ppid)
        return image_unchanged(at, prepared, done, read_at)

    def _exec_times(self, pid: int) -> tuple[int | None, int | None]:
        """When pid's last exec began and ended (boot ns), as far as anything here saw."""
        execs = self._execs
        prepared, done = execs.of(pid) if execs is not None else (None, None)
        seen = self._exec_seen.get(pid)
        if seen is not None and (done is None or seen > done):
            done = seen
        return prepared, done

    def _info(self, uid: int, user: str | None, inode: int, pid: int, entry: _ProcEntry,
              cg_path: str | None, hash_exe: bool) -> ProcessInfo:
        cgroup = cg_path if cg_path is not None else entry.cgroup
        return ProcessInfo(
            uid=uid,
            user=user,
            inode=inode,
            pid=pid,
            exe=entry.exe,
            exe_deleted=entry.exe_deleted,
            exe_mismatch=entry.exe_mismatch,
            cmdline=entry.cmdline,
            ppid=entry.ppid,
            parent_exe=entry.parent_exe,
            cgroup=cgroup,
            unit=self._unit(cgroup),
            container=self._containers.of(cgroup),
            gids=entry.gids,
            groups=entry.groups,
            sha256=self._hashes.sha256(pid) if hash_exe else None,
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

    def _search(
        self, inode: int, uid: int, cgroup_id: int | None, cg_path: str | None
    ) -> tuple[int, int] | None:
        """inode → (pid, fd): the socket's cgroup first, then the owner's processes."""
        tried: set[int] = set()
        if cg_path is not None:
            later: list[int] = []  # not ruled out: fd count unchanged, or only new fds read
            self.poll_events()
            group = self._members.get(cg_path)
            hit = None
            if group is not None and self._events is None:
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
        self.counters.fallbacks += 1
        self.poll_events()
        recent = [p for p in self._members.recent() if p not in tried]
        head = set(recent)
        rest = sorted(
            (p for p in self._proc.pids() if p not in tried and p not in head), reverse=True
        )
        cands = [p for p in recent + rest if self._proc.owner(p) == uid][: self.fallback_limit]
        res = self._proc.find_socket(cands, inode, self._learn)
        if res is None:
            self.counters.pids_scanned += len(cands)
            return None
        pid, fd, scanned = res
        self.counters.pids_scanned += scanned
        # Found by path, not through a kept fd directory: one kept for this pid may belong
        # to a process that exited since, and must not vouch for the one found (_entry).
        self._fds.drop(pid)
        return pid, fd

    def _load(self, cg_path: str, cgroup_id: int | None) -> Group | None:
        """Read the cgroup's `cgroup.procs` into the membership cache (None: it is gone)."""
        self.counters.procs_reads += 1
        procs = self._cgroups.procs(cg_path)
        if procs is None:
            if cgroup_id is not None:
                self._cgroups.forget(cgroup_id)
            return None
        return self._members.load(cg_path, procs)

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
        c = self.counters
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

    def _entry(self, pid: int, proven: bool, want_cgroup: bool) -> _ProcEntry | None:
        """Process info for pid, from cache when the exe link and start time still match.

        With process events (drained by every lookup before this), an exec, exit or fork
        of the pid would have dropped the entry, so a cached one needs no reading.
        Without: `proven`, the pid was just shown to hold the flow's socket through a
        cached fd, so only an exec can have changed it; the exe link check is enough. So it
        is when the socket was found through the same kept fd directory the entry was read
        with.
        `want_cgroup`: the socket's cgroup is unknown, so read the process's (skipped
        otherwise: ~10 µs).
        """
        entry = self._procs.get(pid)
        if entry is not None and want_cgroup and entry.cgroup is None:
            entry = None
        if entry is not None and self._events is not None:
            return entry
        serial = self._fds.serial(pid)
        same_process = entry is not None and serial is not None and serial == entry.fd_serial
        read_at = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        link = self._proc.exe_link(pid)
        if entry is not None and entry.exe_link == link:
            if proven or same_process:
                return self._vouched(pid, entry, serial)
            st = self._proc.stat(pid)
            if st is not None and st.starttime == entry.starttime:
                return self._vouched(pid, entry, serial)
        st = self._proc.stat(pid)
        if st is None:
            self._procs.pop(pid)
            return None
        exe, deleted = split_deleted(link) if link is not None else (None, False)
        mismatch = exe is not None and (deleted or not self._paths.names_its_file(pid, exe))
        parent_exe = None
        if st.ppid > 0:
            plink = self._proc.exe_link(st.ppid)
            if (plink is not None and self._paths.names_its_file(st.ppid, plink)
                    and self._started_it(st.ppid, pid, st.starttime, read_at)):
                parent_exe = plink
        gids = self._proc.gids(pid)
        entry = _ProcEntry(
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
            groups=tuple(name for name in map(self._group, gids) if name is not None),
            fd_serial=serial,
            read_at=read_at,
        )
        self._procs.put(pid, entry)
        return entry

    def _vouched(self, pid: int, entry: _ProcEntry, serial: int | None) -> _ProcEntry:
        """The entry, just shown to describe pid's process, tied to the fd directory kept
        for pid now: a lookup through that directory proves it alive, hence the same
        process, and skips the exe link check (`_entry`)."""
        if serial is None or serial == entry.fd_serial:
            return entry
        entry = dataclasses.replace(entry, fd_serial=serial)
        self._procs.put(pid, entry)
        return entry

    def _group(self, gid: int) -> str | None:
        return _name_of(self._groups, gid, lambda g: grp.getgrgid(g).gr_name)

    def _user(self, uid: int) -> str | None:
        return _name_of(self._users, uid, lambda u: pwd.getpwuid(u).pw_name)


def _clocks() -> tuple[int, int]:
    """CLOCK_MONOTONIC and CLOCK_BOOTTIME now (process events carry the first)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _name_of(cache: LRU[int, tuple[str | None]], ident: int,
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
