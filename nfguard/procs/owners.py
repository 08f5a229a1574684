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
was written (`started_before`), otherwise the pid was reused since.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

__all__ = ["SocketOwners", "program", "started_before"]

# bpf(2) commands, map and program types, attach points (linux/bpf.h)
_MAP_CREATE, _MAP_LOOKUP_ELEM, _PROG_LOAD, _LINK_CREATE = 0, 1, 5, 28
_MAP_TYPE_LRU_HASH = 9
_PROG_TYPE_CGROUP_SOCK_ADDR = 18
_ATTACH_INET4_CONNECT, _ATTACH_INET6_CONNECT = 10, 11
_ATTACH_UDP4_SENDMSG, _ATTACH_UDP6_SENDMSG = 14, 15
_HOOKS = (_ATTACH_INET4_CONNECT, _ATTACH_INET6_CONNECT,
          _ATTACH_UDP4_SENDMSG, _ATTACH_UDP6_SENDMSG)

# helper ids
_MAP_UPDATE_ELEM = 2
_GET_CURRENT_PID_TGID = 14
_GET_SOCKET_COOKIE = 46
_KTIME_GET_BOOT_NS = 125

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

_INSN = struct.Struct("<BBhi")
_KEY = struct.Struct("=Q")  # socket cookie
_VALUE = struct.Struct("=QQ")  # pid_tgid (tgid in the high half), CLOCK_BOOTTIME ns
_LOOKUP_ATTR = struct.Struct("=IIQQQ")  # map_fd, pad, key ptr, value ptr, flags


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


def started_before(start_ticks: int, boot_ns: int, hz: int) -> bool:
    """Whether a process that started `start_ticks` clock ticks after boot (/proc/PID/stat)
    may be the one recorded at `boot_ns`: a process that started later has a reused pid.
    The tick is coarse, so a start within the record's tick counts as before."""
    return start_ticks * 1_000_000_000 // hz <= boot_ns


class SocketOwners:
    """The map and the links that fill it. Not thread-safe (one lookup buffer)."""

    def __init__(self, map_fd: int, link_fds: list[int]) -> None:
        self._map_fd = map_fd
        self._link_fds = link_fds
        self._key = ctypes.create_string_buffer(_KEY.size)
        self._value = ctypes.create_string_buffer(_VALUE.size)
        self._attr = ctypes.create_string_buffer(
            _LOOKUP_ATTR.pack(map_fd, 0, ctypes.addressof(self._key),
                              ctypes.addressof(self._value), 0), 128)

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
        return cls(map_fd, links)

    def lookup(self, cookie: int) -> tuple[int, int] | None:
        """(pid, boot ns) recorded for the socket, or None."""
        _KEY.pack_into(self._key, 0, cookie)
        if _syscall(_NR_BPF, _MAP_LOOKUP_ELEM, self._attr, 128) < 0:
            return None
        pid_tgid, boot_ns = _VALUE.unpack(self._value.raw)
        return pid_tgid >> 32, boot_ns

    def close(self) -> None:
        for fd in self._link_fds:
            os.close(fd)
        self._link_fds = []
        if self._map_fd >= 0:
            os.close(self._map_fd)
            self._map_fd = -1


def _load(map_fd: int, hook: int) -> int:
    """The recorder loaded for one attach point; the verifier's words in the error."""
    code = program(map_fd)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name, prog_ifindex, expected_attach_type
    return _bpf(_PROG_LOAD, struct.pack(
        "=IIQQIIQII16sII", _PROG_TYPE_CGROUP_SOCK_ADDR, len(code) // _INSN.size,
        ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log),
        ctypes.addressof(log), 0, 0, b"nfguard_owner", 0, hook), log)


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NR_BPF = _SYS_BPF.get(platform.machine(), -1)


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
