"""Exec requests from a user who is not root: the service lets members of `[control]
group` put their own commands under a policy, and nothing more.

The attacker is uid 65534 (nobody, in group nogroup, the config's control group). It
asks, over the control socket, to cover another user's cgroup, a cgroup of root's, a
cgroup of its own that holds another user's process, or to loosen the host's policy for
its own processes (allow_all, or a policy allowing what the host denies); and for the
requests that are root's alone (status, reload), and to end or change root's exec client.
Each must be refused, or change nothing the host's policy says. A user outside the group
cannot connect at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfguard.control import request
from tests.e2e.conftest import made_cgroup
from tests.e2e.lab import ALLOWED_V4, NOBODY_CAN_RUN_NFGUARD, NOT_REACHABLE_BY_NOBODY, Lab
from tests.e2e.policies import allow, everyone, policy

REPO = Path(__file__).resolve().parents[3]
NOBODY, NOGROUP = 65534, 65534
STRANGER = 65533  # another user, not in the group
REFUSED = 7
HOST = everyone(policy("lab", allow("web", "198.18.1.0/24", ports=(80,))))  # not 81
LOOSE = everyone(policy("all", allow("anything")), name="command")
ONLY_81 = everyone(policy("cmd", allow("web81", "198.18.1.0/24", ports=(81,))), name="command")

pytestmark = [
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv"),
    pytest.mark.skipif(not NOBODY_CAN_RUN_NFGUARD, reason=NOT_REACHABLE_BY_NOBODY),
]


def as_user(uid: int, gid: int) -> tuple[str, ...]:
    return ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups")


@pytest.fixture
def service(lab: Lab) -> Iterator[tuple[Lab, str]]:
    """The engine with `[control] group = nogroup`, its socket where nobody can reach it."""
    run_dir = Path(tempfile.mkdtemp(prefix="nfguard-exec-test-", dir="/run"))
    os.chmod(run_dir, 0o700)  # the engine opens it to the group
    socket_path = str(run_dir / "nfguard.sock")
    try:
        config = lab.write_config(HOST)
        config.write_text(config.read_text().replace(
            f'socket = {json.dumps(str(lab.control_socket))}',
            f'socket = {json.dumps(socket_path)}\ngroup = "{NOGROUP}"'))
        lab.serve_http(80, 81)
        lab.start_engine(config)
        yield lab, socket_path
    finally:
        lab.stop_engine()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def cgroups() -> Iterator[Iterator[Path]]:
    with contextlib.ExitStack() as stack:
        yield (stack.enter_context(made_cgroup(f"nfguard-adv-{uuid.uuid4().hex[:8]}.scope"))
               for _ in iter(int, 1))


@pytest.fixture
def hold() -> Iterator[Callable[..., Path]]:
    """Put a sleeping process (of a user) in a cgroup until the test ends, as `nfguard
    exec` holds its command's cgroup: the service removes a client whose cgroup empties."""
    with contextlib.ExitStack() as stack:
        def holding(cgroup: Path, uid: int = NOBODY) -> Path:
            holder = subprocess.Popen(["sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"',
                                       str(cgroup), *as_user(uid, uid), "sleep", "600"])
            stack.callback(holder.wait)
            stack.callback(holder.kill)
            while not (cgroup / "cgroup.procs").read_text().split():
                time.sleep(0.01)
            return cgroup
        yield holding


def delegate(cgroup: Path, uid: int) -> Path:
    """What systemd does for a user's own subtree: the directory and its files are theirs."""
    for path in (cgroup, cgroup / "cgroup.procs", cgroup / "cgroup.threads",
                 cgroup / "cgroup.subtree_control"):
        os.chown(path, uid, uid)
    return cgroup


def ask_as(uid: int, gid: int, socket_path: str, command: str, **fields: object) -> dict:
    """A request sent by a process of uid/gid (its answer; {"connect": errno name} when it
    cannot even connect)."""
    script = ("import json, sys\nfrom nfguard.control import ControlError, request\n"
              "try:\n    print(json.dumps(request(sys.argv[1], sys.argv[2], timeout=10, "
              "**json.loads(sys.argv[3]))))\n"
              "except ControlError as exc:\n    print(json.dumps({'connect': str(exc)}))\n")
    result = subprocess.run([*as_user(uid, gid), sys.executable, "-c", script, socket_path,
                             command, json.dumps(fields)], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
                            cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def begin_as(uid: int, socket_path: str, cgroup: Path, text: str = ONLY_81,
             mode: str = "enforce") -> dict:
    return ask_as(uid, NOGROUP if uid == NOBODY else uid, socket_path, "exec_begin",
                  cgroup="/" + cgroup.name, policy=text, policy_name="egress.toml",
                  mode=mode, label="attacker[1]")


def curl_in(lab: Lab, cgroup: Path, port: int, uid: int = NOBODY) -> int:
    """curl as `uid`, from inside `cgroup` (moved in by root first, as a delegated
    user's own shell could)."""
    return lab.exec(lab.client, "sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"',
                    str(cgroup), *as_user(uid, uid), "curl", "-sS", "--max-time", "3",
                    f"http://{ALLOWED_V4}:{port}/").returncode


def transients(socket_path: str) -> list[dict]:
    return request(socket_path, "status")["status"]["exec"]


def test_the_socket_is_open_to_the_group_only(service: tuple[Lab, str]) -> None:
    _lab, socket_path = service
    mode = os.stat(socket_path)
    assert (stat.S_IMODE(mode.st_mode), mode.st_uid, mode.st_gid) == (0o660, 0, NOGROUP)
    answer = ask_as(STRANGER, STRANGER, socket_path, "exec_ping")
    assert "connect" in answer, "a user outside the group must not reach the service"
    assert ask_as(NOBODY, NOGROUP, socket_path, "exec_ping")["ok"]


@pytest.mark.parametrize("command", ["status", "reload"])
def test_root_only_requests_are_refused(service: tuple[Lab, str], command: str) -> None:
    _lab, socket_path = service
    answer = ask_as(NOBODY, NOGROUP, socket_path, command)
    assert answer == {"ok": False, "error": f"{command!r} is for root only"}


def test_another_users_cgroup_is_refused(service: tuple[Lab, str],
                                         cgroups: Iterator[Path]) -> None:
    lab, socket_path = service
    theirs = delegate(next(cgroups), STRANGER)
    answer = begin_as(NOBODY, socket_path, theirs)
    assert not answer["ok"] and "not delegated to uid 65534" in answer["error"]
    assert transients(socket_path) == []
    assert curl_in(lab, theirs, 80, uid=STRANGER) == 0, "their flows are the host's still"


def test_an_arbitrary_cgroup_is_refused(service: tuple[Lab, str],
                                        cgroups: Iterator[Path]) -> None:
    lab, socket_path = service
    roots = next(cgroups)
    answer = begin_as(NOBODY, socket_path, roots)
    assert not answer["ok"] and "not delegated" in answer["error"]
    for path in ("/", "/..", "/" + roots.name + "/../" + roots.name):
        answer = ask_as(NOBODY, NOGROUP, socket_path, "exec_begin", cgroup=path,
                        policy=ONLY_81, mode="enforce", label="x")
        assert not answer["ok"], path
    assert transients(socket_path) == []
    assert curl_in(lab, roots, 80, uid=0) == 0


def test_its_own_cgroup_holding_anothers_process_is_refused(
        service: tuple[Lab, str], cgroups: Iterator[Path]) -> None:
    _lab, socket_path = service
    mine = delegate(next(cgroups), NOBODY)
    victim = subprocess.Popen(["sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec sleep 30',
                               str(mine)])
    try:
        answer = begin_as(NOBODY, socket_path, mine)
        assert not answer["ok"] and "not only uid 65534's" in answer["error"]
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize(("text", "mode"), [(LOOSE, "enforce"), (LOOSE, "audit"),
                                            ("", "allow_all")])
def test_its_own_cgroup_cannot_loosen_the_hosts_policy(
        service: tuple[Lab, str], cgroups: Iterator[Path], hold: Callable[..., Path],
        text: str, mode: str) -> None:
    lab, socket_path = service
    mine = hold(delegate(next(cgroups), NOBODY))
    answer = begin_as(NOBODY, socket_path, mine, text=text, mode=mode)
    assert answer["ok"], answer
    assert curl_in(lab, mine, 81) == REFUSED, "the host denies 81: so does the command"
    assert curl_in(lab, mine, 80) == 0
    (listed,) = transients(socket_path)
    assert listed["stacked"] and listed["owner"] == NOBODY


def test_its_own_cgroup_can_be_made_stricter(service: tuple[Lab, str],
                                             cgroups: Iterator[Path],
                                             hold: Callable[..., Path]) -> None:
    lab, socket_path = service
    mine = hold(delegate(next(cgroups), NOBODY))
    assert begin_as(NOBODY, socket_path, mine, text=ONLY_81)["ok"]
    assert curl_in(lab, mine, 80) == REFUSED, "its own policy allows 81 only"
    assert curl_in(lab, mine, 81) == REFUSED, "and the host denies 81"
    assert lab.curl(ALLOWED_V4, 80)[0] == 0


def test_roots_client_cannot_be_ended_or_changed(service: tuple[Lab, str],
                                                cgroups: Iterator[Path],
                                                hold: Callable[..., Path]) -> None:
    lab, socket_path = service
    roots = hold(next(cgroups), 0)
    client = request(socket_path, "exec_begin", cgroup="/" + roots.name, policy=ONLY_81,
                     policy_name="root.toml", mode="enforce", label="root[1]")["client"]
    for command, fields in (("exec_end", {}), ("exec_policy", {"policy": LOOSE})):
        answer = ask_as(NOBODY, NOGROUP, socket_path, command, client=client, **fields)
        assert answer == {"ok": False, "error": f"no exec client {client!r} of yours"}
    assert curl_in(lab, roots, 80, uid=0) == REFUSED, "root's command keeps its policy"
    assert [t["id"] for t in transients(socket_path)] == [client]
