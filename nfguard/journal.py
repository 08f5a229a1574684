"""Log lines journald files under the right priority.

systemd connects a service's stderr to the journal and says so in JOURNAL_STREAM
("DEVICE:INODE" of that stream). journald reads a leading `<N>` on each line as its
syslog priority (sd-daemon(3)), so errors show as errors (`journalctl -p err`) and not
all as the unit's default. Anywhere else (a terminal, a pipe, a file) lines stay plain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import IO

# sd-daemon.h's SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG
PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7
PLAIN_FORMAT = "nfguard: %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(message)s"  # the journal names the unit already


def to_journal(fd: int, environ: Mapping[str, str]) -> bool:
    """Whether `fd` is the stream JOURNAL_STREAM names (not a terminal or pipe a child of
    the service was given in its place)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(fd)
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def priority(level: int) -> int:
    for floor, value in PRIORITIES:
        if level >= floor:
            return value
    return DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """Every line of a record prefixed with its priority: journald splits a multi-line
    message (a policy error with its file and line) into entries, one per line."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def formatter(stream: IO[str], environ: Mapping[str, str]) -> logging.Formatter:
    """The formatter for log lines written to `stream`."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (a test's capture)
        return logging.Formatter(PLAIN_FORMAT)
    return JournalFormatter() if to_journal(fd, environ) else logging.Formatter(PLAIN_FORMAT)
