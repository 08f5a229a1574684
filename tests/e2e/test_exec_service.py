"""`nfguard exec` with the service running: a command's cgroup under a transient client
of its own, asked for over the control socket (exec_begin / exec_end), judged in front of
the host's clients. Real queue, real nftables, real cgroups."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfguard.control import request
from tests.e2e.conftest import made_cgroup
from tests.e2e.lab import ALLOWED_V4, SERVER_V4, Lab
from tests.e2e.policies import LAB_NETS, allow, dns, everyone, policy

REFUSED = 7
CURL = "curl"
# The host allows the lab's web servers on 80 and 81, and DNS.
HOST = everyone(policy("lab", dns(*LAB_NETS), allow("web", "198.18.1.0/24", ports=(80, 81))))
# A command may reach port 81 only (and resolve allowed.test).
PORT_81 = everyone(policy("cmd", dns(*LAB_NETS), allow("web81", "198.18.1.0/24", ports=(81,)),
                          allow("named", "allowed.test", ports=(81,))), name="command")
PORT_80 = everyone(policy("cmd", allow("web80", "198.18.1.0/24", ports=(80,))), name="command")


@pytest.fixture
def cgroups() -> Iterator[Iterator[Path]]:
    """Fresh cgroups under the v2 root, as many as a test asks for, each with a process
    that holds it (as `nfguard exec` holds its command's: the service removes a client
    whose cgroup empties, here after each curl); all removed after the test."""
    with contextlib.ExitStack() as stack:
        yield (held(stack, stack.enter_context(
            made_cgroup(f"nfguard-exec-{uuid.uuid4().hex[:8]}.scope")))
            for _ in iter(int, 1))


def held(stack: contextlib.ExitStack, cgroup: Path, *prefix: str) -> Path:
    """`cgroup`, with a sleeping process in it until the test ends (or it is killed)."""
    holder = subprocess.Popen([*prefix, "sh", "-c",
                               'echo $$ > "$0"/cgroup.procs && exec sleep 600', str(cgroup)])
    stack.callback(holder.wait)
    stack.callback(holder.kill)
    while not (cgroup / "cgroup.procs").read_text().split():
        time.sleep(0.01)
    return cgroup


def release(cgroup: Path) -> None:
    """Kill the cgroup's processes (its holder): it empties."""
    (cgroup / "cgroup.kill").write_text("1")


def relative(cgroup: Path) -> str:
    return "/" + cgroup.name


def ask(lab: Lab, command: str, **fields: object) -> dict:
    return request(str(lab.control_socket), command, timeout=10, **fields)


def begin(lab: Lab, cgroup: Path, text: str, mode: str = "enforce") -> str:
    answer = ask(lab, "exec_begin", cgroup=relative(cgroup), policy=text,
                 policy_name="egress.toml", mode=mode, label="test[1]")
    assert answer["ok"], answer
    return answer["client"]


def curl_in(lab: Lab, cgroup: Path, port: int, host: str = ALLOWED_V4) -> int:
    """curl's exit status, run from inside `cgroup` (the shell moves itself in first)."""
    return lab.exec(lab.client, "sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"',
                    str(cgroup), CURL, "-sS", "--max-time", "3",
                    f"http://{host}:{port}/").returncode


def transients(lab: Lab, config: Path) -> list[dict]:
    result = lab.nfguard("status", "--json", "--config", str(config))
    return json.loads(result.stdout)["exec"]


def test_the_command_is_judged_by_its_policy_and_the_host_by_its_own(
        lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST)
    lab.start_engine(config)
    cgroup = next(cgroups)
    client = begin(lab, cgroup, PORT_81)
    assert curl_in(lab, cgroup, 80) == REFUSED, "the host allows it; the command's policy not"
    assert curl_in(lab, cgroup, 81) == 0
    assert lab.curl(ALLOWED_V4, 80)[0] == 0, "the same curl outside the command is untouched"
    (listed,) = transients(lab, config)
    assert (listed["id"], listed["cgroup"], listed["label"], listed["mode"]) == (
        client, relative(cgroup), "test[1]", "enforce")
    assert (listed["allowed"], listed["denied"]) == (1, 1)
    assert "test[1]" in lab.nfguard("status", "--config", str(config)).stdout
    answer = ask(lab, "exec_end", client=client)
    flows = {(f["port"], f["verdict"], f["client"]) for f in answer["flows"]}
    assert flows == {(80, "deny", "command"), (81, "allow", "command")}
    assert transients(lab, config) == []
    assert curl_in(lab, cgroup, 80) == 0, "ended: the host's policy again"


def test_enforced_while_the_host_only_audits(lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST, mode="audit")
    lab.start_engine(config)
    cgroup = next(cgroups)
    begin(lab, cgroup, PORT_81)
    assert curl_in(lab, cgroup, 80) == REFUSED
    assert lab.curl(ALLOWED_V4, 82)[0] == REFUSED  # nothing listens: the host lets it try
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 82)
    assert event["nfguard"]["verdict"] == "allow"


def test_several_commands_at_once(lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST)
    lab.start_engine(config)
    one, two = next(cgroups), next(cgroups)
    first, second = begin(lab, one, PORT_81), begin(lab, two, PORT_80)
    assert (curl_in(lab, one, 80), curl_in(lab, one, 81)) == (REFUSED, 0)
    assert (curl_in(lab, two, 80), curl_in(lab, two, 81)) == (0, REFUSED)
    assert lab.curl(ALLOWED_V4, 80)[0] == 0 and lab.curl(ALLOWED_V4, 81)[0] == 0
    assert {t["id"] for t in transients(lab, config)} == {first, second}


def test_removed_when_its_cgroup_empties(lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST)
    lab.start_engine(config)
    cgroup = next(cgroups)
    begin(lab, cgroup, PORT_81)
    assert curl_in(lab, cgroup, 80) == REFUSED
    assert len(transients(lab, config)) == 1, "its holder keeps it"
    release(cgroup)
    lab.wait_until(lambda: transients(lab, config) == [], timeout=5)
    assert "emptied" in lab.engine_log.read_text()


def test_survives_a_reload_of_the_hosts_policy(lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST)
    lab.start_engine(config)
    cgroup = next(cgroups)
    begin(lab, cgroup, PORT_81)
    lab.nfguard("reload", "--config", str(config))
    assert curl_in(lab, cgroup, 80) == REFUSED
    assert curl_in(lab, cgroup, 81) == 0


def test_policy_replaced_and_a_broken_one_refused_with_its_line(
        lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST)
    lab.start_engine(config)
    cgroup = next(cgroups)
    client = begin(lab, cgroup, PORT_81)
    broken = ask(lab, "exec_policy", client=client, policy=PORT_80.replace('"allow"', '"yes"'),
                 policy_name="egress.toml")
    assert not broken["ok"] and broken["error"].startswith("egress.toml:")
    assert curl_in(lab, cgroup, 81) == 0, "the old policy stays"
    assert ask(lab, "exec_policy", client=client, policy=PORT_80,
               policy_name="egress.toml")["ok"]
    assert (curl_in(lab, cgroup, 80), curl_in(lab, cgroup, 81)) == (0, REFUSED)
    refused = ask(lab, "exec_begin", cgroup=relative(cgroup), policy="[[policy]\n",
                  policy_name="bad.toml", mode="enforce", label="x")
    assert not refused["ok"] and refused["error"].startswith("bad.toml:1: invalid TOML")


def test_dns_queries_judged_by_the_commands_policy_even_where_the_host_lets_all_out(
        lab: Lab, cgroups: Iterator[Path]) -> None:
    lab.serve_dns("--host-record=allowed.test,198.18.1.1", "--host-record=other.test,198.18.1.1")
    config = lab.write_config(HOST, names={"queries": "any"})
    lab.start_engine(config)
    cgroup = next(cgroups)
    begin(lab, cgroup, PORT_81)

    def dig_in(name: str) -> str:
        return lab.exec(lab.client, "sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"',
                        str(cgroup), "dig", f"@{SERVER_V4}", "+tries=1", "+time=2", name
                        ).stdout

    assert "status: NOERROR" in dig_in("allowed.test")
    assert "status: REFUSED" in dig_in("other.test")
    assert lab.dig("other.test") == ["198.18.1.1"], "outside the command: every query passes"


def test_nfguard_exec_through_the_service(lab: Lab) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(HOST)
    lab.start_engine(config)

    def nfguard_exec(*argv: str) -> subprocess.CompletedProcess:
        return lab.exec(lab.client, sys.executable, "-m", "nfguard", "exec", "--config",
                        str(config), "--allow", f"{ALLOWED_V4}:81/tcp", "--", *argv,
                        timeout=60)

    denied = nfguard_exec(CURL, "-sS", "--max-time", "3", f"http://{ALLOWED_V4}:80/")
    assert denied.returncode == REFUSED, denied.stderr
    assert f"{ALLOWED_V4}:80/tcp" in denied.stderr, "the summary names what was denied"
    allowed = nfguard_exec(CURL, "-sS", "--max-time", "3", f"http://{ALLOWED_V4}:81/")
    assert (allowed.returncode, allowed.stdout) == (0, "port 81\n"), allowed.stderr
    log = lab.engine_log.read_text()
    assert log.count("exec client exec-") >= 2, "the service judged them, no engine of exec's"
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    lab.wait_until(lambda: transients(lab, config) == [], timeout=5)
