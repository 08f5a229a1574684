"""The kernel's process connector (NETLINK_CONNECTOR, cn_proc): fork / exec / exit events.

Why: finding the owner of a new socket means reading the fds of the processes in its cgroup.
Reading `cgroup.procs` of a 500-process cgroup costs ~150 µs per flow, more than the whole
lookup budget. cn_proc lets the attributor keep each cgroup's pid set live instead (a child
starts in its parent's cgroup; an exit removes it) and put just-forked or just-exec'd
processes first, since a short-lived client is the likeliest owner of a brand-new socket.

The kernel queues the fork event before the child first runs, so a child's first packet can
never be seen before its fork event. Migrations between cgroups are not reported: membership
learned this way is an ordering hint and a shortlist, never proof (every answer is checked
by reading the fd link). Only the initial network namespace has the connector, and
subscribing needs CAP_NET_ADMIN: elsewhere `ProcEvents.open()` returns None.

Message building and parsing are pure functions over bytes; `ProcEvents` is the thin I/O.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from dataclasses import dataclass

from nfguard.netlink import NLMSG_DONE, NLMSGHDR

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_NONE = 0
PROC_EVENT_FORK = 1
PROC_EVENT_EXEC = 2
PROC_EVENT_EXIT = 0x80000000

# struct cn_msg: id.idx, id.val, seq, ack, len, flags
_CN_MSG = struct.Struct("=IIIIHH")
# struct proc_event head: what, cpu, timestamp_ns
_EV_HEAD = struct.Struct("=IIQ")
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_PIDS = struct.Struct("=ii")  # exec / exit: process_pid, process_tgid
_OP = struct.Struct("=I")


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One process (thread group) event. `parent` is set for forks only; `at` is when the
    kernel sent it (CLOCK_MONOTONIC ns; an exec's is taken once the new program is in)."""

    kind: str  # "fork" | "exec" | "exit"
    pid: int
    parent: int | None = None
    at: int = 0


def build_subscribe(port_id: int, listen: bool = True) -> bytes:
    """The message that starts (or stops) multicast of process events to our socket.

    The 4-byte op form is understood by every kernel since 2.6.15 (6.6+ also takes an
    event filter, but older kernels ignore a message of that size)."""
    op = _OP.pack(PROC_CN_MCAST_LISTEN if listen else PROC_CN_MCAST_IGNORE)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, port_id) + cn


def parse_events(data: bytes) -> list[ProcEvent]:
    """A netlink datagram → process-level events. Thread forks/exits, other event kinds,
    other connector ids and truncated messages are skipped, never raised on."""
    out: list[ProcEvent] = []
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length = NLMSGHDR.unpack_from(data, off)[0]
        if length < NLMSGHDR.size or off + length > len(data):
            break
        body = data[off + NLMSGHDR.size : off + length]
        off += (length + 3) & ~3
        if len(body) < _CN_MSG.size + _EV_HEAD.size:
            continue
        idx, val, _seq, _ack, clen, _flags = _CN_MSG.unpack_from(body, 0)
        if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
            continue
        ev = body[_CN_MSG.size : _CN_MSG.size + clen]
        if len(ev) < _EV_HEAD.size:
            continue
        what, _cpu, at = _EV_HEAD.unpack_from(ev, 0)
        rest = ev[_EV_HEAD.size :]
        if what == PROC_EVENT_FORK and len(rest) >= _FORK.size:
            _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(rest, 0)
            if cpid == ctgid:  # a new process, not a new thread
                out.append(ProcEvent("fork", ctgid, ptgid, at))
        elif what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and len(rest) >= _PIDS.size:
            pid, tgid = _PIDS.unpack_from(rest, 0)
            if pid == tgid:  # exec always reports the leader; a thread's exit is no exit
                out.append(ProcEvent("exec" if what == PROC_EVENT_EXEC else "exit", tgid,
                                     None, at))
    return out


class ProcEvents:
    """A non-blocking cn_proc subscription. `drain()` returns what queued up since last time;
    `lost` turns True when the kernel dropped events (receive buffer overrun)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.lost = False
        # recv(65536) would allocate 64 KiB per ~100-byte datagram (~9 µs each): reuse one
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)

    @classmethod
    def open(cls, rcvbuf: int = 4 << 20) -> ProcEvents | None:
        """Subscribe, or None where the connector is unavailable (not the initial network
        namespace, no CAP_NET_ADMIN, no CONFIG_PROC_EVENTS)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError:
            return None
        try:
            for opt in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                    break
                except OSError:
                    continue
            sock.bind((0, CN_IDX_PROC))
            sock.send(build_subscribe(sock.getsockname()[0]))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, limit: int = 4096) -> list[ProcEvent]:
        """Everything queued, without blocking (at most `limit` datagrams per call)."""
        out: list[ProcEvent] = []
        for _ in range(limit):
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost = True
                    continue
                break
            out.extend(parse_events(bytes(self._view[:n])))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(build_subscribe(self._sock.getsockname()[0], listen=False))
        self._sock.close()
