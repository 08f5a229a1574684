"""The xt path's queue rules, as rendered and as `install --dry-run` prints them."""

from __future__ import annotations

import re
import shlex

import pytest

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import XT
from nfguard.nft.ruleset import render
from nfguard.nft.xt import XT_CHAINS, XT_COMMENT
from tests.unit.nft.rendered import code_lines, hexmark

XT_BINARIES = {("iptables-nft", "ip6tables-nft"), ("iptables", "ip6tables")}


def u32_share(spec: tuple[str, ...]) -> tuple[str, int, list[int]] | None:
    """(where the port is read, the mask, the values) of a rule's u32 test, if any."""
    if "--u32" not in spec:
        return None
    test = spec[spec.index("--u32") + 1]
    where, _, mask_values = test.rpartition("&")
    mask, _, values = mask_values.partition("=")
    return where, int(mask, 16), [int(v) for v in values.split(",")]


@pytest.mark.parametrize("workers", [2, 3, 7, 64])
def test_xt_workers_share_the_local_port_and_the_last_takes_the_rest(workers: int) -> None:
    rules = render(EngineConfig(queue=4, workers=workers), XT).xt_rules
    local_port = {("iptables", "OUTPUT"): "0>>22&0x3C@0>>17",  # IPv4 source port, from bit 1
                  ("iptables", "INPUT"): "0>>22&0x3C@0>>1",  # IPv4 destination port
                  ("ip6tables", "OUTPUT"): "40>>17", ("ip6tables", "INPUT"): "40>>1"}
    for (binary, chain), where in local_port.items():
        group = [r for r in rules if (r.binary, r.chain) == (binary, chain)]
        assert [r.position for r in group] == list(range(1, workers + 1))
        assert [r.spec[r.spec.index("--queue-num") + 1] for r in group] == [
            str(4 + w) for w in range(workers)]
        shares = [u32_share(r.spec) for r in group]
        assert shares[-1] is None, "the last rule queues whatever the others left"
        assert {(share[0], share[1]) for share in shares[:-1]} == {(where, shares[0][1])}
        mask = shares[0][1]
        assert mask >= 0xF and mask & (mask + 1) == 0, "the low bits, at least four"
        taken = [value for share in shares[:-1] for value in share[2]]
        assert len(taken) == len(set(taken)) and set(taken) < set(range(mask + 1))
        # u32 takes at most 11 values per test; every worker gets about an equal share,
        # and neighbouring values (a run of connect()s) go to different workers
        assert max(len(share[2]) for share in shares[:-1]) <= 11
        sizes = [len(share[2]) for share in shares[:-1]] + [mask + 1 - len(taken)]
        assert max(sizes) - min(sizes) <= 1, sizes
        owner = {value: w for w, share in enumerate(shares[:-1]) for value in share[2]}
        assert all(owner.get(v, workers - 1) != owner.get(v + 1, workers - 1)
                   for v in range(mask))
        for rule in group:
            assert "--queue-balance" not in rule.spec


@pytest.mark.parametrize(("fail", "bypass"), [("closed", False), ("open", True)])
def test_xt_has_no_nft_queue_and_one_rule_per_family(fail: str, bypass: bool) -> None:
    ruleset = render(EngineConfig(queue=12, fail=fail), XT)
    assert ruleset.path == XT
    assert not [line for line in code_lines(ruleset.nft) if re.match(r"queue\b", line)]
    assert not re.search(r"\bqueue num\b", "\n".join(code_lines(ruleset.nft)))
    assert len(ruleset.xt_rules) == 6
    binaries = tuple(dict.fromkeys(rule.binary for rule in ruleset.xt_rules))
    assert binaries in XT_BINARIES
    assert {(rule.chain, rule.position) for rule in ruleset.xt_rules} == {
        ("OUTPUT", 1), ("INPUT", 1), ("FORWARD", 1)}
    assert "conntrack" not in str(ruleset.xt_rules), "one worker: no need for directions"
    for rule in ruleset.xt_rules:
        spec = rule.spec
        assert "--u32" not in spec, "one worker: every queued packet to it"
        text = " ".join(spec)
        assert "-j NFQUEUE --queue-num 12" in text
        assert spec[spec.index("--queue-num") + 1] == "12"
        assert ("--queue-bypass" in spec) is bypass
        assert f"--mark {hexmark(marks.QUEUED)}/{hexmark(marks.QUEUED)}" in text
        assert spec[spec.index("--comment") + 1] == XT_COMMENT
    # DNS answers: the same rule in INPUT, one per family; forwarded flows and answers in
    # FORWARD; all in the security table, after the host's own filter rules.
    assert XT_CHAINS == ("OUTPUT", "INPUT", "FORWARD")
    described = ruleset.describe()
    assert described.count("# and: ") == 6
    for chain in XT_CHAINS:
        assert described.count(f"-t security -I {chain} 1 ") == 2
    assert '--comment "nfguard queue"' in described


def test_described_xt_commands_paste_into_a_shell_as_they_run() -> None:
    """`install --dry-run` prints each xt rule as a command; a shell must split it into
    exactly the arguments the installer passes (the u32 tests hold & and >)."""
    ruleset = render(EngineConfig(queue=2, workers=3, fail="open"), XT)
    lines = [line.removeprefix("# and: ") for line in ruleset.describe().splitlines()
             if line.startswith("# and: ")]
    assert len(lines) == len(ruleset.xt_rules) == 24  # per family: 3 OUTPUT, 3 INPUT, 6 FORWARD
    for line, rule in zip(lines, ruleset.xt_rules, strict=True):
        # as a shell splits: & and > are operators unless quoted
        words = shlex.shlex(line, posix=True, punctuation_chars=True)
        words.whitespace_split = True
        assert list(words) == [rule.binary, "-t", "security", "-I", rule.chain,
                               str(rule.position), *rule.spec]


@pytest.mark.parametrize("workers", [2, 5])
def test_xt_forward_rules_share_by_the_container_port_in_each_direction(workers: int) -> None:
    """A forwarded flow's packets carry the container's port as their source; the DNS
    answers to it as their destination: each direction has its own group of rules."""
    rules = render(EngineConfig(queue=1, workers=workers), XT).xt_rules
    for binary, where in (("iptables", "0>>22&0x3C@0"), ("ip6tables", "40")):
        forward = [r for r in rules if (r.binary, r.chain) == (binary, "FORWARD")]
        assert [r.position for r in forward] == list(range(1, 2 * workers + 1))
        for group, direction, shift in ((forward[:workers], "ORIGINAL", 17),
                                        (forward[workers:], "REPLY", 1)):
            for worker, rule in enumerate(group):
                spec = rule.spec
                assert spec[spec.index("--ctdir") + 1] == direction
                assert spec[spec.index("--queue-num") + 1] == str(1 + worker)
                share = u32_share(spec)
                if worker == workers - 1:
                    assert share is None
                else:
                    assert share is not None and share[0] == f"{where}>>{shift}"


def test_the_xt_queue_rules_leave_the_engines_refusals_alone() -> None:
    """INJECTED carries the QUEUED bit: the xt rules must not queue a refusal."""
    rules = render(EngineConfig(forward_from=("br0",)), XT).xt_rules
    unless = ("-m", "mark", "!", "--mark",
              f"{hexmark(marks.INJECTED)}/{hexmark(marks.MASK)}")
    for rule in rules:
        assert any(rule.spec[i:i + len(unless)] == unless for i in range(len(rule.spec)))
