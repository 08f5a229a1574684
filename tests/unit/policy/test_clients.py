"""policy.clients: `exe` holds only for a path that names the file the process runs."""

from __future__ import annotations

import timeit
from unittest.mock import patch

from nfguard.policy.clients import ClientIndex, client_matches, match_key
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


SOURCES = """
[[client]]
name = "lab-a"
match = { source = ["10.42.16.0/27", "2001:db8:42::/64"] }
policies = ["p"]

[[client]]
name = "lab-b-on-eth2"
match = { source = ["10.42.17.5", "10.42.16.8"], interface = "eth2" }
policies = ["p"]

[[client]]
name = "wide"
match = { source = "10.0.0.0/8" }
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
action = "allow"
"""


def first_client(policy: str, process: ProcessInfo | None) -> str | None:
    clients = parse_policy_texts([("p.toml", policy)]).clients
    found = ClientIndex(clients).first(process)
    # the index and trying every client in order agree
    assert found == next((c for c in clients if client_matches(c, process)), None)
    return None if found is None else found.name


def test_source_holds_for_forwarded_flows_from_inside_and_first_client_wins() -> None:
    def forwarded(source: str, interface: str = "eth1") -> ProcessInfo:
        return ProcessInfo(interface=interface, source=source)

    assert first_client(SOURCES, forwarded("10.42.16.5")) == "lab-a"
    assert first_client(SOURCES, forwarded("2001:db8:42::99")) == "lab-a"
    # overlapping sources: the first client in order wins, as clients do
    assert first_client(SOURCES, forwarded("10.42.16.8", "eth2")) == "lab-a"
    assert first_client(SOURCES, forwarded("10.42.17.5", "eth2")) == "lab-b-on-eth2"
    # combined with interface: both must hold
    assert first_client(SOURCES, forwarded("10.42.17.5", "eth1")) == "wide"
    assert first_client(SOURCES, forwarded("192.0.2.1")) is None
    assert first_client(SOURCES, forwarded("2001:db8:43::1")) is None


def test_source_never_holds_for_the_hosts_own_flows() -> None:
    host = ProcessInfo(uid=0, user="root", exe="/usr/bin/curl")
    assert first_client(SOURCES, host) is None
    assert first_client(SOURCES, None) is None
    everyone = SOURCES.replace('name = "wide"\nmatch = { source = "10.0.0.0/8" }',
                               'name = "wide"')
    assert first_client(everyone, host) == "wide"
    # a client without match covers forwarded flows too (as before)
    assert first_client(everyone, ProcessInfo(interface="eth1", source="10.1.2.3")) == "wide"


def test_a_container_process_is_vouched_for_by_its_source() -> None:
    policy = SOURCES.replace('match = { source = "10.0.0.0/8" }',
                             'match = { source = "10.0.0.0/8", exe = "/usr/bin/curl" }')
    curl = ProcessInfo(exe="/usr/bin/curl", interface="docker0", source="10.99.0.2")
    assert first_client(policy, curl) == "wide"
    assert match_key(curl) != match_key(curl._replace(source="10.99.0.3"))


def client_sources(count: int) -> str:
    """`count` clients of one /32 each (the gateway's per-host clients), then one for all."""
    clients = "".join(
        f'[[client]]\nname = "c{n}"\nmatch = {{ source = ["10.{n >> 16 & 255}.'
        f'{n >> 8 & 255}.{n & 255}", "2001:db8::{n:x}"] }}\npolicies = ["p"]\n\n'
        for n in range(count))
    return clients + SOURCES


def test_client_lookup_by_source_costs_the_same_for_10_and_10000_networks() -> None:
    """The index tries only clients whose networks hold the address: a first client found
    by source, among 10 or 10,000, is one client_matches call; and the time per lookup
    stays flat (loose margin: the machine is shared)."""
    def calls_and_time(count: int, source: str) -> tuple[int, float]:
        index = ClientIndex(parse_policy_texts([("p.toml", client_sources(count))]).clients)
        process = ProcessInfo(interface="eth1", source=source)
        tried = []
        with patch("nfguard.policy.clients.client_matches",
                   side_effect=lambda c, p, **kw: tried.append(c.name) or client_matches(
                       c, p, **kw)):
            found = index.first(process)
        assert found is not None and found.name in ("c7", "lab-a")
        best = min(timeit.repeat(lambda: index.first(process), number=2000, repeat=5))
        return len(tried), best

    for address in ("10.0.0.7", "2001:db8::7"):
        small_calls, small = calls_and_time(10, address)
        large_calls, large = calls_and_time(10_000, address)
        assert small_calls == large_calls == 1
        assert large < 3 * small, (small, large)
    # an address no /32 holds: the wide clients only, not 10,000 tries
    assert calls_and_time(10_000, "10.42.16.9")[0] == 1
