"""The ruleset installer: owns `inet nfguard`, touches nothing else, idempotent."""

from __future__ import annotations

import signal

from tests.e2e.lab import Lab
from tests.e2e.policies import ALLOWED_NET, everyone

POLICY = everyone(ALLOWED_NET)

USER_TABLE = """
table inet usertest {
    chain out {
        type filter hook output priority 50; policy accept;
        tcp dport 9999 counter accept comment "the user's own rule"
    }
}
"""


def ruleset(lab: Lab) -> str:
    return lab.exec(lab.client, "nft", "list", "ruleset").stdout


def tables(lab: Lab) -> list[str]:
    """The ruleset as a sorted list of tables (reloading a table changes their order)."""
    return sorted("table " + t.strip() for t in ("\n" + ruleset(lab)).split("\ntable ")[1:])


def user_state(lab: Lab) -> tuple[str, str]:
    table = lab.exec(lab.client, "nft", "list", "table", "inet", "usertest").stdout
    chain = lab.exec(lab.client, "iptables", "-S", "USERCHAIN").stdout
    return table, chain


def test_user_rules_survive_the_whole_life_cycle(lab: Lab) -> None:
    lab.exec(lab.client, "nft", "-f", "-", input=USER_TABLE, check=True)
    lab.exec(lab.client, "iptables", "-N", "USERCHAIN", check=True)
    lab.exec(lab.client, "iptables", "-A", "USERCHAIN", "-p", "tcp", "--dport", "9998", "-j",
             "ACCEPT", check=True)
    lab.exec(lab.client, "iptables", "-A", "OUTPUT", "-j", "USERCHAIN", check=True)
    # A rule of the user's own in the table the xt fallback queues from.
    lab.exec(lab.client, "ip6tables", "-t", "security", "-A", "OUTPUT", "-p", "tcp",
             "--dport", "9997", "-j", "ACCEPT", check=True)
    before = user_state(lab)
    assert "9999" in before[0] and "9998" in before[1]
    tables_before = tables(lab)

    config = str(lab.write_config(POLICY))
    lab.nfguard("install", "--config", config)
    assert user_state(lab) == before
    lab.start_engine(lab.write_config(POLICY))
    assert user_state(lab) == before
    lab.stop_engine(signal.SIGTERM)
    assert user_state(lab) == before
    out = lab.nfguard("uninstall", "--config", config).stdout
    assert "removed" in out
    assert user_state(lab) == before
    assert "-A OUTPUT -j USERCHAIN" in lab.exec(lab.client, "iptables", "-S", "OUTPUT").stdout
    after = ruleset(lab)
    assert "table inet nfguard" not in after
    assert "nfguard" not in after, "uninstall removes exactly what install added"
    assert tables(lab) == tables_before


def test_install_is_idempotent_and_says_which_path(lab: Lab) -> None:
    config = str(lab.write_config(POLICY))
    before = ruleset(lab)
    first = lab.nfguard("install", "--config", config).stdout
    assert "queue path:" in first
    once = tables(lab)
    lab.nfguard("install", "--config", config)
    assert tables(lab) == once
    assert sum(t.startswith("table inet nfguard") for t in once) == 1
    if "xt NFQUEUE" in first:
        # The fallback path: one queue rule per family, no nft `queue` of our own, in the
        # security table (after the host's own filter rules).
        for tool in ("iptables", "ip6tables"):
            rules = lab.exec(lab.client, tool, "-t", "security", "-S", "OUTPUT").stdout
            assert rules.count("nfguard queue") == 1, rules
            assert "nfguard" not in lab.exec(lab.client, tool, "-S", "OUTPUT").stdout
    lab.nfguard("uninstall", "--config", config)
    assert ruleset(lab) == before, "uninstall leaves no table behind (nor an empty one)"
    assert "was not installed" in lab.nfguard("uninstall", "--config", config).stdout


def test_install_and_uninstall_remove_queue_rules_an_earlier_version_left(lab: Lab) -> None:
    """Earlier versions put the xt queue rule into iptables' filter table; left there by an
    upgrade it would queue every flow a second time."""
    left = ("-m", "mark", "--mark", "0x40000000/0x40000000", "-m", "comment", "--comment",
            "nfguard queue", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")
    for chain in ("OUTPUT", "INPUT"):
        lab.exec(lab.client, "iptables", "-w", "-I", chain, "1", *left, check=True)
    config = str(lab.write_config(POLICY))
    lab.nfguard("install", "--config", config)
    for chain in ("OUTPUT", "INPUT"):
        assert "nfguard" not in lab.exec(lab.client, "iptables", "-w", "-S", chain).stdout
    lab.exec(lab.client, "iptables", "-w", "-I", "OUTPUT", "1", *left, check=True)
    assert "removed" in lab.nfguard("uninstall", "--config", config).stdout
    assert "nfguard" not in lab.exec(lab.client, "iptables", "-w", "-S", "OUTPUT").stdout
    assert "nfguard" not in ruleset(lab)


def test_dry_run_loads_nothing(lab: Lab) -> None:
    config = str(lab.write_config(POLICY, fail="open"))
    out = lab.nfguard("install", "--dry-run", "--config", config).stdout
    assert "table inet nfguard" in out
    assert "bypass" in out
    assert "nfguard" not in ruleset(lab)
