"""The queue adapter: kernel packets in, verdicts out, nothing else.

NetfilterQueue binds the queue; the adapter reads nfnetlink_queue's packet messages from
its socket and writes the verdicts itself (the codec is at the end of this module):
- it asks the kernel for the sending socket's uid with every packet (NFQA_CFG_F_UID_GID),
  so a flow whose socket is gone by the time it is looked up (a UDP sender that closed
  it after sendto) still has its user;
- with `fail = "open"` it sets NFQA_CFG_F_FAIL_OPEN: a packet the kernel cannot hand to
  the engine (queue full, socket buffer full) passes instead of being dropped;
- it has whole packets copied (NetfilterQueue stops at 4016 bytes), so a DNS answer of
  EDNS size, reassembled from fragments, is read, not cut;
- verdicts leave in trains of up to VERDICT_TRAIN messages, one sendmsg() each, instead of
  one per packet: the kernel moves every accepted packet on inside that call, and doing
  so several at a time cut the engine's CPU per connection by a quarter to a third in the
  connection benchmark.

The handler can never raise into the loop: whatever goes wrong becomes the fail-mode
verdict. Packets are read in bounded batches, so that under a flood the daemon's loop
still gets to its signals, control socket and watchdog.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from nfguard import marks
from nfguard.metrics.counts import Latency
from nfguard.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSGHDR, Buffer

log = logging.getLogger(__name__)

# Bytes of each packet copied to the engine: all of it (the kernel's maximum, 0xFFFF less
# an attribute header). NetfilterQueue's bind takes at most BIND_COPY_RANGE; the adapter's
# config request raises it.
COPY_RANGE = 0xFFFF - 4
BIND_COPY_RANGE = 4016
NFQNL_COPY_PACKET = 2
BATCH = 256  # packets read per process_pending() call before the loop gets a turn
# Verdicts sent together at most: the saving is all there by 8 in the connection benchmark
# (one per send costs a third more CPU per connection), and a packet waits for at most
# seven others' decisions before its own verdict leaves.
VERDICT_TRAIN = 8
RECEIVE_SIZE = 1 << 17  # a packet message is at most COPY_RANGE plus some 200 bytes

# handler(payload, mark, hook, token, uid, indev) -> the mark to accept with, DROP, or HOLD
# (held: the verdict comes later through release(token, mark)). `uid`: the sending socket's
# owner, as the kernel gave it with the packet (None for packets without a local socket);
# `indev`: the index of the interface the packet came in on (0 for locally sent ones).
Handler = Callable[[bytes, int, int, int, "int | None", int], "int | marks.Held"]


class QueueAdapter:
    """Binds one NFQUEUE and answers each packet through `handler`; a held packet's
    token is its packet id."""

    def __init__(
        self, queue_num: int, handler: Handler, fail_open: bool, maxlen: int = 4096,
        latency: Latency | None = None,
    ) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self.handler = handler
        self.fail_open = fail_open
        self.errors = 0
        self.latency = latency if latency is not None else Latency()
        self._queue = NetfilterQueue()
        self._queue.bind(queue_num, _never_called, max_len=maxlen, mode=COPY_PACKET,
                         range=BIND_COPY_RANGE)
        self._sock = socket.socket(fileno=os.dup(self._queue.get_fd()))
        self._sock.setblocking(False)
        self._buffer = bytearray(RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self._header = verdict_header(queue_num)
        self._verdicts: list[bytes] = []
        # Runs after each batch's verdicts left (the pipeline's deferred audit events).
        self.after_batch: Callable[[], None] | None = None
        self._in_batch = False
        # Acknowledged (or refused) later, in the packet stream: see _on_error.
        self._sock.send(queue_config(queue_num, COPY_RANGE, NFQA_CFG_F_UID_GID
                                     | (NFQA_CFG_F_FAIL_OPEN if fail_open else 0),
                                     NFQA_CFG_F_UID_GID | NFQA_CFG_F_FAIL_OPEN))

    def fileno(self) -> int:
        return self._queue.get_fd()

    def process_pending(self) -> None:
        """Answer up to BATCH packets waiting on the socket, without blocking."""
        self._in_batch = True
        try:
            for _ in range(BATCH):
                try:
                    size = self._sock.recv_into(self._buffer)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    continue  # the kernel could not hand us some packets: user_dropped
                self._on_datagram(self._view[:size])
        finally:
            self._in_batch = False
            self._send_verdicts()
            if self.after_batch is not None:
                self.after_batch()

    def close(self) -> None:
        self._queue.unbind()
        self._sock.close()

    def _on_datagram(self, data: memoryview) -> None:
        try:
            for kind, start, end in netlink_messages(data):
                if kind == PACKET_MESSAGE:
                    self._on_packet(data, start, end)
                elif kind == NLMSG_ERROR:
                    self._on_error(data, start, end)
        except QueueMessageError:
            self.errors += 1
            log.exception("unreadable message from the queue")

    def _on_packet(self, data: memoryview, start: int, end: int) -> None:
        started = time.perf_counter_ns()
        queued = read_packet(data, start, end)  # QueueMessageError: no id to answer
        try:
            try:
                new_mark = self.handler(queued.payload, queued.mark, queued.hook,
                                        queued.packet_id, queued.uid, queued.indev)
            except Exception:
                self.errors += 1
                log.exception("packet handler failed")
                new_mark = marks.with_verdict(queued.mark,
                                              marks.ALLOW if self.fail_open else marks.DENY)
            if new_mark is marks.DROP:  # dropped, its flow's ct mark untouched
                self._push(drop_verdict(self._header, queued.packet_id, queued.mark))
            elif new_mark is not marks.HOLD:  # HOLD: held, released later
                self._accept(queued.packet_id, new_mark)
        except BaseException:
            # Without a verdict the kernel drops the packet when the queue closes, and the
            # `settle` chain drops it if accepted bare.
            self.errors += 1
            log.exception("cannot give a verdict")
        self.latency.observe(time.perf_counter_ns() - started)

    def _on_error(self, data: memoryview, start: int, end: int) -> None:
        """The kernel's answer to the config request (0: its acknowledgement), or its
        complaint about a verdict (sent without asking for acknowledgements)."""
        code, request = netlink_error(data, start, end)
        if request != CONFIG_MESSAGE:
            if code:
                self.errors += 1
                log.error("the kernel refused a verdict: %s", os.strerror(code))
            return
        settings = ("whole packets, the uid with each"
                    + (", fail open when full" if self.fail_open else ""))
        if code:
            self.errors += 1
            log.error("the kernel refused the queue's settings (%s): %s", settings,
                      os.strerror(code))
        else:
            log.info("queue set: %s", settings)

    def release(self, token: int, mark: int) -> None:
        """The deferred verdict of a held packet (sent at once outside a batch)."""
        try:
            self._accept(token, mark)
        except BaseException:
            self.errors += 1
            log.exception("cannot give a held packet its verdict")
        if not self._in_batch:
            self._send_verdicts()

    def _accept(self, packet_id: int, mark: int) -> None:
        """Accept with `mark` (the ruleset turns a deny mark into a cut): the verdict joins
        the train, which leaves when full or when the batch ends."""
        self._push(accept_verdict(self._header, packet_id, mark))

    def _push(self, verdict: bytes) -> None:
        self._verdicts.append(verdict)
        if len(self._verdicts) >= VERDICT_TRAIN:
            self._send_verdicts()

    def _send_verdicts(self) -> None:
        """Send the queued verdicts. Should the send fail, their packets stay in the kernel's
        queue (counting against its length) until it is unbound, which drops them: nothing
        passes without a verdict."""
        if not self._verdicts:
            return
        train = b"".join(self._verdicts)
        count = len(self._verdicts)
        self._verdicts.clear()
        try:
            self._sock.send(train)
        except OSError:
            self.errors += count
            log.exception("cannot send %d verdicts", count)


def _never_called(_packet: object) -> None:
    """NetfilterQueue's callback: the adapter reads the socket itself."""
    raise AssertionError("NetfilterQueue read a packet")


# nfnetlink_queue's messages (linux/netfilter/nfnetlink_queue.h): a netlink header, an
# nfgenmsg naming the queue (big-endian), then attributes: host-order headers, big-endian
# values.
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
PACKET_MESSAGE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
CONFIG_MESSAGE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_IFINDEX_INDEV = 1, 2, 3, 5
NFQA_PAYLOAD, NFQA_UID = 10, 16
NFQA_CFG_PARAMS, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 2, 4, 5
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_UID_GID = 1 << 0, 1 << 3
NF_DROP = 0
NF_ACCEPT = 1
_NFGENMSG_SIZE = 4
_ATTR = struct.Struct("=HH")
_ATTR_TYPE = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_PACKET_HDR = struct.Struct(">IHB")  # packet id, hardware protocol, hook
_BE32 = struct.Struct(">I")
_ERROR = struct.Struct("=i")
# bound once: read_packet runs per packet, several attributes each
_unpack_attr = _ATTR.unpack_from
_unpack_packet_hdr = _PACKET_HDR.unpack_from
_unpack_be32 = _BE32.unpack_from
VERDICT_SIZE = 40  # 16 netlink + 4 nfgenmsg + 12 verdict attribute + 8 mark attribute
_VERDICT_BODY = struct.Struct(">IIII")  # verdict, packet id, mark attribute header, mark
_MARK_ATTR = int.from_bytes(struct.pack("=HH", 8, NFQA_MARK), "big")


class QueueMessageError(ValueError):
    """A message from the queue socket that cannot be read."""


class QueuedPacket(NamedTuple):
    packet_id: int
    hook: int  # NF_INET_LOCAL_IN 1, NF_INET_LOCAL_OUT 3, ...
    mark: int
    payload: bytes  # the packet from its IP header, cut at the copy range
    uid: int | None  # the owner of the packet's local socket, when it has one
    indev: int = 0  # the interface it came in on (forwarded, received), 0 if none


def netlink_messages(data: Buffer) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each netlink message in one datagram from the kernel."""
    off = 0
    size = len(data)
    while off + NLMSGHDR.size <= size:
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > size:
            raise QueueMessageError(f"netlink message of {length} bytes at {off} of {size}")
        yield kind, off, off + length
        off += (length + 3) & ~3


def read_packet(data: Buffer, start: int, end: int) -> QueuedPacket:
    """A packet message (NFQNL_MSG_PACKET at data[start:end]) -> what the engine uses.
    QueueMessageError when its attributes overrun it or it has no packet header."""
    packet_id = hook = -1
    mark = 0
    payload = b""
    uid = None
    indev = 0
    off = start + NLMSGHDR.size + _NFGENMSG_SIZE
    while off + 4 <= end:
        length, kind = _unpack_attr(data, off)
        if length < 4 or off + length > end:
            raise QueueMessageError(f"attribute {kind & _ATTR_TYPE} of {length} bytes "
                                    f"overruns its message")
        kind &= _ATTR_TYPE
        if kind <= NFQA_MARK:
            if kind == NFQA_PACKET_HDR and length >= 4 + _PACKET_HDR.size:
                packet_id, _protocol, hook = _unpack_packet_hdr(data, off + 4)
            elif kind == NFQA_MARK and length >= 8:
                (mark,) = _unpack_be32(data, off + 4)
        elif kind == NFQA_PAYLOAD:
            payload = bytes(data[off + 4:off + length])
        elif kind == NFQA_UID and length >= 8:
            (uid,) = _unpack_be32(data, off + 4)
        elif kind == NFQA_IFINDEX_INDEV and length >= 8:
            (indev,) = _unpack_be32(data, off + 4)
        off += (length + 3) & ~3
    if packet_id < 0:
        raise QueueMessageError("packet message without a packet header")
    return QueuedPacket(packet_id, hook, mark, payload, uid, indev)


def netlink_error(data: Buffer, start: int, end: int) -> tuple[int, int]:
    """(errno, type of the request it answers) of an NLMSG_ERROR message, which carries
    the request's header after the error (errno 0: an acknowledgement)."""
    if end - start < 2 * NLMSGHDR.size + _ERROR.size:
        raise QueueMessageError("netlink error message too short")
    (error,) = _ERROR.unpack_from(data, start + NLMSGHDR.size)
    _length, request, _flags, _seq, _pid = NLMSGHDR.unpack_from(
        data, start + NLMSGHDR.size + _ERROR.size)
    return -error, request


def queue_config(queue_num: int, copy_range: int, flags: int, mask: int) -> bytes:
    """NFQNL_MSG_CONFIG copying packets up to `copy_range` bytes and setting the queue's
    `mask` flags to `flags`, acknowledged."""
    attributes = (_ATTR.pack(9, NFQA_CFG_PARAMS) + struct.pack(">IB3x", copy_range,
                                                               NFQNL_COPY_PACKET)
                  + _ATTR.pack(8, NFQA_CFG_MASK) + _BE32.pack(mask)
                  + _ATTR.pack(8, NFQA_CFG_FLAGS) + _BE32.pack(flags))
    return (NLMSGHDR.pack(NLMSGHDR.size + _NFGENMSG_SIZE + len(attributes),
                           CONFIG_MESSAGE,
                           NLM_F_REQUEST | NLM_F_ACK, 0, 0)
            + struct.pack(">BBH", socket.AF_UNSPEC, 0, queue_num) + attributes)


def verdict_header(queue_num: int) -> bytes:
    """Everything before a verdict's own fields, the same for every packet of a queue."""
    return (NLMSGHDR.pack(VERDICT_SIZE, NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT,
                           NLM_F_REQUEST, 0, 0)
            + struct.pack(">BBH", socket.AF_UNSPEC, 0, queue_num)
            + _ATTR.pack(12, NFQA_VERDICT_HDR))


def accept_verdict(header: bytes, packet_id: int, mark: int) -> bytes:
    """The message accepting packet `packet_id` with `mark`, behind `verdict_header`'s."""
    return header + _VERDICT_BODY.pack(NF_ACCEPT, packet_id, _MARK_ATTR, mark)


def drop_verdict(header: bytes, packet_id: int, mark: int) -> bytes:
    """The message dropping packet `packet_id` (its mark as it came: the message's size is
    the verdict header's)."""
    return header + _VERDICT_BODY.pack(NF_DROP, packet_id, _MARK_ATTR, mark)
