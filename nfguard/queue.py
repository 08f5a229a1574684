"""The NetfilterQueue adapter: kernel packets in, verdicts out, nothing else.

Its callback can never raise (an exception there would unbind the queue): whatever goes
wrong becomes the fail-mode verdict. Packets are read in bounded batches, so that under a
flood the daemon's loop still gets to its signals, control socket and watchdog.

Verdicts leave in trains of up to VERDICT_TRAIN netlink messages, one sendmsg() each,
instead of one per packet as NetfilterQueue sends them: the kernel moves every accepted
packet on inside that call, and doing so several at a time cut the engine's CPU per
connection by a quarter to a third in the connection benchmark.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from nfguard import marks
from nfguard.metrics import Latency

log = logging.getLogger(__name__)

# Headers for decisions now; ClientHellos and DNS answers need more, up to what
# NetfilterQueue can copy (4016 bytes).
COPY_RANGE = 4016
BATCH = 256  # packets read per process_pending() call before the loop gets a turn
# Verdicts sent together at most: the saving is all there by 8 in the connection benchmark
# (one per send costs a third more CPU per connection), and a packet waits for at most
# seven others' decisions before its own verdict leaves.
VERDICT_TRAIN = 8


class QueueAdapter:
    """Binds one NFQUEUE and answers each packet with
    `handler(payload, mark, hook, packet) -> mark`, or, when the handler returns None,
    later through `release(packet, mark)` (a held packet: NetfilterQueue takes a verdict on
    the stored packet object after the callback has returned).
    """

    def __init__(
        self, queue_num: int, handler: Callable[[bytes, int, int, object], int | None],
        fail_open: bool, maxlen: int = 4096, latency: Latency | None = None,
    ) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self.handler = handler
        self.fail_open = fail_open
        self.errors = 0
        self.latency = latency if latency is not None else Latency()
        self._queue = NetfilterQueue()
        self._queue.bind(queue_num, self._on_packet, max_len=maxlen, mode=COPY_PACKET,
                         range=COPY_RANGE)
        # NetfilterQueue's run(block=False) reads until the socket is empty, which under a
        # flood is never; run_socket() through a view that stops after BATCH reads is not.
        self._sock = socket.socket(fileno=os.dup(self._queue.get_fd()))
        self._sock.setblocking(False)
        self._batch = _Batch(self._sock)
        self._header = verdict_header(queue_num)
        self._verdicts: list[bytes] = []
        self._in_batch = False

    def fileno(self) -> int:
        return self._queue.get_fd()

    def process_pending(self) -> None:
        """Answer up to BATCH packets waiting on the socket, without blocking."""
        self._batch.left = BATCH
        self._in_batch = True
        try:
            self._queue.run_socket(self._batch)  # type: ignore[arg-type]  # reads .recv only
        finally:
            self._in_batch = False
            self._send_verdicts()

    def close(self) -> None:
        self._queue.unbind()
        self._sock.close()

    def _on_packet(self, packet: object) -> None:
        started = time.perf_counter_ns()
        try:
            mark = packet.get_mark()  # type: ignore[attr-defined]
            try:
                new_mark = self.handler(packet.get_payload(), mark,  # type: ignore[attr-defined]
                                        packet.hook, packet)  # type: ignore[attr-defined]
            except Exception:
                self.errors += 1
                log.exception("packet handler failed")
                new_mark = marks.with_verdict(mark, marks.ALLOW if self.fail_open else marks.DENY)
            if new_mark is not None:  # None: held, released later
                self._accept(packet, new_mark)
        except BaseException:
            # Nothing may escape into NetfilterQueue; without a verdict the kernel drops the
            # packet when the queue closes, and the `verdict` chain drops it if accepted bare.
            self.errors += 1
            log.exception("cannot give a verdict")
        self.latency.observe(time.perf_counter_ns() - started)

    def release(self, packet: object, mark: int) -> None:
        """The deferred verdict of a held packet (sent at once outside a batch)."""
        try:
            self._accept(packet, mark)
        except BaseException:
            self.errors += 1
            log.exception("cannot give a held packet its verdict")
        if not self._in_batch:
            self._send_verdicts()

    def _accept(self, packet: object, mark: int) -> None:
        """Accept with `mark` (the ruleset turns a deny mark into a cut): the verdict joins
        the train, which leaves when full or when the batch ends."""
        self._verdicts.append(accept_verdict(self._header, packet.id,  # type: ignore[attr-defined]
                                             mark))
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


# nfnetlink_queue's verdict message (linux/netfilter/nfnetlink_queue.h): a netlink header,
# an nfgenmsg naming the queue (big-endian), then NFQA_VERDICT_HDR (verdict and packet id)
# and NFQA_MARK, both big-endian behind host-order attribute headers.
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT = 1
NLM_F_REQUEST = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NF_ACCEPT = 1
VERDICT_SIZE = 40  # 16 netlink + 4 nfgenmsg + 12 verdict attribute + 8 mark attribute
_VERDICT_BODY = struct.Struct(">IIII")  # verdict, packet id, mark attribute header, mark
_MARK_ATTR = int.from_bytes(struct.pack("=HH", 8, NFQA_MARK), "big")


def verdict_header(queue_num: int) -> bytes:
    """Everything before a verdict's own fields, the same for every packet of a queue."""
    return (struct.pack("=IHHII", VERDICT_SIZE, NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT,
                        NLM_F_REQUEST, 0, 0)
            + struct.pack(">BBH", socket.AF_UNSPEC, 0, queue_num)
            + struct.pack("=HH", 12, NFQA_VERDICT_HDR))


def accept_verdict(header: bytes, packet_id: int, mark: int) -> bytes:
    """The message accepting packet `packet_id` with `mark`, behind `verdict_header`'s."""
    return header + _VERDICT_BODY.pack(NF_ACCEPT, packet_id, _MARK_ATTR, mark)


class _Batch:
    """The queue socket as run_socket() sees it: EAGAIN once `left` reads were made."""

    __slots__ = ("left", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = 0

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        return self.sock.recv(size)
