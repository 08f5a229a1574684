"""policy.clients: `exe` holds only for a path that names the file the process runs."""

from __future__ import annotations

from nfguard.policy.clients import client_matches, match_key
from nfguard.policy.load import parse_policy_texts
from nfguard.procs import ProcessInfo

POLICY = """
[[client]]
name = "curl"
match = { exe = "/usr/bin/curl" }
policies = ["p"]

[[client]]
name = "anything-in-bin"
match = { exe = "/usr/bin/*" }
policies = ["p"]

[[client]]
name = "by-user"
match = { user = "alice" }
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
action = "allow"
"""


def matching(process: ProcessInfo) -> list[str]:
    clients = parse_policy_texts([("p.toml", POLICY)]).clients
    return [c.name for c in clients if client_matches(c, process)]


def test_exe_matches_only_a_path_that_names_the_running_file() -> None:
    curl = ProcessInfo(uid=1000, user="alice", exe="/usr/bin/curl")
    assert matching(curl) == ["curl", "anything-in-bin", "by-user"]
    # a mount of its own over /usr/bin/curl: the path is what it shows, not what it runs
    assert matching(curl._replace(exe_mismatch=True)) == ["by-user"]
    # deleted or replaced since it started (an upgrade): the file at the path is another
    assert matching(curl._replace(exe_deleted=True)) == ["by-user"]
    # a flow whose process is not known (exec'd since it connected): uid keys still hold
    assert matching(ProcessInfo(uid=1000, user="alice")) == ["by-user"]
    # only found holding the socket (no record of who connected it): the same
    assert matching(curl._replace(unproven=True)) == ["by-user"]


def test_no_key_about_what_it_runs_holds_for_an_unproven_sender() -> None:
    policy = POLICY.replace('exe = "/usr/bin/curl"', 'cmdline = "curl *", parent_exe = "/bin/sh"')
    clients = parse_policy_texts([("p.toml", policy)]).clients
    curl = ProcessInfo(uid=1000, user="bob", exe="/usr/bin/curl", cmdline=("curl", "-s"),
                       parent_exe="/bin/sh")
    assert client_matches(clients[0], curl)
    assert not client_matches(clients[0], curl._replace(unproven=True))


def test_match_key_tells_a_mismatched_path_apart() -> None:
    curl = ProcessInfo(exe="/usr/bin/curl")
    assert match_key(curl) != match_key(curl._replace(exe_mismatch=True))
    assert match_key(curl) != match_key(curl._replace(exe_deleted=True))
    assert match_key(curl) != match_key(curl._replace(unproven=True))
