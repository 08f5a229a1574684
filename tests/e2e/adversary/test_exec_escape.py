"""`nfguard exec`: the command cannot step outside its cgroup, nor ask a DNS server of
its own choosing for a name its policy allows."""

from __future__ import annotations

import os
import subprocess

from nfguard.procs.cgroups import find_cgroup2_root
from tests.e2e.lab import ALLOWED_V4, OTHER_V4, SLOWDOWN, Lab
from tests.e2e.test_exec import CUT, curl, exec_argv, nfguard_exec
from tests.e2e.test_names import DNS_RECORDS


def test_the_command_cannot_move_itself_out_of_its_cgroup(lab: Lab) -> None:
    lab.serve_http(80)
    root = find_cgroup2_root()
    targets = [f"{root}/cgroup.procs", f"{root}/nfguard.exec/cgroup.procs"]
    moves = "; ".join(f"echo $$ > {t}" for t in targets)
    script = f"{moves}; exec {' '.join(curl(f'http://{OTHER_V4}/'))}"
    env = {**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"}  # as under sudo
    done = subprocess.run(exec_argv(lab, "--", "sh", "-c", script), capture_output=True,
                          text=True, env=env, timeout=30 * SLOWDOWN)
    assert done.returncode in CUT, done.stderr
    assert "Permission denied" in done.stderr


def test_dns_only_to_the_host_s_resolvers_even_for_an_allowed_name(named: Lab) -> None:
    """The name is allowed; the server is the command's choice: port 53 anywhere carries
    whatever bytes it likes, so only the host's resolvers are reachable."""
    named.serve_dns(*DNS_RECORDS, on=(OTHER_V4,))
    named.serve_dns(*DNS_RECORDS)  # the lab's resolver, for comparison
    dig = ["dig", "+short", "+tries=1", "+time=2"]
    ours = nfguard_exec(named, "--allow", "allowed.test", "--", *dig, "allowed.test")
    assert ALLOWED_V4 in ours.stdout, ours.stderr
    theirs = nfguard_exec(named, "--allow", "allowed.test", "--", *dig, f"@{OTHER_V4}",
                          "allowed.test")
    assert ALLOWED_V4 not in theirs.stdout
    assert f"{OTHER_V4}" in theirs.stderr  # in the summary of denials
