"""What attribution tells about a flow's sender (ProcessInfo), and what it keeps of a
process between flows (ProcEntry). Plain data: the policy, audit and suggest read it."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from nfguard.procs.containers import Container


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


UNKNOWN = ProcessInfo()


@dataclasses.dataclass(frozen=True, slots=True)
class ProcEntry:
    """What was read of one process, kept while it provably still describes it (entries)."""

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
