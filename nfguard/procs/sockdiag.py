"""NETLINK_SOCK_DIAG exact-tuple socket lookup, packed by hand.

Why by hand: pyroute2's lookup costs ~140 µs per call, a raw request/response ~5 µs, and this
runs once per new flow. Message building and parsing are pure functions over bytes so they can
be tested without root or a kernel; `SockDiag` is the thin socket I/O around them.

Kernel facts this relies on (checked on 6.18, see tests/e2e/test_attribution.py):
- TCP exact lookups take the tuple as the local socket sees it (src = local, dst = remote).
- UDP exact lookups run the receive-path lookup, so they take the tuple reversed
  (src = remote, dst = local); the receive lookup's wildcard scoring also finds unconnected
  sockets bound to INADDR_ANY / in6addr_any.
- An IPv4 query finds a dual-stack AF_INET6 socket carrying an IPv4 flow; the answer then
  says family AF_INET6.
- Every answer for a full socket carries INET_DIAG_CGROUP_ID (the cgroup v2 id, which is the
  inode number of the cgroup's directory) without asking for it in idiag_ext.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import NamedTuple

from nfguard.netlink import NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSGHDR, Buffer

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20

INET_DIAG_NOCOOKIE = 0xFFFFFFFF
INET_DIAG_CGROUP_ID = 21
INET_DIAG_SKV6ONLY = 11

# struct inet_diag_req_v2 header: family, protocol, ext, pad, states
_REQ_HEAD = struct.Struct("=BBBBI")
# struct inet_diag_sockid: sport, dport (be16), src[16], dst[16], if (host u32), cookie[2]
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# struct inet_diag_msg head: family, state, timer, retrans
_MSG_HEAD = struct.Struct("=BBBB")
# inet_diag_msg tail: expires, rqueue, wqueue, uid, inode
_MSG_TAIL = struct.Struct("=IIIII")
# the fields of inet_diag_msg attribution reads: family, state, the cookie's two halves
# (after timer, retrans, the ports, the addresses and the interface), then uid and inode
# (after expires, rqueue, wqueue)
_MSG_FIELDS = struct.Struct("=BB2x4x32x4xII12xII")
_RTA = struct.Struct("=HH")
_U64 = struct.Struct("=Q")

REQ_LEN = NLMSGHDR.size + _REQ_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size  # 16 + 56
# A request is the netlink header and the request head, in one pack; the socket id; then
# interface 0 and no cookie.
_REQ_START = struct.Struct(NLMSGHDR.format + _REQ_HEAD.format[1:])
_ANY_INTERFACE_NO_COOKIE = _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
MSG_LEN = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size + _MSG_TAIL.size  # 72

PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class SockDiagError(Exception):
    """A malformed or unexpected netlink answer (not 'no such socket')."""


class DiagSocket(NamedTuple):
    """What the kernel says about one socket that attribution uses (a NamedTuple: one per
    new flow). Its addresses are the flow's, known already."""

    family: int
    state: int
    uid: int
    inode: int
    cgroup_id: int | None
    cookie: int = 0  # the socket's cookie, as bpf_get_socket_cookie() gives it


def query_tuple(
    proto: str, src: str, sport: int, dst: str, dport: int
) -> tuple[str, int, str, int]:
    """The tuple to put in the request for a flow seen leaving the host (src = local).

    UDP's exact lookup goes through the receive path, which wants the remote end as source.
    """
    if proto == "udp":
        return dst, dport, src, sport
    return src, sport, dst, dport


def build_request(
    proto: str,
    family: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    *,
    seq: int = 1,
    states: int = 0xFFFFFFFF,
    ext: int = 0,
) -> bytes:
    """An SOCK_DIAG_BY_FAMILY exact-lookup request (no NLM_F_DUMP), tuple taken as given.
    An IPv4 address fills the first 4 bytes of its 16-byte field (struct pads with zeros)."""
    return (
        _REQ_START.pack(REQ_LEN, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0,
                        family, PROTOS[proto], ext, 0, states)
        + _SOCKID.pack(sport, dport, socket.inet_pton(family, src),
                       socket.inet_pton(family, dst))
        + _ANY_INTERFACE_NO_COOKIE
    )


def parse_diag_msg(payload: Buffer, offset: int = 0, end: int | None = None) -> DiagSocket:
    """One inet_diag_msg (+ attributes), in payload[offset:end] → DiagSocket."""
    if end is None:
        end = len(payload)
    if end - offset < MSG_LEN:
        raise SockDiagError(f"inet_diag_msg too short: {end - offset} bytes")
    family, state, cookie_low, cookie_high, uid, inode = _MSG_FIELDS.unpack_from(
        payload, offset)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise SockDiagError(f"unexpected family {family}")
    # positional: a NamedTuple takes keywords at twice the cost, and this runs per flow
    return DiagSocket(family, state, uid, inode, _cgroup_id(payload, offset + MSG_LEN, end),
                      cookie_low | cookie_high << 32)


def _cgroup_id(data: Buffer, off: int, end: int) -> int | None:
    """INET_DIAG_CGROUP_ID among the attributes in data[off:end], if there."""
    while off + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, off)
        if length < _RTA.size or off + length > end:
            return None
        if kind & 0x3FFF == INET_DIAG_CGROUP_ID:
            return _U64.unpack_from(data, off + _RTA.size)[0] if length >= 12 else None
        off += (length + 3) & ~3
    return None


def parse_response(data: Buffer, seq: int | None = None) -> DiagSocket | None:
    """A whole netlink answer → the first socket, or None when the kernel says ENOENT.

    Other netlink errors raise SockDiagError; so do messages for another sequence number.
    """
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, kind, _flags, mseq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            raise SockDiagError("truncated netlink message")
        if seq is not None and mseq != seq:
            off += (length + 3) & ~3
            continue
        if kind == NLMSG_ERROR:
            if length < NLMSGHDR.size + 4:
                raise SockDiagError("truncated netlink error")
            (err,) = struct.unpack_from("=i", data, off + NLMSGHDR.size)
            if err == 0:
                return None
            if -err in (errno.ENOENT, errno.ESRCH):
                return None
            raise SockDiagError(f"netlink error {-err} ({os.strerror(-err)})")
        if kind == NLMSG_DONE:
            return None
        if kind == SOCK_DIAG_BY_FAMILY:
            return parse_diag_msg(data, off + NLMSGHDR.size, off + length)
        off += (length + 3) & ~3
    return None


class SockDiag:
    """A NETLINK_SOCK_DIAG socket that answers one exact-tuple question at a time."""

    def __init__(self, bufsize: int = 8192) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self._sock.bind((0, 0))
        self._buffer = bytearray(bufsize)  # answers are read into it, not into new bytes
        self._view = memoryview(self._buffer)
        self._seq = 0

    def find(
        self, proto: str, family: int, src: str, sport: int, dst: str, dport: int
    ) -> DiagSocket | None:
        """The socket that sent (proto, src:sport → dst:dport), None when there is none."""
        qsrc, qsport, qdst, qdport = query_tuple(proto, src, sport, dst, dport)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        self._sock.send(build_request(proto, family, qsrc, qsport, qdst, qdport, seq=seq))
        while True:
            data = self._view[:self._sock.recv_into(self._buffer)]
            res = parse_response(data, seq)
            # A stale answer from an earlier, abandoned request has another seq: read on.
            if res is not None or _has_seq(data, seq):
                return res

    def close(self) -> None:
        self._sock.close()


def _has_seq(data: Buffer, seq: int) -> bool:
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, _kind, _flags, mseq, _pid = NLMSGHDR.unpack_from(data, off)
        if mseq == seq:
            return True
        if length < NLMSGHDR.size:
            return False
        off += (length + 3) & ~3
    return False
