"""An exe path believed only where it names the file the process runs."""

from __future__ import annotations

from pathlib import Path

from nfguard.procs.exepath import ExePaths


def test_exe_paths_believe_a_path_only_where_it_names_the_running_file(tmp_path: Path) -> None:
    """pid 10 shares the host's mount namespace and runs the host's curl; pid 11, in a
    namespace of its own (not one root made), runs python but shows curl's path."""
    host, proc = tmp_path / "host", tmp_path / "proc"
    (host / "usr" / "bin").mkdir(parents=True)
    for name in ("curl", "python3"):
        (host / "usr" / "bin" / name).write_text(name)
    (proc / "1" / "ns").mkdir(parents=True)
    (proc / "1" / "root").symlink_to(host)
    (proc / "1" / "ns" / "user").write_text("user")
    (proc / "1" / "ns" / "mnt").symlink_to("mnt:[1]")  # as nsfs links read
    for pid, exe, mounts in ((10, "curl", "mnt:[1]"), (11, "python3", "mnt:[2]")):
        (proc / str(pid) / "ns").mkdir(parents=True)
        (proc / str(pid) / "exe").symlink_to(host / "usr" / "bin" / exe)
        (proc / str(pid) / "ns" / "mnt").symlink_to(mounts)
    paths = ExePaths(str(proc))
    assert paths.tree(10) == paths.tree(11) == f"{proc}/1/root"
    assert paths.names_its_file(10, "/usr/bin/curl")
    assert not paths.names_its_file(11, "/usr/bin/curl")  # a mount of its own over it
    assert paths.names_its_file(11, "/usr/bin/python3")
    assert not paths.names_its_file(10, "usr/bin/curl")  # not a path from a root
    assert not paths.names_its_file(12, "/usr/bin/curl")  # gone
