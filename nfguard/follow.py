"""Reading the audit log for `nfguard log`: what is there, rotated files too, then what
comes (`-f`), across rotation; each line shown as nfguard.logview makes it.

logrotate renames the file and nfguard reopens its path on SIGUSR1 (a new inode), or
copies and truncates it (`copytruncate`: the same inode, shorter). The follower polls:
a new inode at the path means the old file is read to its end and the new one from its
start; a file shorter than what was read means it was truncated, and it is read again
from its start. A line is handed out only once it is whole.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import IO

from nfguard import logview

TAIL_LINES = 10  # what `-f` shows of the past, unless told
POLL = 0.1  # seconds between looks at a file that did not grow: a deny shows within it
TAIL_BYTES = 1 << 20  # `-f` without --since starts this far before the file's end
CHUNK = 1 << 20  # bytes read at once
MAX_LINE = 1 << 20  # a longer "line" is no audit event: dropped unread


def rotated(path: str, since: float) -> list[str]:
    """The rotated files of `path` (logrotate's `path.1`, `path.2.gz`, `path-20261207`)
    last written at or after `since`, oldest first."""
    found = []
    for sibling in {*glob.glob(glob.escape(path) + ".*"), *glob.glob(glob.escape(path) + "-*")}:
        with contextlib.suppress(OSError):
            mtime = os.stat(sibling).st_mtime
            if mtime >= since and os.path.isfile(sibling):
                found.append((mtime, sibling))
    return [name for _, name in sorted(found)]


def read_lines(path: str) -> Iterator[bytes]:
    """Every line of a file (gzip when its name says so), without its line end."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as file:
        for line in file:
            if line := line.rstrip(b"\n"):
                yield line


class Follower:
    """The lines appended to `path`, from `offset` (None: from its end), across rotation.

    `poll()` never blocks; a path that does not exist yet (or between a rename and the
    reopen) is looked for again on the next poll.
    """

    def __init__(self, path: str, offset: int | None = 0) -> None:
        self.path = path
        self._start = offset
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None
        self._partial = b""
        if not self._open():
            self._start = 0  # a file that appears later is read from its start

    def _open(self) -> bool:
        try:
            file = open(self.path, "rb")  # noqa: SIM115 (kept open across polls)
        except FileNotFoundError:
            return False
        status = os.fstat(file.fileno())
        if self._start is None:
            file.seek(status.st_size)
        elif self._start:
            file.seek(min(self._start, status.st_size))
        self._start = 0  # a file that appears later is read from its start
        self._file, self._identity = file, (status.st_dev, status.st_ino)
        self._partial = b""
        return True

    def poll(self) -> list[bytes]:
        """The whole lines written since the last poll (at most about CHUNK bytes of them:
        call again until it returns none)."""
        if self._file is None and not self._open():
            return []
        assert self._file is not None
        lines, more = self._read(self._file)
        if more:
            return lines
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return lines  # renamed; the writer's reopen makes the next one
        if (status.st_dev, status.st_ino) != self._identity:
            lines += self._drain(self._file)  # written to the old file before the reopen
            self._close()
            self._open()
        elif status.st_size < self._file.tell():  # copytruncate
            self._file.seek(0)
            self._partial = b""
        return lines

    def _drain(self, file: IO[bytes]) -> list[bytes]:
        lines, more = self._read(file)
        while more:
            chunk, more = self._read(file)
            lines += chunk
        return lines

    def _read(self, file: IO[bytes]) -> tuple[list[bytes], bool]:
        """Lines from the next CHUNK bytes; True when there may be more already."""
        data = file.read(CHUNK)
        if not data:
            return [], False
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:
            self._partial = b""
        return [line for line in lines if line], len(data) == CHUNK

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def close(self) -> None:
        self._close()


def tail_offset(path: str, tail: int = TAIL_BYTES) -> int:
    """Where to start reading `path` to see its last `tail` bytes, at a line's start."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    if size <= tail:
        return 0
    with open(path, "rb") as file:
        file.seek(size - tail)
        skipped = file.readline()  # the cut line
        return size - tail + len(skipped)



def show(path: str, wanted: logview.Filter, *, follow: bool, lines: int | None,
         as_json: bool, colour: bool) -> int:
    """`nfguard log`: print the wanted events of `path` (after its rotated files written
    since `wanted.since`), only the last `lines` of them if given, then with `follow` what
    comes. Exit status 1 when a file cannot be read."""
    if lines is None and follow and wanted.since is None:
        lines = TAIL_LINES
    kept: deque[str] | None = deque(maxlen=max(lines, 0)) if lines is not None else None
    skipped = 0

    def out(line: bytes) -> None:
        nonlocal skipped
        event = logview.parse_event(line)
        if event is None:
            skipped += 1
        elif wanted.wants(event):
            text = line.decode("utf-8", "replace") if as_json else logview.render(event, colour)
            if kept is not None:
                kept.append(text)
            else:
                print(text, flush=follow)

    try:
        since = wanted.since
        for older in rotated(path, since) if since is not None else ():
            for line in read_lines(older):
                out(line)
        if not follow:
            if os.path.exists(path) or since is None:
                for line in read_lines(path):
                    out(line)
        else:
            # Without --since, the past is looked for in the file's last TAIL_BYTES only.
            tail = Follower(path, tail_offset(path) if since is None else 0)
            while news := tail.poll():
                for line in news:
                    out(line)
        if kept is not None:
            print("\n".join(kept), end="\n" if kept else "", flush=True)
            kept = None
        if skipped:
            print(f"nfguard log: skipped {skipped} lines that are not audit events",
                  file=sys.stderr)
        while follow:
            news = tail.poll()
            for line in news:
                out(line)
            if not news:
                time.sleep(POLL)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `nfguard log | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, EOFError) as exc:
        print(f"nfguard log: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    return 0
