"""Slots: concurrent execs never share one; the least recently used is taken first."""

from __future__ import annotations

import os
from pathlib import Path

from nfguard.exec.engine import LABEL_BASE, QUEUE_BASE, Slot


def test_held_slots_are_skipped_and_the_oldest_free_one_is_taken(tmp_path: Path) -> None:
    first = Slot(str(tmp_path))
    second = Slot(str(tmp_path))
    assert first.number != second.number
    first.close()
    for number in range(64):  # every free slot used recently but 5
        lock = tmp_path / f"slot-{number}.lock"
        lock.touch()
        os.utime(lock, (1e9 if number == 5 else 2e9,) * 2)
    third = Slot(str(tmp_path))
    assert third.number == 5
    scope = third.scope("nfguard.exec/5-1-abc", 2)
    assert (scope.table, scope.label, scope.queue) == (
        "nfguard_exec_5", LABEL_BASE + 5, QUEUE_BASE + 5)
    second.close()
    third.close()
