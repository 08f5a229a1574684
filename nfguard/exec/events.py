"""Which cgroups' `cgroup.events` changed since last asked (inotify, through libc).

A command can run and exit between two looks at `cgroup.events` ("populated 1", then
"populated 0" again); the kernel notifies a file modification on every such change, so
a cgroup found empty after a change has had processes in it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000  # the watch is gone (the cgroup was removed)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class CgroupEvents:
    """Watches `cgroup.events` files by key; `changed()` drains what the kernel said."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self._keys: dict[int, str] = {}  # watch descriptor -> key

    def watch(self, key: str, path: str) -> None:
        """Watch `path` (a cgroup.events file) under `key`; OSError if it cannot be."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MODIFY)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self._keys[wd] = key

    def forget(self, key: str) -> None:
        for wd, watched in list(self._keys.items()):
            if watched == key:
                del self._keys[wd]
                _libc.inotify_rm_watch(self.fd, wd)

    def changed(self) -> set[str]:
        """The keys whose file changed (or went) since the last call."""
        keys: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return keys
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                key = self._keys.get(wd)
                if key is not None:
                    keys.add(key)
                    if mask & IN_IGNORED:
                        del self._keys[wd]

    def close(self) -> None:
        os.close(self.fd)
