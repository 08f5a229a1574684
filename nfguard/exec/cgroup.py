"""The command's transient cgroup v2: `nfguard.exec/<id>` under the v2 root.

The child joins it before it execs the command, so every process the command starts
(forked, setsid, daemonised) is in it, and nothing else is: a cgroup is inherited across
fork and only root can move a process out. The ruleset and the service know the command
by this path. Hybrid hierarchies (cgroup v2 at /sys/fs/cgroup/unified) work the same.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time

from nfguard.procs.cgroups import find_cgroup2_root, parse_proc_cgroup, parse_procs
from nfguard.procs.sockdiag import SockDiag

SLICE = "nfguard.exec"  # nfguard's own parent of every command's cgroup
KILL_WAIT = 5.0  # seconds to wait for a killed cgroup to empty


class CgroupError(RuntimeError):
    """No cgroup v2 to run the command in; the message says what is needed."""


class Cgroup:
    """One command's cgroup: `path` relative to the v2 root (what nft and the service
    are given), `directory` where it is in the file system."""

    def __init__(self, root: str, path: str) -> None:
        self.root = root
        self.path = path
        self.directory = os.path.join(root, path)

    @property
    def level(self) -> int:
        """Its depth below the root (`socket cgroupv2 level N`)."""
        return self.path.count("/") + 1

    @classmethod
    def create(cls, name: str, root: str | None = None) -> Cgroup:
        root = root or find_cgroup2_root()
        if root is None:
            raise CgroupError(
                "no cgroup v2 file system is mounted (neither /sys/fs/cgroup nor "
                "/sys/fs/cgroup/unified): nfguard exec needs one to know the command's "
                "processes; mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot "
                "with systemd.unified_cgroup_hierarchy=1")
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(root, SLICE), 0o755)
        cgroup = cls(root, f"{SLICE}/{name}")
        try:
            os.mkdir(cgroup.directory, 0o755)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {cgroup.directory}: {exc}") from None
        return cgroup

    @classmethod
    def create_delegated(cls, name: str, root: str | None = None) -> Cgroup:
        """For a user who is not root: under the highest cgroup above its own that is
        delegated to it (its directory and cgroup.procs its uid's, as systemd's
        user@UID.service is), so it may move its child there."""
        root = root or find_cgroup2_root()
        if root is None:
            raise CgroupError("no cgroup v2 file system is mounted: nfguard exec needs one")
        with open("/proc/self/cgroup") as f:
            own = parse_proc_cgroup(f.read()) or "/"
        uid, base = os.getuid(), None
        parts = own.strip("/").split("/") if own.strip("/") else []
        for depth in range(len(parts), 0, -1):
            candidate = os.path.join(root, *parts[:depth])
            if not _owned(candidate, uid):
                break
            base = "/".join(parts[:depth])
        if base is None:
            raise CgroupError(
                f"no cgroup is delegated to uid {uid} (yours is {own}): run nfguard exec as "
                "root (sudo), or from a systemd login session, whose user@UID.service is")
        cgroup = cls(root, f"{base}/{SLICE}-{name}")
        try:
            os.mkdir(cgroup.directory, 0o755)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {cgroup.directory}: {exc}") from None
        return cgroup

    def join(self, pid: int = 0) -> None:
        """Move a process (0: the caller) into the cgroup."""
        with open(os.path.join(self.directory, "cgroup.procs"), "w") as f:
            f.write(str(pid or os.getpid()))

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.directory, "cgroup.procs"), "rb") as f:
                return parse_procs(f.read())
        except FileNotFoundError:
            return []

    def kill(self, wait: float = KILL_WAIT) -> None:
        """SIGKILL every process in it (cgroup.kill, Linux 5.14+; else one by one, again
        until none is left: a fork racing the loop lands in the cgroup too)."""
        deadline = time.monotonic() + wait
        kill_file = os.path.join(self.directory, "cgroup.kill")
        while self.pids() and time.monotonic() < deadline:
            try:
                with open(kill_file, "w") as f:
                    f.write("1")
            except FileNotFoundError:
                if not os.path.isdir(self.directory):
                    return
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def tags_sockets(self) -> bool:
        """Whether the kernel records this cgroup on the sockets its processes make (what
        the ruleset's classifier and attribution read): not so once a cgroup v1 net_cls or
        net_prio controller was configured on a hybrid host. Tried with a listening socket
        made by a process in the cgroup, asked of sock_diag; nothing is sent."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                self.join()
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probe.bind(("127.0.0.1", 0))  # no route needed: loopback may be down
                probe.listen(1)
                os.write(write_end, str(probe.getsockname()[1]).encode())
                os.close(write_end)
                signal.pause()  # until killed, holding the socket
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            port = int(os.read(read_end, 16) or 0)
            if not port:
                raise CgroupError("cannot make a socket in the command's cgroup to check it")
            diag = SockDiag()
            try:
                found = diag.find("tcp", socket.AF_INET, "127.0.0.1", port, "0.0.0.0", 0)
            finally:
                diag.close()
            return found is not None and found.cgroup_id == os.stat(self.directory).st_ino
        finally:
            os.close(read_end)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    def remove(self) -> None:
        """Kill what is left and remove the directory (and nfguard's slice, once empty)."""
        self.kill()
        parent = os.path.dirname(self.directory)
        ours = (self.directory, parent) if os.path.basename(parent) == SLICE else (
            self.directory,)
        for directory in ours:
            try:
                os.rmdir(directory)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    raise
                if directory == self.directory and exc.errno != errno.ENOENT:
                    raise


def _owned(directory: str, uid: int) -> bool:
    try:
        return (os.stat(directory).st_uid == uid
                and os.stat(os.path.join(directory, "cgroup.procs")).st_uid == uid)
    except OSError:
        return False
