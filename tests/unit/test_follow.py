"""Following the audit log across the ways logrotate moves it."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from nfguard.follow import Follower, rotated, tail_offset


def append(path: Path, *lines: str) -> None:
    with path.open("a") as file:
        file.write("".join(line + "\n" for line in lines))


def test_new_lines_only_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append(path, "a")
    tail = Follower(str(path))
    assert tail.poll() == [b"a"]
    assert tail.poll() == []
    with path.open("a") as file:
        file.write("b\nc-half")
    assert tail.poll() == [b"b"]
    append(path, "-done")
    assert tail.poll() == [b"c-half-done"]


def test_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append(path, "old")
    tail = Follower(str(path), None)
    assert tail.poll() == []
    append(path, "new")
    assert tail.poll() == [b"new"]


def test_rename_and_reopen(tmp_path: Path) -> None:
    """logrotate's default: rename, then the writer reopens its path (SIGUSR1)."""
    path = tmp_path / "audit.jsonl"
    append(path, "1")
    tail = Follower(str(path))
    assert tail.poll() == [b"1"]
    writer = path.open("a")
    path.rename(tmp_path / "audit.jsonl.1")
    assert tail.poll() == [], "between the rename and the reopen"
    writer.write("2\n")  # the writer had not reopened yet
    writer.close()
    append(path, "3")  # reopened: a new file
    assert tail.poll() == [b"2"], "the old file's last lines first"
    assert tail.poll() == [b"3"]
    append(path, "4")
    assert tail.poll() == [b"4"]


def test_copytruncate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append(path, "1", "2")
    tail = Follower(str(path))
    assert tail.poll() == [b"1", b"2"]
    os.truncate(path, 0)
    assert tail.poll() == []
    append(path, "3")
    assert tail.poll() == [b"3"]


def test_a_file_that_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    tail = Follower(str(path), None)
    assert tail.poll() == []
    append(path, "first")
    assert tail.poll() == [b"first"], "a new file is read from its start"


def test_rotated_files_since(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("now\n")
    one, two = tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2.gz"
    one.write_text("x\n")
    two.write_bytes(gzip.compress(b"y\n"))
    (tmp_path / "other.jsonl.1").write_text("z\n")
    os.utime(two, (1000, 1000))
    os.utime(one, (2000, 2000))
    assert rotated(str(path), 0) == [str(two), str(one)], "oldest first"
    assert rotated(str(path), 1500) == [str(one)], "written before --since: not read"


def test_tail_offset_starts_at_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    append(path, "a" * 10, "b" * 10, "c" * 10)
    assert tail_offset(str(path), 100) == 0
    assert tail_offset(str(path), 15) == 22
    assert tail_offset(str(tmp_path / "none")) == 0
