"""The service's side of `nfguard exec`: the control requests that add, change and end a
command's transient client (nfguard.exec.transient), and who may make them.

Requests (one JSON line each, on the control socket):
- `exec_ping` -> {cgroup_root, stacked} : whether this service takes exec requests (not
  with `engine.workers > 1`, nor without cgroup v2), and whether the asker's would be
  stacked on the host's policy;
- `exec_begin` {cgroup, policy, policy_name, allow, mode, label} -> {client} : the cgroup
  (a path under the cgroup v2 root) and everything below it are judged by `policy`
  (nfguard's policy format: a TOML text named `policy_name`, or a list of [file name,
  text] pairs) with the `allow` one-liners (`--allow`) in front, as the private engine
  composes them (nfguard.exec.policy), in `mode` ("enforce", "audit", "allow_all"); a
  policy with errors is refused with file:line;
- `exec_policy` {client, policy, policy_name, allow} : its policy replaced (the command's
  file was edited); on errors the old one stays and the answer says why;
- `exec_end` {client} -> {flows, lost} : removed, with the flow records of what it reached.

Who may ask. Root (or the daemon's own user) may put any cgroup under any policy, which
replaces the host's decision for it. A member of `[control] group` may only cover a
cgroup of its own: the directory and its `cgroup.procs` are its uid's (a delegated
subtree, as systemd's `user@.service` gives each user) and every process in it and below
runs with that uid only (real, effective, saved, file system); its client is stacked on the
host's decision (both must allow), so whatever mode or policy it asks for, nothing leaves
that the host's policy denies. It may change or end only its own clients, and hold at
most MAX_PER_USER at once. Every check uses the kernel's credentials of the connection
(SO_PEERCRED), never what the request says.

When a client goes: on `exec_end`; when its cgroup empties after processes ran in it (or
the cgroup is removed); when its requester (the connecting process) has died and nothing
ever ran in the cgroup. A requester that dies while the command runs (`kill -9` of exec)
does not free the command: its client stays until the cgroup empties, and the cgroup is
then removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfguard.control import Peer, Reply
from nfguard.engine import Engine
from nfguard.exec.events import CgroupEvents
from nfguard.exec.transient import (
    EXEC_MODES,
    ExecMode,
    Transient,
    Transients,
    compile_transient,
    normalize_cgroup,
)
from nfguard.policy.load import PolicyError

log = logging.getLogger(__name__)

# Open to [control] group members too.
COMMANDS = ("exec_ping", "exec_begin", "exec_policy", "exec_end")
# Characters of policy text (and --allow values) in one request: it is compiled in the
# engine's loop, no decision meanwhile (some 10,000 rules, ~0.2 s; a group member's 1/8).
MAX_POLICY = 512 * 1024
MAX_POLICY_UNPRIVILEGED = MAX_POLICY // 8
MAX_PER_USER = 16  # transient clients one non-root uid may hold at once
MAX_TRANSIENTS = 256  # all of them
MAX_LABEL = 200


class Refused(Exception):
    """A request that is not served; its message is the answer's "error"."""


class ExecRequests:
    """The exec requests of one running service, and the upkeep of their clients."""

    def __init__(self, transients: Transients, host: Callable[[], Engine],
                 cgroup_root: str | None, changed: Callable[[], None] = lambda: None,
                 refusal: str | None = None) -> None:
        self.transients = transients
        self.host = host  # the running engine (a reload swaps it)
        self.cgroup_root = cgroup_root  # where cgroup v2 is mounted; None: not at all
        self.changed = changed  # a client came or went (the ruleset may need queries)
        self.refusal = refusal  # why this service serves no exec at all, if it does not
        self._pidfds: dict[str, int] = {}  # client -> pidfd of its requester
        # Cgroups of dead requesters to remove: the command's last process may still be a
        # zombie its new parent has not reaped when the cgroup reads empty (rmdir: EBUSY).
        self._orphans: set[Path] = set()
        # A command that ran and ended between two looks; None: no inotify (then only
        # what a look sees counts, about once a second).
        self._events: CgroupEvents | None = None
        try:
            self._events = CgroupEvents()
        except OSError as exc:
            log.warning("exec: no inotify (%s): a command's end is seen by polling", exc)

    def handlers(self) -> dict[str, Callable[[dict[str, Any], Reply], dict[str, Any]]]:
        """Command -> control handler."""
        def serve(method: Callable[[dict[str, Any], Peer], dict[str, Any]]) -> Callable[
                [dict[str, Any], Reply], dict[str, Any]]:
            def handler(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
                try:
                    return method(request, reply.peer)
                except Refused as exc:
                    log.warning("%s from pid %d (uid %d) refused: %s", request["command"],
                                reply.peer.pid, reply.peer.uid, exc)
                    return {"ok": False, "error": str(exc)}
            return handler
        return {"exec_ping": serve(self.ping), "exec_begin": serve(self.begin),
                "exec_policy": serve(self.policy), "exec_end": serve(self.end)}

    # -- requests ------------------------------------------------------------------------
    def ping(self, _request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Whether this service takes exec requests (`nfguard exec` asks before begin)."""
        if self.refusal is not None:
            raise Refused(self.refusal)
        if self.cgroup_root is None:
            raise Refused("this host has no cgroup v2 hierarchy: nfguard exec needs one")
        return {"ok": True, "cgroup_root": self.cgroup_root, "stacked": not peer.privileged}

    def begin(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.ping(request, peer)
        assert self.cgroup_root is not None
        mode = request.get("mode", ExecMode.ENFORCE)
        if mode not in EXEC_MODES:
            raise Refused(f"mode must be one of {' | '.join(EXEC_MODES)}, not {mode!r}")
        label = _text(request, "label", "")[:MAX_LABEL]
        try:
            cgroup = normalize_cgroup(_text(request, "cgroup"))
        except ValueError as exc:
            raise Refused(str(exc)) from None
        directory = Path(self.cgroup_root + cgroup)
        if not directory.is_dir():
            raise Refused(f"no cgroup {cgroup} under {self.cgroup_root}")
        if len(self.transients) >= MAX_TRANSIENTS:
            raise Refused(f"{MAX_TRANSIENTS} exec clients already run under this service")
        if not peer.privileged:
            held = sum(1 for t in self.transients if t.owner == peer.uid)
            if held >= MAX_PER_USER:
                raise Refused(f"uid {peer.uid} already holds {MAX_PER_USER} exec clients")
            own_cgroup(directory, peer.uid)
        ident = self.transients.new_id()
        documents, allows = _policy(request, peer)
        try:
            engine = compile_transient(documents, allows, ExecMode(mode),
                                       self.host())
        except PolicyError as exc:
            raise Refused(str(exc)) from None
        transient = Transient(ident, cgroup, label, ExecMode(mode), peer.uid, peer.pid,
                              not peer.privileged, engine, _policy_name(request, documents),
                              populated=populated(directory) is True)
        with contextlib.suppress(OSError):
            self._pidfds[ident] = os.pidfd_open(peer.pid)
        if self._events is not None:
            with contextlib.suppress(OSError):  # without it: seen populated once a second
                self._events.watch(ident, str(directory / "cgroup.events"))
        self.transients.add(transient)
        log.info("exec client %s: %s in %s, %s, policy %s, for pid %d (uid %d%s)", ident,
                 label or "(no label)", cgroup, mode, transient.policy_name, peer.pid,
                 peer.uid, ", stacked on the host's policy" if transient.stacked else "")
        self.changed()
        return {"ok": True, "client": ident}

    def policy(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        transient = self._own(request, peer)
        documents, allows = _policy(request, peer)
        try:
            transient.engine = compile_transient(documents, allows, transient.mode,
                                                 self.host())
        except PolicyError as exc:
            raise Refused(f"{exc}\n(the policy of {transient.id} stays as it was)") from None
        transient.policy_name = _policy_name(request, documents)
        log.info("exec client %s: policy %s", transient.id, transient.policy_name)
        return {"ok": True, "client": transient.id}

    def end(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        transient = self._own(request, peer)
        self._remove(transient, "ended")
        return {"ok": True, "flows": [r._asdict() for r in transient.flows.records()],
                "lost": transient.flows.lost}

    def _own(self, request: dict[str, Any], peer: Peer) -> Transient:
        ident = _text(request, "client")
        transient = self.transients.get(ident)
        if transient is None or not (peer.privileged or transient.owner == peer.uid):
            raise Refused(f"no exec client {ident!r} of yours")
        return transient

    # -- upkeep --------------------------------------------------------------------------
    def tend(self) -> None:
        """Remove the clients whose command is over (called about once a second)."""
        changed = self._events.changed() if self._events is not None else set()
        for directory in list(self._orphans):
            try:
                directory.rmdir()
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    continue
            self._orphans.discard(directory)
        for transient in self.transients:
            directory = Path(f"{self.cgroup_root}{transient.cgroup}")
            state = populated(directory)
            if state is None:
                self._remove(transient, "its cgroup is gone")
            elif state:
                transient.populated = True
            elif transient.populated or transient.id in changed:  # ran, and is over
                if not self._alive(transient):  # asked before _remove closes its pidfd
                    self._orphans.add(directory)  # its requester cannot remove it any more
                self._remove(transient, "its cgroup emptied")
            elif not self._alive(transient):
                self._remove(transient, "its requester exited before anything ran")

    def _alive(self, transient: Transient) -> bool:
        pidfd = self._pidfds.get(transient.id)
        if pidfd is None:
            return True  # no way to tell (pidfds need Linux 5.3): the cgroup decides
        readable, _, _ = select.select([pidfd], [], [], 0)
        return not readable

    def _remove(self, transient: Transient, why: str) -> None:
        if self.transients.remove(transient.id) is None:
            return
        pidfd = self._pidfds.pop(transient.id, None)
        if pidfd is not None:
            os.close(pidfd)
        if self._events is not None:
            self._events.forget(transient.id)
        log.info("exec client %s (%s) removed: %s; %d flows allowed, %d denied", transient.id,
                 transient.label, why, transient.flows.allowed, transient.flows.denied)
        self.changed()

    def status(self) -> list[dict[str, Any]]:
        return [t.status() for t in self.transients]

    def close(self) -> None:
        for pidfd in self._pidfds.values():
            os.close(pidfd)
        self._pidfds.clear()
        if self._events is not None:
            self._events.close()


def own_cgroup(directory: Path, uid: int) -> None:
    """Refused unless `directory` is a cgroup of uid's own: it and its cgroup.procs
    belong to uid (delegated to it), and every process in it or below runs as uid only."""
    try:
        if (directory.stat().st_uid != uid
                or (directory / "cgroup.procs").stat().st_uid != uid):
            raise Refused(f"cgroup {directory} is not delegated to uid {uid} (its directory "
                          "and cgroup.procs must be yours)")
        for below, _dirs, _files in os.walk(directory):
            for pid in (Path(below) / "cgroup.procs").read_text().split():
                uids = _uids(int(pid))
                if uids is not None and uids != {uid}:
                    raise Refused(f"cgroup {directory} holds process {pid}, which is not "
                                  f"only uid {uid}'s")
    except OSError as exc:
        raise Refused(f"cannot read cgroup {directory}: {exc.strerror}") from None


def _uids(pid: int) -> set[int] | None:
    """Real, effective, saved and file system uids of a process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return {int(u) for u in line.split()[1:]}
    except (OSError, ValueError):
        return None
    return None


def populated(directory: Path) -> bool | None:
    """Whether processes are in the cgroup or below (`cgroup.events`); None: it is gone."""
    try:
        text = (directory / "cgroup.events").read_text()
    except OSError:
        return None
    return "populated 1" in text.splitlines()


def _text(request: dict[str, Any], key: str, default: str | None = None) -> str:
    value = request.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise Refused(f"{key!r} must be a non-empty string")
    return value


def _policy(request: dict[str, Any],
            peer: Peer) -> tuple[list[tuple[str, str]], list[str]]:
    """The request's policy documents and --allow values, within the asker's size."""
    documents, allows = _documents(request), _allows(request)
    limit = MAX_POLICY if peer.privileged else MAX_POLICY_UNPRIVILEGED
    if sum(len(text) for _name, text in documents) + sum(map(len, allows)) > limit:
        raise Refused(f"the policy is longer than {limit} characters")
    return documents, allows


def _documents(request: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's policy as (file name, text) pairs."""
    policy = request.get("policy", "")
    if isinstance(policy, str):
        name = request.get("policy_name") or "command line"
        documents = [(str(name), policy)] if policy else []
    elif isinstance(policy, list) and all(
            isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
            for d in policy):
        documents = [(name, text) for name, text in policy]
    else:
        raise Refused("'policy' must be a TOML text or a list of [file name, text] pairs")
    return documents


def _allows(request: dict[str, Any]) -> list[str]:
    """The `--allow` one-liners of the request."""
    allows = request.get("allow", [])
    if not isinstance(allows, list) or not all(isinstance(a, str) for a in allows):
        raise Refused("'allow' must be a list of strings")
    return allows


def _policy_name(request: dict[str, Any], documents: list[tuple[str, str]]) -> str:
    name = request.get("policy_name")
    if isinstance(name, str) and name:
        return name[:MAX_LABEL]
    return ", ".join(n for n, _text in documents)[:MAX_LABEL] or "(none)"
