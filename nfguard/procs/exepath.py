"""Whether the path a process's exe link shows names the very file it runs.

/proc/PID/exe reads as a path in the process's own mount namespace. A user namespace costs
nothing (`unshare -Urm`), and in one any user may bind-mount python over /usr/bin/curl:
its exe link then reads /usr/bin/curl. So a path is believed only when, looked up in a
tree the process could not rearrange, it names the same file (device and inode) the
process runs:
- the host's tree (pid 1's root), for a process in the host's mount namespace, or in one
  owned by a user namespace other than the initial one (anyone can make those);
- the process's own root, for a mount namespace owned by the initial user namespace: only
  root can make or change those (a systemd service's private /tmp, a container runtime's),
  and their paths are the process's own (a container's /usr/bin/curl is its image's).
A file deleted or replaced since the process started no longer matches its path either
(an upgraded program matches again once restarted).

Mount namespaces are not cached by their inode number: a freed one's number is reused.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["ExePaths"]

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace owning a namespace


def _identity(path: str, follow: bool = True) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _namespace(path: str) -> str | None:
    """A namespace's identity, as its /proc/PID/ns link reads ("mnt:[4026531841]"): a
    readlink costs half a stat there."""
    try:
        return os.readlink(path)
    except OSError:
        return None


class ExePaths:
    """Checks exe paths against the tree each process must be judged by (see module)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        """The host is pid 1's view; where even root may not look at pid 1 (some sandboxes),
        the engine's own (the same files, but its own /tmp under systemd's PrivateTmp)."""
        self.root = proc_root
        host = "1" if _identity(f"{proc_root}/1/root/") is not None else "self"
        self._host_mounts = _namespace(f"{proc_root}/{host}/ns/mnt")
        self._initial_users = _identity(f"{proc_root}/{host}/ns/user")
        # paths as they are where the engine sees the host's tree itself (half the cost)
        mine = host == "self" or (self._host_mounts == _namespace(f"{proc_root}/self/ns/mnt")
                                  and _identity(f"{proc_root}/1/root/") == _identity("/"))
        self.host_tree = "" if mine and proc_root == "/proc" else f"{proc_root}/{host}/root"

    def names_its_file(self, pid: int, path: str) -> bool:
        """Whether `path` (as pid's exe link shows it) names, in the tree pid is judged
        by, the file pid runs. False when anything cannot be read: never a guess."""
        running = _identity(f"{self.root}/{pid}/exe")
        tree = self.tree(pid)
        if running is None or tree is None or not path.startswith("/"):
            return False
        return _identity(tree + path, follow=False) == running

    def tree(self, pid: int) -> str | None:
        """The root pid's paths are read in: the host's, or its own (see module)."""
        mounts = _namespace(f"{self.root}/{pid}/ns/mnt")
        if mounts is None:
            return None
        if mounts == self._host_mounts:
            return self.host_tree
        return f"{self.root}/{pid}/root" if self._owner(pid) == self._initial_users \
            else self.host_tree

    def _owner(self, pid: int) -> tuple[int, int] | None:
        """The user namespace owning pid's mount namespace."""
        try:
            fd = os.open(f"{self.root}/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            users = fcntl.ioctl(fd, NS_GET_USERNS)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            st = os.fstat(users)
            return st.st_dev, st.st_ino
        finally:
            os.close(users)
