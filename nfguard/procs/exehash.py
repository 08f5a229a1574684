"""SHA-256 of the executable a process runs, for `match.sha256`.

Why through /proc/PID/exe: opening it gives the very file the kernel mapped, even when the
path was since replaced or unlinked, so an attacker cannot swap the file between our check
and the process's exec. Each file is hashed once per (device, inode, mtime, size): a
rebuilt or upgraded binary changes one of them and is hashed again.
"""

from __future__ import annotations

import hashlib
import os

from nfguard.lru import LRU

FileKey = tuple[int, int, int, int]


class ExeHashes:
    """pid → hex SHA-256 of its executable, cached per file identity (bounded, LRU)."""

    def __init__(self, proc_root: str = "/proc", cap: int = 1024) -> None:
        self.root = proc_root
        self.hashed = 0  # files read in full (cache misses)
        self.digests: LRU[FileKey, str] = LRU(cap)

    def sha256(self, pid: int) -> str | None:
        """None when the process is gone or its executable cannot be opened."""
        try:
            fd = os.open(f"{self.root}/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            try:
                st = os.fstat(fd)
            except OSError:
                return None
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            digest = self.digests.get(key)
            if digest is not None:
                return digest
            try:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
            except OSError:
                return None
        self.hashed += 1
        self.digests.put(key, digest)
        return digest
