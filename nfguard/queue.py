"""The NetfilterQueue adapter: kernel packets in, verdicts out, nothing else.

Its callback can never raise (an exception there would unbind the queue): whatever goes
wrong becomes the fail-mode verdict. Packets are read in bounded batches, so that under a
flood the daemon's loop still gets to its signals, control socket and watchdog.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable

from nfguard import marks
from nfguard.metrics import Latency

log = logging.getLogger(__name__)

# Headers for decisions now; ClientHellos and DNS answers need more, up to what
# NetfilterQueue can copy (4016 bytes).
COPY_RANGE = 4016
BATCH = 256  # packets read per process_pending() call before the loop gets a turn


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

    def fileno(self) -> int:
        return self._queue.get_fd()

    def process_pending(self) -> None:
        """Answer up to BATCH packets waiting on the socket, without blocking."""
        self._batch.left = BATCH
        self._queue.run_socket(self._batch)

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
                packet.set_mark(new_mark)  # type: ignore[attr-defined]
                packet.accept()  # type: ignore[attr-defined]
        except BaseException:
            # Nothing may escape into NetfilterQueue; without a verdict the kernel drops the
            # packet when the queue closes, and the `verdict` chain drops it if accepted bare.
            self.errors += 1
            log.exception("cannot give a verdict")
        self.latency.observe(time.perf_counter_ns() - started)

    def release(self, packet: object, mark: int) -> None:
        """The deferred verdict of a held packet."""
        try:
            packet.set_mark(mark)  # type: ignore[attr-defined]
            packet.accept()  # type: ignore[attr-defined]
        except BaseException:
            self.errors += 1
            log.exception("cannot give a held packet its verdict")


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
