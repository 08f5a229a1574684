"""`nfguard exec`: one command under a policy of its own, in the lab's client namespace
(with the lab's resolver as its /etc/resolv.conf): without the service (a private
engine), and, where marked `via`, also through a running service that lets the host's
own processes reach the whole lab."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfguard.exec.engine import SLOT_DIR
from nfguard.procs.cgroups import find_cgroup2_root
from tests.e2e.lab import (
    ALLOWED_V4,
    NOBODY_CAN_RUN_NFGUARD,
    NOT_REACHABLE_BY_NOBODY,
    OTHER_V4,
    SERVER_V4,
    SLOWDOWN,
    Lab,
    in_netns,
    with_resolv_conf,
)
from tests.e2e.policies import LAB_NETS, allow, everyone, policy
from tests.e2e.test_names import DNS_RECORDS

CUT = {7, 35, 56}  # curl: refused / reset
# The service's own policy: the host's processes reach every lab address, resolve anything.
HOST = everyone(policy("lab", allow("lab", *LAB_NETS)), queries="any")
BOTH = pytest.mark.parametrize("via", ["standalone", "service"], indirect=True)


@pytest.fixture
def via(request: pytest.FixtureRequest, lab: Lab) -> str:
    """"service": a running service exec hands the command to (its config's socket)."""
    if request.param == "service":
        config = lab.write_config(HOST)
        lab.start_engine(config)
        lab.exec_config = config  # type: ignore[attr-defined]
    return str(request.param)


def exec_argv(lab: Lab, *args: str) -> list[str]:
    """`nfguard exec ARGS` in the client namespace, with the lab's resolver; with the
    service's config when a test runs `via` the service, else with none."""
    config = getattr(lab, "exec_config", lab.workdir / "none.toml")
    return [*in_netns(lab.client), *with_resolv_conf(lab.resolv_conf), sys.executable, "-m",
            "nfguard", "exec", "--config", str(config), *args]


def nfguard_exec(lab: Lab, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(exec_argv(lab, *args), capture_output=True, text=True,
                          timeout=timeout * SLOWDOWN)


def curl(url: str, *options: str) -> list[str]:
    """curl with a time limit stretched where everything runs slower (the VM: the command's
    first flows wait for its engine's first decisions)."""
    return ["curl", "-sS", "--max-time", f"{4 * SLOWDOWN:g}", *options, url]


def left_behind(lab: Lab) -> tuple[str, list[str]]:
    """Tables in the client namespace and exec cgroups still there."""
    tables = lab.exec(lab.client, "nft", "list", "tables").stdout
    root = find_cgroup2_root()
    slice_ = Path(root or "/nonexistent") / "nfguard.exec"
    cgroups = [p.name for p in slice_.iterdir() if p.is_dir()] if slice_.exists() else []
    return ("nfguard_exec" if "nfguard_exec" in tables else ""), cgroups


def running(lab: Lab, via: str) -> bool:
    """Whether an exec's command runs: in its cgroup (beside exec's holder, through the
    service), after its table was installed (standalone)."""
    table, cgroups = left_behind(lab)
    slice_ = Path(find_cgroup2_root() or "/nonexistent") / "nfguard.exec"
    procs = sum(len((slice_ / name / "cgroup.procs").read_text().split()) for name in cgroups)
    return procs >= (2 if via == "service" else 1) and (via == "service" or bool(table))


@BOTH
def test_allowed_passes_and_denied_is_cut_at_once(lab: Lab, via: str) -> None:
    lab.serve_http(80)
    done = nfguard_exec(lab, "--allow", f"{ALLOWED_V4}:80", "--", *curl(f"http://{ALLOWED_V4}/"))
    assert done.returncode == 0, done.stderr
    assert "port 80" in done.stdout
    done = nfguard_exec(lab, "--allow", f"{ALLOWED_V4}:80", "--", *curl(f"http://{OTHER_V4}/"))
    assert done.returncode in CUT, done.stderr  # cut at once: reset, not timed out (28)
    assert f"{OTHER_V4}:80/tcp" in done.stderr  # the summary of denials
    assert left_behind(lab) == ("", [])


@BOTH
def test_grandchild_and_daemonised_child_are_cut(lab: Lab, via: str) -> None:
    lab.serve_http(80)
    inner = " ".join(curl(f"http://{OTHER_V4}/"))
    done = nfguard_exec(lab, "--", "sh", "-c", f"sh -c '{inner}'")
    assert done.returncode in CUT, done.stderr
    out = lab.workdir / "daemon.status"
    script = (f"setsid sh -c '{inner}; echo $? > {out}' </dev/null >/dev/null 2>&1 & "
              f"while [ ! -s {out} ]; do sleep 0.1; done")
    done = nfguard_exec(lab, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert int(out.read_text()) in CUT


@BOTH
def test_a_process_outside_the_command_is_untouched(lab: Lab, via: str) -> None:
    """Same user, same executable, same namespace: only the command's tree is judged."""
    lab.serve_http(80)
    proc = subprocess.Popen(exec_argv(lab, "--", "sleep", f"{4 * SLOWDOWN:g}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lab.wait_until(lambda: running(lab, via), timeout=60)
        assert lab.curl(OTHER_V4, 80)[0] == 0
    finally:
        proc.wait(timeout=20 * SLOWDOWN)
    assert proc.returncode == 0


@BOTH
def test_exit_statuses_are_passed_through(lab: Lab, via: str) -> None:
    assert nfguard_exec(lab, "--", "true").returncode == 0
    assert nfguard_exec(lab, "--", "sh", "-c", "exit 7").returncode == 7
    missing = nfguard_exec(lab, "--", "/nonexistent/command")
    assert missing.returncode == 127
    assert "/nonexistent/command" in missing.stderr
    assert nfguard_exec(lab, "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert left_behind(lab) == ("", [])


@BOTH
def test_a_policy_with_errors_runs_nothing(lab: Lab, via: str) -> None:
    policy = lab.workdir / "bad.toml"
    policy.write_text('[[client]]\nname = "x"\npolicies = ["missing"]\n')
    marker = lab.workdir / "ran"
    done = nfguard_exec(lab, "--policy", str(policy), "--", "touch", str(marker))
    assert done.returncode != 0
    assert f"{policy}:3" in done.stderr
    assert not marker.exists()


@BOTH
def test_names_allowed_on_the_command_line_and_dns_refused_for_the_command_only(
        named: Lab, via: str) -> None:
    named.serve_dns(*DNS_RECORDS)
    https = curl("https://allowed.test/", "--cacert", str(named.ca))  # type: ignore[attr-defined]
    done = nfguard_exec(named, "--allow", "allowed.test:443/tcp", "--", *https)
    assert (done.returncode, done.stdout.strip()) == (0, "https allowed.test"), done.stderr
    dig = ["dig", "+short", "+tries=1", f"+time={round(3 * SLOWDOWN)}", "denied.test"]
    done = nfguard_exec(named, "--allow", "allowed.test:443", "--", *dig)
    assert OTHER_V4 not in done.stdout
    assert "denied.test" in done.stderr  # refused: in the summary
    outside = named.exec(named.client, *with_resolv_conf(named.resolv_conf), *dig)
    assert OTHER_V4 in outside.stdout


@BOTH
def test_audit_prints_a_policy_that_lets_the_command_pass(named: Lab, via: str) -> None:
    named.serve_dns(*DNS_RECORDS)
    https = curl("https://allowed.test/", "--cacert", str(named.ca))  # type: ignore[attr-defined]
    done = nfguard_exec(named, "--audit", "--", *https)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "https allowed.test"  # stdout stays the command's
    suggested = done.stderr.split("(nfguard suggest):\n", 1)[1]
    assert "allowed.test" in suggested
    policy = named.workdir / "egress.toml"
    policy.write_text(suggested)
    assert nfguard_exec(named, "--", *https).returncode != 0
    done = nfguard_exec(named, "--policy", str(policy), "--", *https)
    assert (done.returncode, done.stdout.strip()) == (0, "https allowed.test"), done.stderr


@BOTH
def test_a_policy_edit_takes_effect_while_the_command_runs(lab: Lab, via: str) -> None:
    lab.serve_http(80)
    policy = lab.workdir / "egress.toml"
    allow = ('[[client]]\nname = "all"\npolicies = ["p"]\n\n[[policy]]\nname = "p"\n\n'
             '[[policy.rule]]\naction = "allow"\nto = ["{}"]\nports = [80]\n')
    policy.write_text(allow.format(ALLOWED_V4))
    flag, results = lab.workdir / "go", lab.workdir / "results"
    script = (f"{' '.join(curl(f'http://{OTHER_V4}/'))} >/dev/null 2>&1; echo $? > {results}; "
              f"while [ ! -e {flag} ]; do sleep 0.1; done; "
              f"{' '.join(curl(f'http://{OTHER_V4}/'))} >/dev/null 2>&1; echo $? >> {results}")
    proc = subprocess.Popen(exec_argv(lab, "--policy", str(policy), "--", "sh", "-c", script),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lab.wait_until(lambda: results.exists() and results.read_text().strip() != "",
                       timeout=15)
        policy.write_text("[[client]]\nbroken")  # kept out: the old policy stays
        time.sleep(1.5)
        policy.write_text(allow.format(OTHER_V4))
        time.sleep(1.5)
        flag.touch()
        _out, err = proc.communicate(timeout=20 * SLOWDOWN)
    finally:
        proc.kill()
    first, second = map(int, results.read_text().split())
    assert first in CUT and second == 0, err
    assert f"{policy}:2" in err and "reloaded" in err


def test_kill_9_of_exec_leaves_nothing_and_cuts_the_command(lab: Lab) -> None:
    lab.serve_http(80)
    marker = lab.workdir / "after"
    proc = subprocess.Popen(exec_argv(lab, "--allow-all", "--", "sh", "-c",
                                      f"sleep {3 * SLOWDOWN:g}; touch {marker}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    lab.wait_until(lambda: running(lab, "standalone"), timeout=60)
    target = _descendant_python(proc.pid)
    os.kill(target, signal.SIGKILL)
    lab.wait_until(lambda: left_behind(lab) == ("", []), timeout=10)
    time.sleep(3.5 * SLOWDOWN)
    assert not marker.exists()  # the command was killed with it
    proc.wait(timeout=10)
    assert Path(SLOT_DIR).is_dir()


def test_kill_9_of_exec_under_the_service_leaves_the_command_judged(lab: Lab) -> None:
    """The service keeps the command's client until its cgroup empties: cut, not freed;
    then the client and the cgroup go."""
    lab.serve_http(80)
    config = lab.write_config(HOST)
    lab.start_engine(config)
    lab.exec_config = config  # type: ignore[attr-defined]
    results = lab.workdir / "after"
    script = (f"sleep 2; {' '.join(curl(f'http://{OTHER_V4}/'))} >/dev/null 2>&1; "
              f"echo $? > {results}")
    proc = subprocess.Popen(exec_argv(lab, "--", "sh", "-c", script),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    lab.wait_until(lambda: running(lab, "service"), timeout=60)
    os.kill(_descendant_python(proc.pid), signal.SIGKILL)
    proc.wait(timeout=10)
    lab.wait_until(results.exists, timeout=10)
    lab.wait_until(lambda: results.read_text().strip() != "", timeout=5)
    assert int(results.read_text()) in CUT
    lab.wait_until(lambda: left_behind(lab) == ("", []), timeout=10)
    assert "exec client" in lab.engine_log.read_text()


def _descendant_python(pid: int) -> int:
    """The nfguard process of the nsenter / unshare / sh chain started as `pid` (each
    execs the next, so it is the first in the chain that runs nfguard)."""
    for _ in range(100):
        if b"nfguard" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
        time.sleep(0.05)
    raise AssertionError("nfguard exec process not found")


def test_dns_server_of_the_lab_is_reachable_only_as_a_resolver(lab: Lab) -> None:
    """Port 53 to the host's resolver passes; the same server's port 80 does not."""
    lab.serve_http(80)
    done = nfguard_exec(lab, "--", *curl(f"http://{SERVER_V4}/"))
    assert done.returncode in CUT


@BOTH
def test_under_sudo_the_command_runs_as_the_caller(lab: Lab, via: str) -> None:
    argv = exec_argv(lab, "--", "sh", "-c", "id -u; id -g; id -G")
    env = {**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30 * SLOWDOWN)
    assert done.returncode == 0, done.stderr
    uid, gid, groups = done.stdout.split("\n")[:3]
    assert (uid, gid) == ("65534", "65534") and "0" not in groups.split()
    done = subprocess.run(exec_argv(lab, "--as-root", "--", "id", "-u"), capture_output=True,
                          text=True, env=env, timeout=30 * SLOWDOWN)
    assert done.stdout.strip() == "0"


@pytest.mark.skipif(not NOBODY_CAN_RUN_NFGUARD, reason=NOT_REACHABLE_BY_NOBODY)
def test_not_root_and_no_service_says_what_is_needed(lab: Lab) -> None:
    argv = exec_argv(lab, "--", "true")
    python = argv.index(sys.executable)
    argv[python:python] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30 * SLOWDOWN)
    assert done.returncode == 125
    assert "needs root" in done.stderr and "control socket" in done.stderr


@BOTH
def test_concurrent_execs_keep_to_their_own_policies(lab: Lab, via: str) -> None:
    lab.serve_http(80)
    script = f"sleep 1; {' '.join(curl('http://{}/'))}"
    first = subprocess.Popen(exec_argv(lab, "--allow", ALLOWED_V4, "--", "sh", "-c",
                                       script.format(ALLOWED_V4)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(exec_argv(lab, "--allow", OTHER_V4, "--", "sh", "-c",
                                        script.format(ALLOWED_V4)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    third = nfguard_exec(lab, "--allow", OTHER_V4, "--", "sh", "-c", script.format(OTHER_V4))
    assert first.wait(timeout=30 * SLOWDOWN) == 0, first.communicate()[1]
    assert second.wait(timeout=30 * SLOWDOWN) in CUT
    assert third.returncode == 0, third.stderr
    assert left_behind(lab) == ("", [])
