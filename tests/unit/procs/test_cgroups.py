"""cgroup v2 paths, units and mounts, read from fake trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfguard.procs.cgroups import (
    CgroupMap,
    find_cgroup2_root,
    parse_mountinfo_cgroup2,
    parse_proc_cgroup,
    parse_procs,
    unit_from_path,
    walk_cgroups,
)
from tests.unit.procs.fakes import fake_cgroup_tree


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx.service"),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo-1.scope",
            "app-foo-1.scope",
        ),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/system.slice/docker-ab12.scope/inner", "docker-ab12.scope"),
        ("/", None),
        ("/system.slice", None),
        ("/kubepods/pod1/abc", None),
        (None, None),
        ("/.scope", None),
    ],
)
def test_unit_from_path(path: str | None, unit: str | None) -> None:
    assert unit_from_path(path) == unit


def test_parse_proc_cgroup_hybrid_and_unified() -> None:
    hybrid = "9:name=systemd:/x\n4:memory:/y\n0::/system.slice/sshd.service\n"
    assert parse_proc_cgroup(hybrid) == "/system.slice/sshd.service"
    assert parse_proc_cgroup("0::/\n") == "/"
    assert parse_proc_cgroup("0::/gone (deleted)\n") == "/gone"
    assert parse_proc_cgroup("4:memory:/y\n") is None


def test_parse_procs() -> None:
    assert parse_procs(b"1\n22\n333\n") == [1, 22, 333]
    assert parse_procs("") == []


def test_parse_mountinfo() -> None:
    text = (
        "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    assert parse_mountinfo_cgroup2(text) == "/sys/fs/cgroup/unified"
    assert parse_mountinfo_cgroup2(text.splitlines()[0]) is None


def test_walk_and_map(tmp_path: Path) -> None:
    ids = fake_cgroup_tree(tmp_path / "cg")
    walked = dict(walk_cgroups(str(tmp_path / "cg")))
    assert {path: ino for ino, path in walked.items()} == ids
    m = CgroupMap(str(tmp_path / "cg"))
    assert m.path(ids["/system.slice/nginx.service"]) == "/system.slice/nginx.service"
    assert m.walks == 1
    # a cgroup made later is found by a rewalk on miss
    new = tmp_path / "cg" / "system.slice" / "new.service"
    new.mkdir()
    assert m.path(new.stat().st_ino) == "/system.slice/new.service"
    assert m.walks == 2
    # an unknown id costs one walk, then is remembered as gone
    assert m.path(999_999_999) is None and m.walks == 3
    assert m.path(999_999_999) is None and m.walks == 3


def test_find_cgroup2_root_hybrid(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    for f in ("cgroup.procs", "cgroup.controllers"):
        (tmp_path / "unified" / f).write_text("")
    assert find_cgroup2_root(str(tmp_path), str(tmp_path / "noproc")) == str(tmp_path / "unified")
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "cgroup.controllers").write_text("")
    assert find_cgroup2_root(str(tmp_path)) == str(tmp_path)
