"""Executables hashed once per file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nfguard.procs.exehash import ExeHashes


def test_exe_hashes_once_per_file(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"\x7fELF" + b"x" * 100_000)
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "exe").symlink_to(binary)
    hashes = ExeHashes(str(tmp_path / "proc"))
    want = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert hashes.sha256(7) == want and hashes.sha256(7) == want
    assert hashes.hashed == 1
    binary.write_bytes(b"\x7fELF" + b"y" * 100_000)  # rebuilt in place: mtime moves
    os.utime(binary, ns=(1, 1))
    assert hashes.sha256(7) == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert hashes.hashed == 2
    assert hashes.sha256(8) is None  # no such process
