"""The verdict path for one queued packet: parse -> decide -> record -> mark.

This is the whole of what happens per packet; the queue adapter only moves bytes and
marks between the kernel and `Pipeline.handle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nfguard import marks
from nfguard.audit import AuditLog, audit_event
from nfguard.engine import Decision, Engine
from nfguard.metrics import Stats
from nfguard.policy.model import ALLOW
from nfguard.wire.errors import WireError
from nfguard.wire.ip import Packet, parse_packet

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self, engine: Engine, audit: AuditLog, stats: Stats,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine  # swapped whole on reload
        self.audit = audit
        self.stats = stats
        self.clock = clock

    def handle(self, payload: bytes, mark: int) -> int:
        """The packet mark to accept the packet with; its verdict bits say allow or deny."""
        self.stats.packets += 1
        engine = self.engine
        packet: Packet | None = None
        try:
            packet = parse_packet(payload)
            decision = engine.decide(packet)
        except WireError:
            self.stats.unparseable += 1
            decision = engine.unparseable()
        except Exception:
            log.exception("engine error; fail-%s verdict", engine.settings.fail)
            self.stats.errors += 1
            decision = engine.failure()
        self.record(decision, packet)
        return marks.with_verdict(mark, marks.ALLOW if decision.verdict == ALLOW else marks.DENY)

    def record(self, decision: Decision, packet: Packet | None) -> None:
        self.stats.count(decision)
        try:
            self.audit.write(audit_event(decision, packet, self.clock()))
        except Exception:
            # A full disk must not change verdicts; it is counted and logged.
            self.stats.errors += 1
            log.exception("cannot write audit event")
