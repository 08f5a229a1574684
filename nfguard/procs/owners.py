"""Socket owners recorded by the kernel at connect() and sendmsg(), keyed by socket cookie.

Searching /proc for the process that holds a new socket costs a readlink per candidate fd,
and more for a process never seen before (a fresh curl, a worker of a big pool). The
kernel knows the answer when the socket is used: a small eBPF program on the cgroup v2
root's connect (IPv4, IPv6) and UDP sendmsg hooks writes, for every socket that connects
or sends to an address, `socket cookie → (pid, CLOCK_BOOTTIME ns)` into an LRU hash map.
sock_diag already gives the flow's socket cookie, so one map lookup names the process.

The program is assembled here (seventeen instructions, no compiler, no BTF), loaded and
attached through bpf links, so it detaches when the engine exits, however it exits. It
only records: it always allows the call. Needs CAP_BPF and CAP_NET_ADMIN; without them,
or without cgroup v2, `SocketOwners.open` raises OSError and the attributor searches /proc.

A record is the process that *connected* the socket, at that time. The attributor trusts
it only while that process lives: the pid's process must have started before the record
was written (`started_before`), otherwise the pid was reused since; and only while it runs
the program it ran then: a process that connects and then execs curl is not curl. Two more
programs (raw tracepoints, CAP_PERFMON) write each process's last exec into `ExecTimes`:
`sched_prepare_exec` (Linux 6.10+) when it begins, before the new program replaces the old
one, and `sched_process_exec` when it is done. `image_unchanged` says, from those times,
whether the program read now is the one that connected. Where the tracepoints cannot be
used, the process connector's exec events stand in for the second (see procs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
import sys

__all__ = ["ExecTimes", "SocketOwners", "exec_program", "image_unchanged", "program",
           "socket_cookie", "started_before"]

# bpf(2) commands, map and program types, attach points (linux/bpf.h)
_MAP_CREATE, _MAP_LOOKUP_ELEM, _PROG_LOAD, _RAW_TRACEPOINT_OPEN, _LINK_CREATE = 0, 1, 5, 17, 28
_MAP_TYPE_LRU_HASH = 9
_PROG_TYPE_RAW_TRACEPOINT, _PROG_TYPE_CGROUP_SOCK_ADDR = 17, 18
# exec begins (before the old program is gone; Linux 6.10+), exec is done
PREPARE_EXEC, PROCESS_EXEC = b"sched_prepare_exec", b"sched_process_exec"
_ATTACH_INET4_CONNECT, _ATTACH_INET6_CONNECT = 10, 11
_ATTACH_UDP4_SENDMSG, _ATTACH_UDP6_SENDMSG = 14, 15
_HOOKS = (_ATTACH_INET4_CONNECT, _ATTACH_INET6_CONNECT,
          _ATTACH_UDP4_SENDMSG, _ATTACH_UDP6_SENDMSG)

# helper ids
_MAP_LOOKUP_ELEM_HELPER, _MAP_UPDATE_ELEM = 1, 2
_GET_CURRENT_PID_TGID = 14
_GET_SOCKET_COOKIE = 46
_KTIME_GET_BOOT_NS = 125

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

_INSN = struct.Struct("<BBhi")
_KEY = struct.Struct("=Q")  # socket cookie
_VALUE = struct.Struct("=QQ")  # pid_tgid (tgid in the high half), CLOCK_BOOTTIME ns
_LOOKUP_ATTR = struct.Struct("=IIQQQ")  # map_fd, pad, key ptr, value ptr, flags
_TGID = struct.Struct("=I")  # ExecTimes' key
_EXECS = struct.Struct("=QQ")  # ExecTimes' value: CLOCK_BOOTTIME ns began, done (0: unseen)


def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(op, (src << 4) | dst, off, imm)


def program(map_fd: int) -> bytes:
    """The recorder: map[cookie(ctx)] = (current pid_tgid, boot time); returns 1 (allow).

    r6 keeps the context across calls; the value sits at fp-16 (pid_tgid, then time) and
    the key at fp-24."""
    call, mov_reg, mov_imm, add_imm, store64 = 0x85, 0xBF, 0xB7, 0x07, 0x7B
    fp = 10
    return b"".join([
        _insn(mov_reg, 6, 1),
        _insn(call, imm=_GET_CURRENT_PID_TGID),
        _insn(store64, fp, 0, -16),
        _insn(call, imm=_KTIME_GET_BOOT_NS),
        _insn(store64, fp, 0, -8),
        _insn(mov_reg, 1, 6),
        _insn(call, imm=_GET_SOCKET_COOKIE),
        _insn(store64, fp, 0, -24),
        _insn(0x18, 1, 1, imm=map_fd), _insn(0),  # r1 = the map (ld_imm64, pseudo map fd)
        _insn(mov_reg, 2, fp), _insn(add_imm, 2, imm=-24),
        _insn(mov_reg, 3, fp), _insn(add_imm, 3, imm=-16),
        _insn(mov_imm, 4, imm=0),  # BPF_ANY
        _insn(call, imm=_MAP_UPDATE_ELEM),
        _insn(mov_imm, 0, imm=1),
        _insn(0x95),  # exit
    ])


def exec_program(map_fd: int, field: int) -> bytes:
    """The exec recorder: map[current tgid][field] = boot time (field 0: began, 1: done),
    in place, or a new entry with the other field 0; returns 0. r7 keeps the time; the key
    sits at fp-4, a new value at fp-24."""
    call, mov_reg, mov_imm, add_imm, rsh_imm, store32, store64 = (
        0x85, 0xBF, 0xB7, 0x07, 0x77, 0x63, 0x7B)
    jeq_imm, ja = 0x15, 0x05
    fp, at = 10, 8 * field
    load_map = [_insn(0x18, 1, 1, imm=map_fd), _insn(0)]  # r1 = the map (ld_imm64)
    return b"".join([
        _insn(call, imm=_GET_CURRENT_PID_TGID),
        _insn(rsh_imm, 0, imm=32),
        _insn(store32, fp, 0, -4),
        _insn(call, imm=_KTIME_GET_BOOT_NS),
        _insn(mov_reg, 7, 0),
        *load_map,
        _insn(mov_reg, 2, fp), _insn(add_imm, 2, imm=-4),
        _insn(call, imm=_MAP_LOOKUP_ELEM_HELPER),
        _insn(jeq_imm, 0, off=2, imm=0),  # no entry yet: make one
        _insn(store64, 0, 7, at),  # entry[field] = time
        _insn(ja, off=12),  # to the exit
        _insn(mov_imm, 1, imm=0),
        _insn(store64, fp, 1, -24), _insn(store64, fp, 1, -16),
        _insn(store64, fp, 7, -24 + at),
        *load_map,
        _insn(mov_reg, 2, fp), _insn(add_imm, 2, imm=-4),
        _insn(mov_reg, 3, fp), _insn(add_imm, 3, imm=-24),
        _insn(mov_imm, 4, imm=0),  # BPF_ANY
        _insn(call, imm=_MAP_UPDATE_ELEM),
        _insn(mov_imm, 0, imm=0),
        _insn(0x95),
    ])


def image_unchanged(connected_at: int, prepared: int | None, done: int | None,
                    read_at: int) -> bool:
    """Whether the program a process runs, read at `read_at`, is the one it ran when it
    connected at `connected_at`, given when its last exec began (`prepared`, None when
    not known or never seen) and ended (`done`), all CLOCK_BOOTTIME ns. Not when an exec
    began or ended after the connect (a sibling thread may connect while an exec waits
    for it to die), nor when one began and is not known to have ended, nor when the
    reading is older than the last exec's end."""
    if prepared is not None and (prepared > connected_at or done is None or done < prepared):
        return False
    return done is None or done <= min(connected_at, read_at)


def started_before(start_ticks: int, boot_ns: int, hz: int) -> bool:
    """Whether a process that started `start_ticks` clock ticks after boot (/proc/PID/stat)
    may be the one recorded at `boot_ns`: a process that started later has a reused pid.
    The tick is coarse, so a start within the record's tick counts as before."""
    return start_ticks * 1_000_000_000 // hz <= boot_ns


class SocketOwners:
    """The map and the links that fill it. Not thread-safe (one lookup buffer)."""

    def __init__(self, map_fd: int, link_fds: list[int],
                 execs: ExecTimes | None = None, exec_error: str | None = None) -> None:
        self._map_fd = map_fd
        self._link_fds = link_fds
        self._map = _MapReader(map_fd, _KEY, _VALUE)
        self.execs = execs  # None: the kernel does not say when processes exec
        self.exec_error = exec_error  # why not

    @classmethod
    def open(cls, cgroup2_root: str, max_entries: int = 65536) -> SocketOwners:
        """Create the map, load the recorder for each hook and link it to the cgroup v2
        root. OSError (EPERM without CAP_BPF/CAP_NET_ADMIN, EINVAL on old kernels) leaves
        nothing behind."""
        map_fd = _bpf(_MAP_CREATE, struct.pack(
            "=IIIIIII16s", _MAP_TYPE_LRU_HASH, _KEY.size, _VALUE.size, max_entries,
            0, 0, 0, b"nfguard_owners"))
        links: list[int] = []
        try:
            cgroup = os.open(cgroup2_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for hook in _HOOKS:
                    prog = _load(map_fd, hook)
                    try:  # the link holds the program loaded; its fd goes
                        links.append(_bpf(_LINK_CREATE, struct.pack("=IIII", prog, cgroup,
                                                                    hook, 0)))
                    finally:
                        os.close(prog)
            finally:
                os.close(cgroup)
        except BaseException:
            for fd in [*links, map_fd]:
                os.close(fd)
            raise
        try:
            execs, exec_error = ExecTimes.open(max_entries), None
        except OSError as e:
            execs, exec_error = None, str(e)
        return cls(map_fd, links, execs, exec_error)

    def lookup(self, cookie: int) -> tuple[int, int] | None:
        """(pid, boot ns) recorded for the socket, or None."""
        found = self._map.get(cookie)
        if found is None:
            return None
        pid_tgid, boot_ns = found
        return pid_tgid >> 32, boot_ns

    def close(self) -> None:
        if self.execs is not None:
            self.execs.close()
            self.execs = None
        for fd in self._link_fds:
            os.close(fd)
        self._link_fds = []
        if self._map_fd >= 0:
            os.close(self._map_fd)
            self._map_fd = -1


class ExecTimes:
    """When each process last began (Linux 6.10+) and finished an exec, by tgid, as two
    raw tracepoints recorded them in one map. Needs CAP_PERFMON besides CAP_BPF."""

    def __init__(self, map_fd: int, fds: list[int], sees_exec_begin: bool) -> None:
        self._map = _MapReader(map_fd, _TGID, _EXECS)
        self._fds = fds
        self.sees_exec_begin = sees_exec_begin  # not only an exec's end (sched_prepare_exec)

    @classmethod
    def open(cls, max_entries: int = 65536) -> ExecTimes:
        """Both tracepoints, or only the second on kernels before 6.10 (which lack the
        first); OSError when not even that (no CAP_PERFMON, no raw tracepoints)."""
        map_fd = _bpf(_MAP_CREATE, struct.pack("=IIIIIII16s", _MAP_TYPE_LRU_HASH, _TGID.size,
                                               _EXECS.size, max_entries, 0, 0, 0,
                                               b"nfguard_execs"))
        fds = [map_fd]
        try:
            fds.append(_raw_tracepoint(map_fd, PROCESS_EXEC, 1))
            try:
                fds.append(_raw_tracepoint(map_fd, PREPARE_EXEC, 0))
            except OSError:  # before Linux 6.10
                return cls(map_fd, fds, False)
        except BaseException:
            for fd in reversed(fds):
                os.close(fd)
            raise
        return cls(map_fd, fds, True)

    def of(self, pid: int) -> tuple[int | None, int | None]:
        """(began, done) of pid's last exec seen, boot ns; None for what was not seen."""
        found = self._map.get(pid)
        if found is None:
            return None, None
        began, done = found
        return began or None, done or None

    def close(self) -> None:
        for fd in reversed(self._fds):  # the links first
            os.close(fd)
        self._fds = []


class _MapReader:
    """Lookups in one BPF map through buffers made once (a flow makes up to three): the
    key is packed into, and the value read from, the buffers the kernel is pointed at."""

    def __init__(self, map_fd: int, key: struct.Struct, value: struct.Struct) -> None:
        self._key = ctypes.create_string_buffer(key.size)
        self._value = ctypes.create_string_buffer(value.size)
        self._pack_key = key.pack_into
        self._unpack_value = value.unpack_from
        self._attr = ctypes.create_string_buffer(
            _LOOKUP_ATTR.pack(map_fd, 0, ctypes.addressof(self._key),
                              ctypes.addressof(self._value), 0), 128)

    def get(self, *key: int) -> tuple[int, ...] | None:
        self._pack_key(self._key, 0, *key)
        if _syscall(_NR_BPF, _MAP_LOOKUP_ELEM, self._attr, 128) < 0:
            return None
        return self._unpack_value(self._value)


def _raw_tracepoint(map_fd: int, name: bytes, field: int) -> int:
    """The exec recorder of `field` for map_fd, loaded and attached to raw tracepoint
    `name`: the returned fd holds it attached."""
    prog = _load(map_fd, 0, exec_program(map_fd, field), _PROG_TYPE_RAW_TRACEPOINT)
    try:
        tracepoint = ctypes.create_string_buffer(name)
        return _bpf(_RAW_TRACEPOINT_OPEN, struct.pack("=QI", ctypes.addressof(tracepoint), prog))
    finally:
        os.close(prog)


def _load(map_fd: int, hook: int, code: bytes | None = None,
          prog_type: int = _PROG_TYPE_CGROUP_SOCK_ADDR) -> int:
    """A recorder loaded (the connect recorder for one attach point unless `code` says
    otherwise); the verifier's words in the error."""
    code = program(map_fd) if code is None else code
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name, prog_ifindex, expected_attach_type
    return _bpf(_PROG_LOAD, struct.pack(
        "=IIQQIIQII16sII", prog_type, len(code) // _INSN.size,
        ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log),
        ctypes.addressof(log), 0, 0, b"nfguard_owner", 0, hook), log)


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NR_BPF = _SYS_BPF.get(platform.machine(), -1)


_PIDFD_GETFD = 438  # the same number on every architecture
_SO_COOKIE = 57


def socket_cookie(pid: int, fd: int, inode: int) -> int | None:
    """The cookie of socket `inode`, which pid holds at fd: read from a copy of that fd
    (pidfd_getfd, CAP_SYS_PTRACE over pid), so a socket found only through /proc (in
    another network namespace) can be looked up in the record too. None when it cannot
    be had, or the fd holds another socket by now."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        mine = int(_syscall(_PIDFD_GETFD, pidfd, fd, 0))
    finally:
        os.close(pidfd)
    if mine < 0:
        return None
    try:
        if os.fstat(mine).st_ino != inode:
            return None
        sock = socket.socket(fileno=mine)
        try:
            return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8),
                                  sys.byteorder)
        finally:
            sock.detach()
    except OSError:
        return None
    finally:
        os.close(mine)


def _bpf(cmd: int, attr: bytes, log: ctypes.Array[ctypes.c_char] | None = None) -> int:
    if _NR_BPF < 0:
        raise OSError(errno.ENOSYS, f"bpf(2): no syscall number known for {platform.machine()}")
    buf = ctypes.create_string_buffer(attr, 128)
    fd = int(_syscall(_NR_BPF, cmd, buf, len(buf)))
    if fd < 0:
        err = ctypes.get_errno()
        detail = f": {log.value.decode(errors='replace').strip()}" if log and log.value else ""
        raise OSError(err, f"bpf command {cmd}: {os.strerror(err)}{detail}")
    return fd
