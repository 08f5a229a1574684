"""The NetfilterQueue adapter: kernel packets in, verdicts out, nothing else.

Its callback can never raise (an exception there would unbind the queue): whatever goes
wrong becomes the fail-mode verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nfguard import marks

log = logging.getLogger(__name__)

# Headers for decisions now; ClientHellos and DNS answers need more, up to what
# NetfilterQueue can copy (4016 bytes).
COPY_RANGE = 4016
QUEUE_MAXLEN = 4096


class QueueAdapter:
    """Binds one NFQUEUE and answers each packet with
    `handler(payload, mark, hook, packet) -> mark`, or, when the handler returns None,
    later through `release(packet, mark)` (a held packet: NetfilterQueue takes a verdict on
    the stored packet object after the callback has returned).
    """

    def __init__(
        self, queue_num: int, handler: Callable[[bytes, int, int, object], int | None],
        fail_open: bool,
    ) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self.handler = handler
        self.fail_open = fail_open
        self.errors = 0
        self._queue = NetfilterQueue()
        self._queue.bind(queue_num, self._on_packet, max_len=QUEUE_MAXLEN, mode=COPY_PACKET,
                         range=COPY_RANGE)

    def fileno(self) -> int:
        return self._queue.get_fd()

    def process_pending(self) -> None:
        """Answer every packet waiting on the socket, without blocking."""
        self._queue.run(block=False)

    def close(self) -> None:
        self._queue.unbind()

    def _on_packet(self, packet: object) -> None:
        try:
            mark = packet.get_mark()  # type: ignore[attr-defined]
            try:
                new_mark = self.handler(packet.get_payload(), mark,  # type: ignore[attr-defined]
                                        packet.hook, packet)  # type: ignore[attr-defined]
            except Exception:
                self.errors += 1
                log.exception("packet handler failed")
                new_mark = marks.with_verdict(mark, marks.ALLOW if self.fail_open else marks.DENY)
            if new_mark is None:
                return  # held: released later
            packet.set_mark(new_mark)  # type: ignore[attr-defined]
            packet.accept()  # type: ignore[attr-defined]
        except BaseException:
            # Nothing may escape into NetfilterQueue; without a verdict the kernel drops the
            # packet when the queue closes, and the `verdict` chain drops it if accepted bare.
            self.errors += 1
            log.exception("cannot give a verdict")

    def release(self, packet: object, mark: int) -> None:
        """The deferred verdict of a held packet."""
        try:
            packet.set_mark(mark)  # type: ignore[attr-defined]
            packet.accept()  # type: ignore[attr-defined]
        except BaseException:
            self.errors += 1
            log.exception("cannot give a held packet its verdict")
