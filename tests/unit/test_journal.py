"""Log lines carry journald's priority prefixes only when stderr is the journal."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nfguard.journal import JournalFormatter, formatter, priority, to_journal


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("nfguard", level, __file__, 1, message, None, None)


def test_priorities_per_level() -> None:
    assert [priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING,
                                          logging.INFO, logging.DEBUG)] == [3, 3, 4, 6, 7]


def test_every_line_of_a_record_is_prefixed() -> None:
    text = JournalFormatter().format(record(logging.ERROR, "reload rejected:\na.toml:3: bad"))
    assert text == "<3>ERROR reload rejected:\n<3>a.toml:3: bad"
    assert JournalFormatter().format(record(logging.WARNING, "w")) == "<4>WARNING w"
    assert JournalFormatter().format(record(logging.INFO, "i")) == "<6>INFO i"


def test_journal_stream_must_name_this_very_stream(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream, (tmp_path / "other").open("w") as other:
        status = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert to_journal(stream.fileno(), env)
        assert isinstance(formatter(stream, env), JournalFormatter)
        # a child given another stderr (a pipe, a file) but the service's environment
        assert not to_journal(other.fileno(), env)
        assert not isinstance(formatter(other, env), JournalFormatter)
        assert not to_journal(stream.fileno(), {})
        assert not to_journal(stream.fileno(), {"JOURNAL_STREAM": "junk"})
        plain = formatter(other, env).format(record(logging.ERROR, "e"))
        assert plain == "nfguard: ERROR e"
