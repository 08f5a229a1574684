"""The service's exec requests: who may cover which cgroup, policies with errors, and the
clients' removal (a fake cgroup tree in a temporary directory)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nfguard.config import EngineConfig
from nfguard.control import Peer
from nfguard.engine import Engine
from nfguard.exec.requests import MAX_PER_USER, MAX_POLICY_UNPRIVILEGED, ExecRequests, Refused
from nfguard.exec.transient import Transients
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from tests.unit.policies import EXEC_COMMAND, EXEC_HOST

ROOT = Peer(pid=os.getpid(), uid=0, gid=0, privileged=True)
ALICE = Peer(pid=os.getpid(), uid=1000, gid=1000, privileged=False)
BOB = Peer(pid=os.getpid(), uid=1001, gid=1001, privileged=False)


def cgroup(root: Path, path: str, owner: int = 0, pids: tuple[int, ...] = (),
           populated: bool = False) -> str:
    directory = root / path.strip("/")
    directory.mkdir(parents=True)
    (directory / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))
    (directory / "cgroup.events").write_text(f"populated {int(populated)}\nfrozen 0\n")
    os.chown(directory, owner, owner)
    os.chown(directory / "cgroup.procs", owner, owner)
    return path


@pytest.fixture
def service(tmp_path: Path) -> ExecRequests:
    host = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("h", EXEC_HOST)])))
    host.transients = Transients()
    return ExecRequests(host.transients, lambda: host, str(tmp_path))


def begin(service: ExecRequests, peer: Peer, path: str, **fields: object) -> dict:
    request = {"command": "exec_begin", "cgroup": path, "policy": EXEC_COMMAND,
               "policy_name": "egress.toml", "mode": "enforce", "label": "make[42]", **fields}
    return service.begin(request, peer)


def test_root_covers_any_cgroup_and_replaces_the_hosts_decision(
        service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/nfguard.slice/exec-1.scope", pids=(os.getpid(),))
    answer = begin(service, ROOT, path)
    transient = service.transients.get(answer["client"])
    assert transient is not None and not transient.stacked
    assert service.status()[0]["cgroup"] == path


def test_a_user_covers_a_delegated_cgroup_of_its_own_stacked(
        service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/user.slice/user@1000.service/app.slice/run-1.scope", owner=1000)
    answer = begin(service, ALICE, path)
    transient = service.transients.get(answer["client"])
    assert transient is not None and transient.stacked and transient.owner == 1000


@pytest.mark.parametrize(("owner", "peer", "why"), [
    (0, ALICE, "not delegated to uid 1000"),  # an arbitrary cgroup (root's)
    (1001, ALICE, "not delegated to uid 1000"),  # another user's
])
def test_a_user_cannot_cover_a_cgroup_not_its_own(
        service: ExecRequests, tmp_path: Path, owner: int, peer: Peer, why: str) -> None:
    path = cgroup(tmp_path, "/user.slice/other.scope", owner=owner)
    with pytest.raises(Refused, match=why):
        begin(service, peer, path)
    assert not service.transients


def test_a_user_cannot_cover_its_cgroup_holding_anothers_process(
        service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/user.slice/mine.scope", owner=1000, pids=(1,))
    with pytest.raises(Refused, match="holds process 1"):
        begin(service, ALICE, path)
    (tmp_path / "user.slice/mine.scope/cgroup.procs").write_text("")
    below = cgroup(tmp_path, "/user.slice/mine.scope/sub", owner=1000, pids=(os.getpid(),))
    with pytest.raises(Refused, match="holds process"):
        begin(service, ALICE, below.rsplit("/", 1)[0])


@pytest.mark.parametrize("path", ["/", "/user.slice/../system.slice", "/no/such"])
def test_bad_cgroups(service: ExecRequests, path: str) -> None:
    with pytest.raises(Refused):
        begin(service, ROOT, path)


def test_a_broken_policy_is_refused_with_file_and_line(
        service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/a.scope")
    with pytest.raises(Refused, match=r"^egress\.toml:\d+: "):
        begin(service, ROOT, path, policy=EXEC_COMMAND.replace("allow", "permit", 1))
    with pytest.raises(Refused, match="mode must be"):
        begin(service, ROOT, path, mode="lenient")
    assert not service.transients


def test_policy_replaced_or_kept_and_only_by_its_owner(
        service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/user.slice/mine.scope", owner=1000)
    ident = begin(service, ALICE, path)["client"]
    transient = service.transients.get(ident)
    assert transient is not None
    before = transient.engine
    with pytest.raises(Refused, match="stays as it was"):
        service.policy({"client": ident, "policy": "[[policy]]\nname = 1\n"}, ALICE)
    assert transient.engine is before
    with pytest.raises(Refused, match="no exec client"):
        service.policy({"client": ident, "policy": EXEC_COMMAND}, BOB)
    with pytest.raises(Refused, match="no exec client"):
        service.end({"client": ident}, BOB)
    service.policy({"client": ident, "policy": EXEC_COMMAND, "allow": ["example.org"]},
                   ALICE)
    assert transient.engine is not before
    assert service.end({"client": ident}, ALICE) == {"ok": True, "flows": [], "lost": 0}
    assert not service.transients


def test_a_user_holds_a_bounded_number(service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/user.slice/mine.scope", owner=1000)
    for _ in range(MAX_PER_USER):
        begin(service, ALICE, path)
    with pytest.raises(Refused, match="already holds"):
        begin(service, ALICE, path)


def test_removed_when_the_cgroup_empties_or_goes(service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/a.scope", populated=False)
    ident = begin(service, ROOT, path)["client"]
    service.tend()  # never populated, requester alive: stays
    assert service.transients.get(ident) is not None
    events = tmp_path / "a.scope/cgroup.events"
    events.write_text("populated 1\n")
    service.tend()
    events.write_text("populated 0\n")
    service.tend()
    assert service.transients.get(ident) is None
    gone = begin(service, ROOT, path)["client"]
    events.unlink()
    service.tend()
    assert service.transients.get(gone) is None


def test_a_dead_requester_frees_only_a_command_that_never_ran(
        service: ExecRequests, tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        requester = ROOT._replace(pid=child.pid)
        idle = begin(service, requester, cgroup(tmp_path, "/idle.scope"))["client"]
        busy = begin(service, requester, cgroup(tmp_path, "/busy.scope", populated=True))[
            "client"]
    finally:
        child.kill()
        child.wait()
    service.tend()
    assert service.transients.get(idle) is None
    assert service.transients.get(busy) is not None  # the command runs on: still judged
    (tmp_path / "busy.scope/cgroup.events").write_text("populated 0\n")
    service.tend()
    assert service.transients.get(busy) is None
    assert not (tmp_path / "busy.scope").exists() or os.listdir(tmp_path / "busy.scope")


def test_refused_where_the_service_cannot_serve_it(tmp_path: Path) -> None:
    host = Engine(EngineConfig(), CompiledPolicySet(parse_policy_texts([("h", EXEC_HOST)])))
    for service in (ExecRequests(Transients(), lambda: host, None),
                    ExecRequests(Transients(), lambda: host, str(tmp_path),
                                 refusal="engine.workers > 1")):
        with pytest.raises(Refused):
            begin(service, ROOT, cgroup(tmp_path, f"/{id(service)}.scope"))


def test_a_command_that_ran_and_ended_between_two_looks(
        service: ExecRequests, tmp_path: Path) -> None:
    ident = begin(service, ROOT, cgroup(tmp_path, "/quick.scope"))["client"]
    events = tmp_path / "quick.scope/cgroup.events"
    events.write_text("populated 1\n")
    events.write_text("populated 0\n")
    service.tend()
    assert service.transients.get(ident) is None


def test_a_users_policy_is_smaller_than_roots(service: ExecRequests, tmp_path: Path) -> None:
    path = cgroup(tmp_path, "/user.slice/mine.scope", owner=1000)
    big = EXEC_COMMAND + "#" * (MAX_POLICY_UNPRIVILEGED + 1) + "\n"
    with pytest.raises(Refused, match="longer than"):
        begin(service, ALICE, path, policy=big)
    assert begin(service, ROOT, path, policy=big)["ok"]
