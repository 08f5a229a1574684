"""The transient cgroup: where it is made, and the errors that say what is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nfguard.exec import cgroup as cgroups
from nfguard.exec.cgroup import SLICE, Cgroup, CgroupError


def test_no_cgroup_v2_says_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "find_cgroup2_root", lambda: None)
    with pytest.raises(CgroupError, match="no cgroup v2"):
        Cgroup.create("x")
    with pytest.raises(CgroupError, match="no cgroup v2"):
        Cgroup.create_delegated("x")


def test_made_under_nfguard_s_slice_and_removed_with_it(tmp_path: Path) -> None:
    made = Cgroup.create("7-1-abc", root=str(tmp_path))
    assert made.path == f"{SLICE}/7-1-abc" and made.level == 2
    assert Path(made.directory).is_dir()
    made.remove()
    assert not (tmp_path / SLICE).exists()


def test_delegated_under_the_highest_cgroup_of_the_user_s_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "user.slice" / "user@1000.service" / "app.slice" / "x.scope"
    own.mkdir(parents=True)
    owned = {str(tmp_path / "user.slice" / "user@1000.service"), *(
        str(p) for p in (own, own.parent))}

    def stat(path: str | os.PathLike[str]) -> os.stat_result:
        directory = os.path.dirname(path) if str(path).endswith("cgroup.procs") else str(path)
        uid = 1000 if directory in owned else 0
        return os.stat_result((0o40755, 0, 0, 1, uid, 0, 0, 0, 0, 0))

    monkeypatch.setattr(cgroups.os, "stat", stat)
    monkeypatch.setattr(cgroups.os, "getuid", lambda: 1000)
    monkeypatch.setattr(cgroups, "open", lambda *_a, **_k: _Text(
        "0::/user.slice/user@1000.service/app.slice/x.scope\n"), raising=False)
    made = Cgroup.create_delegated("1-abc", root=str(tmp_path))
    assert made.path == f"user.slice/user@1000.service/{SLICE}-1-abc"
    owned.clear()
    with pytest.raises(CgroupError, match="delegated"):
        Cgroup.create_delegated("2-abc", root=str(tmp_path))


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def __enter__(self) -> _Text:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def read(self) -> str:
        return self.text
