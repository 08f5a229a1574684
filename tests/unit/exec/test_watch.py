"""The policy file watcher: a change is acted on once, after it settled."""

from __future__ import annotations

import os
from pathlib import Path

from nfguard.exec.watch import DEBOUNCE, POLL, PolicyWatcher


def test_a_change_is_due_once_it_has_settled(tmp_path: Path) -> None:
    policy = tmp_path / "egress.toml"
    policy.write_text("a")
    watcher = PolicyWatcher(str(policy), now=0.0)
    now = POLL
    assert not watcher.due(now)  # nothing changed
    policy.write_text("bb")
    os.utime(policy, ns=(1, 1))
    now += POLL
    assert not watcher.due(now)  # just changed: not yet
    now += max(POLL, DEBOUNCE)
    assert watcher.due(now)
    watcher.reloaded()
    now += POLL
    assert not watcher.due(now)  # read once


def test_polls_are_spaced_and_a_directory_is_watched_whole(tmp_path: Path) -> None:
    watcher = PolicyWatcher(str(tmp_path), now=0.0)
    (tmp_path / "new.toml").write_text("x")
    assert not watcher.due(POLL / 10)  # too soon to look
    assert not watcher.due(POLL)  # seen now
    assert watcher.due(POLL + max(POLL, DEBOUNCE))
