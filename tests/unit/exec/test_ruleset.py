"""The private engine's ruleset: the service's chains, scoped to one command."""

from __future__ import annotations

from nfguard.config import EngineConfig
from nfguard.exec.ruleset import SCOPED_CHAINS, Scope, render_scoped
from nfguard.nft import NATIVE, XT

SCOPE = Scope("nfguard_exec_3", "nfguard.exec/3-1-abc", 2, 67, 32003, "nfguard exec 3")
SOCKET = 'socket cgroupv2 level 2 "nfguard.exec/3-1-abc"'


def _chain(text: str, name: str) -> list[str]:
    body = text.split(f"\tchain {name} {{\n", 1)[1].split("\n\t}", 1)[0]
    return [line.strip().split("\t#")[0] for line in body.splitlines()]


def test_hook_chains_pass_everything_but_the_command_s_packets() -> None:
    text = render_scoped(EngineConfig(), NATIVE, True, SCOPE).nft
    assert text.count("table inet nfguard_exec_3 {") == 1 and "table inet nfguard {" not in text
    assert _chain(text, "output")[1:] == [
        f"{SOCKET} ct state new ct label set 67", "ct label 67 goto output_command",
        f"{SOCKET} ct direction original ct state established,related jump cut",
        f"{SOCKET} goto output_command"]
    assert _chain(text, "input")[1:] == ["ct label 67 goto input_command"]
    assert _chain(text, "input_verdict")[1:] == ["ct label 67 goto input_verdict_command"]
    for name in SCOPED_CHAINS:
        assert "policy accept;" in _chain(text, name)[0]
        assert f"\tchain {name}_command {{" in text
    assert "queue num 32003" in text  # its own queue, no bypass: closed


def test_the_xt_path_queues_only_its_label_to_its_queue() -> None:
    ruleset = render_scoped(EngineConfig(workers=4, forward_from=("docker0",)), XT, True, SCOPE)
    assert {(r.binary, r.chain) for r in ruleset.xt_rules} == {
        ("iptables", "OUTPUT"), ("iptables", "INPUT"), ("ip6tables", "OUTPUT"),
        ("ip6tables", "INPUT")}
    for rule in ruleset.xt_rules:
        spec = " ".join(rule.spec)
        assert "--label 67" in spec and "--queue-num 32003" in spec
        assert "--queue-bypass" not in spec and "nfguard exec 3" in spec
    assert "queue num" not in ruleset.nft and "chain forward" not in ruleset.nft
