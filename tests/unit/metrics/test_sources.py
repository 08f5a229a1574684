"""The sources read at scrape time: the kernel's queue counters."""

from __future__ import annotations

from pathlib import Path

from nfguard.metrics.sources import parse_nfqueue, read_nfqueue
from tests.unit.metrics.samples import NFQUEUE_TEXT


def test_parse_nfqueue() -> None:
    queues = parse_nfqueue(NFQUEUE_TEXT + "garbage line\n\n")
    assert set(queues) == {0, 5}
    q = queues[0]
    assert (q.queue, q.peer_portid, q.length, q.copy_range, q.dropped, q.user_dropped) == (
        0, 23927, 3, 4016, 1500, 27)


def test_read_nfqueue(tmp_path: Path) -> None:
    path = tmp_path / "nfnetlink_queue"
    path.write_text(NFQUEUE_TEXT)
    assert read_nfqueue(5, str(path)).dropped == 0  # type: ignore[union-attr]
    assert read_nfqueue(9, str(path)) is None
    assert read_nfqueue(0, str(tmp_path / "missing")) is None
