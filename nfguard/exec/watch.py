"""Reloading the policy file when it changes while the command runs (debounced).

The files' (name, size, mtime, inode) are compared on each poll; a change is acted on
once they have stayed the same for DEBOUNCE seconds, so an editor's write-rename-chmod
or a half-written file is read once, whole. Pure: the caller gives the time and does the
reading and the reload.
"""

from __future__ import annotations

import os
from pathlib import Path

DEBOUNCE = 0.3  # seconds the files must stay unchanged before they are read
POLL = 0.25  # seconds between looks


def snapshot(path: str) -> tuple[tuple[str, int, int, int], ...]:
    """What identifies the policy's content cheaply: a file, or a directory's *.toml."""
    target = Path(path)
    files = sorted(target.glob("*.toml")) if target.is_dir() else [target]
    seen = []
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            continue
        seen.append((str(file), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(seen)


class PolicyWatcher:
    def __init__(self, path: str, now: float) -> None:
        self.path = path
        self.loaded = snapshot(path)  # what the running policy was read from
        self._seen = self.loaded
        self._since = now
        self.next_poll = now + POLL

    def due(self, now: float) -> bool:
        """Whether the files changed and have settled: time to reload."""
        if now < self.next_poll:
            return False
        self.next_poll = now + POLL
        current = snapshot(self.path)
        if current != self._seen:
            self._seen, self._since = current, now
            return False
        return current != self.loaded and now - self._since >= DEBOUNCE

    def reloaded(self) -> None:
        """The current files were read (applied or rejected): no reload until they change."""
        self.loaded = self._seen
