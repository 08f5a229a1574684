"""The nftables ruleset as rendered (pure text; nothing is loaded here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from nfguard import marks, nft
from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, XT, render

REPO = Path(__file__).resolve().parents[2]
XT_BINARIES = {("iptables-nft", "ip6tables-nft"), ("iptables", "ip6tables")}


def hexmark(value: int) -> str:
    return f"0x{value:08x}"


def code_lines(text: str) -> list[str]:
    """Rule lines without comments or blank lines."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


@pytest.mark.parametrize("queue", [0, 7, 65535])
def test_native_closed_queues_without_bypass(queue: int) -> None:
    ruleset = render(EngineConfig(queue=queue, fail="closed"), NATIVE)
    assert ruleset.path == NATIVE
    assert ruleset.xt_rules == ()
    queue_lines = [line for line in code_lines(ruleset.nft) if line.startswith("queue")]
    assert queue_lines == [f"queue num {queue}"]
    assert "bypass" not in "\n".join(code_lines(ruleset.nft))
    assert "NFQUEUE" not in ruleset.describe()


def test_native_open_queues_with_bypass() -> None:
    ruleset = render(EngineConfig(queue=3, fail="open"), NATIVE)
    assert [line for line in code_lines(ruleset.nft) if line.startswith("queue")] == [
        "queue num 3 bypass"]
    assert ruleset.xt_rules == ()


@pytest.mark.parametrize(("fail", "flags"), [("open", "flags bypass "), ("closed", "")])
def test_native_workers_hash_addresses_and_ports_over_consecutive_queues(
        fail: str, flags: str) -> None:
    native = render(EngineConfig(queue=4, workers=3, fail=fail, forward_from=("docker0",)),
                    NATIVE)
    step = f"queue {flags}to symhash mod 3 offset 4"
    answer, queued = hexmark(marks.ANSWER), hexmark(marks.QUEUED)
    assert [line for line in code_lines(native.nft) if "queue" in line] == [
        f'udp sport 53 ct direction reply oifname {{ "docker0" }} meta mark set meta mark | '
        f"{answer} {step}",
        f'tcp sport 53 ct direction reply oifname {{ "docker0" }} meta mark set meta mark | '
        f"{answer} {step}",
        step,
        f"udp sport 53 ct direction reply meta mark set meta mark | {queued} {step}",
        f"tcp sport 53 ct direction reply meta mark set meta mark | {queued} {step}"]


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
        assert spec[spec.index("--comment") + 1] == nft.XT_COMMENT
    # DNS answers: the same rule in INPUT, one per family; forwarded flows and answers in
    # FORWARD; all in the security table, after the host's own filter rules.
    assert nft.XT_CHAINS == ("OUTPUT", "INPUT", "FORWARD")
    described = ruleset.describe()
    assert described.count("# and: ") == 6
    for chain in nft.XT_CHAINS:
        assert described.count(f"-t security -I {chain} 1 ") == 2
    assert '--comment "nfguard queue"' in described


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_dns_answers_are_queued_on_input_including_loopback(path: str) -> None:
    text = render(EngineConfig(queue=5), path).nft
    lines = chain_lines(text, "input")
    assert lines[0] == "type filter hook input priority filter - 10; policy accept;"
    suffix = " queue num 5" if path == NATIVE else ""
    queued = hexmark(marks.QUEUED)
    pending = f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.PENDING)}"
    keep = hexmark(~marks.MASK & 0xFFFFFFFF)
    assert lines[1:] == [
        f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.INJECTED)} "
        f"meta mark set meta mark & {keep} accept",
        f"ct direction reply {pending} jump pending_reply",
        f"tcp sport 53 ct direction reply ct mark & {hexmark(marks.VERDICT_MASK)} == "
        f"{hexmark(marks.DENY)} tcp flags & rst == rst accept",  # a cut stream's reset
        "meta l4proto { tcp, udp } th sport 53 ct direction reply jump answer",
        f"udp sport 53 ct direction reply meta mark set meta mark | {queued}{suffix}",
        f"tcp sport 53 ct direction reply meta mark set meta mark | {queued}{suffix}"]
    assert not [line for line in lines if "iifname" in line], \
        "loopback answers (a local stub) are queued too"
    after = code_lines(re.search(r"chain input_verdict \{(.*?)\}", text, re.S).group(1))
    assert after == [f"type filter hook input priority {nft.VERDICT_PRIORITY}; policy accept;",
                     "jump settle_answer"]
    verdict = code_lines(re.search(r"chain settle_answer \{(.*?)\}", text, re.S).group(1))
    assert (f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.ALLOW)} "
            f"meta mark set meta mark & {keep} accept") in verdict
    assert not [line for line in verdict if "ct mark" in line], "answers leave the ct mark"
    assert f"meta mark & {queued} != 0 counter name fail_closed_dropped drop" in verdict


def test_pending_flows_go_to_the_engine_again() -> None:
    lines = code_lines(render(EngineConfig(), NATIVE).nft)
    verdict, pending, keep, mask = (hexmark(v) for v in (
        marks.VERDICT_MASK, marks.PENDING, ~marks.MASK & 0xFFFFFFFF, marks.MASK))
    mark_pending = f"ct mark & {verdict} == {pending} meta mark set meta mark | {pending}"
    established = f"ct mark & {verdict} != {pending} ct state established,related accept"
    assert mark_pending in lines and established in lines
    # Before the established shortcut, so a pending flow's data is queued.
    assert lines.index(mark_pending) < lines.index(established) < lines.index(
        f"meta mark set meta mark | {hexmark(marks.QUEUED)}")
    assert (f"meta mark & {mask} == {pending} ct mark set ct mark & {keep} | {pending} "
            f"meta mark set meta mark & {keep} accept") in lines


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_pending_flows_pass_in_the_kernel_only_segments_that_carry_nothing(path: str) -> None:
    """No payload (the IP length is the headers'), no IPv4 options or IPv6 extension
    headers, no urgent data or reserved bits, TCP options none or the kernel's timestamp."""
    text = render(EngineConfig(), path).nft
    lines = code_lines(text)
    verdict, pending = hexmark(marks.VERDICT_MASK), hexmark(marks.PENDING)
    jump = f"ct mark & {verdict} == {pending} meta l4proto tcp jump bare"
    assert lines.index(jump) < lines.index(
        f"ct mark & {verdict} == {pending} meta mark set meta mark | {pending}")
    assert chain_lines(text, "bare") == [
        "tcp flags & (syn | urg) != 0 return",
        "tcp urgptr != 0 return",
        "@th,100,3 != 0 return",
        "ip hdrlength 5 ip length 40 tcp doff 5 accept",
        "ip hdrlength 5 ip length 52 tcp doff 8 @th,160,32 0x0101080a accept",
        "ip6 nexthdr tcp ip6 length 20 tcp doff 5 accept",
        "ip6 nexthdr tcp ip6 length 32 tcp doff 8 @th,160,32 0x0101080a accept"]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_a_pending_flows_replies_pass_only_bare_or_as_the_handshake(path: str) -> None:
    """The server of a flow that waits for its name cannot push data to the client (a
    server-first protocol's "run this"): on input, and forwarded to a container."""
    text = render(EngineConfig(forward_from=("docker0",)), path).nft
    pending = (f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.PENDING)} "
               "jump pending_reply")
    assert chain_lines(text, "input")[2] == f"ct direction reply {pending}"
    forward = chain_lines(text, "forward")
    assert f'ct direction reply oifname {{ "docker0" }} {pending}' in forward
    assert forward.index(f'ct direction reply oifname {{ "docker0" }} {pending}') < min(
        i for i, line in enumerate(forward) if "sport 53" in line)
    assert chain_lines(text, "pending_reply") == [
        "meta l4proto { icmp, ipv6-icmp } ct protocol tcp accept",
        "tcp flags & (syn | ack | fin | rst | urg) == syn | ack tcp urgptr 0 "
        "jump bare_handshake",
        "meta l4proto tcp jump bare",
        "counter name pending_replies_dropped drop"]
    seen = set()
    for rule in chain_lines(text, "bare_handshake"):
        v4 = re.fullmatch(r"ip hdrlength 5 ip length (\d+) tcp doff (\d+) accept", rule)
        v6 = re.fullmatch(r"ip6 nexthdr tcp ip6 length (\d+) tcp doff (\d+) accept", rule)
        m = v4 or v6
        assert m, rule
        length, doff = int(m[1]), int(m[2])
        assert length == (20 if v4 else 0) + 4 * doff, "no payload (TCP Fast Open data)"
        seen.add((4 if v4 else 6, doff))
    assert seen == {(f, d) for f in (4, 6) for d in range(5, 16)}


def test_describe_states_the_queue_path() -> None:
    assert render(EngineConfig(), NATIVE).describe().startswith(
        "# queue path: native nft queue\n")
    assert render(EngineConfig(), XT).describe().startswith("# queue path: xt NFQUEUE target")


def test_loopback_accepted_by_default_and_filtered_on_request() -> None:
    for path in (NATIVE, XT):
        default = code_lines(render(EngineConfig(), path).nft)
        assert 'oifname "lo" accept' in default
        # Before anything is queued.
        assert default.index('oifname "lo" accept') < default.index(
            f"meta mark set meta mark | {hexmark(marks.QUEUED)}")
        filtered = chain_lines(render(EngineConfig(filter_loopback=True), path).nft, "output")
        assert not [line for line in filtered if '"lo"' in line]


def test_ct_mark_rules_use_the_marks_module() -> None:
    lines = code_lines(render(EngineConfig(), NATIVE).nft)
    verdict, allow, deny, queued, mask = (hexmark(v) for v in (
        marks.VERDICT_MASK, marks.ALLOW, marks.DENY, marks.QUEUED, marks.MASK))
    keep = hexmark(~marks.MASK & 0xFFFFFFFF)
    assert f"ct mark & {verdict} == {allow} accept" in lines
    assert f"ct mark & {verdict} == {deny} jump cut" in lines
    assert f"meta mark set meta mark | {queued}" in lines
    assert (f"meta mark & {mask} == {allow} ct mark set ct mark & {keep} | {allow} "
            f"meta mark set meta mark & {keep} accept") in lines
    # The deny is kept in the ct mark where there is one; the packet is cut in any case.
    keep_deny = f"meta mark & {mask} == {deny} ct mark set ct mark & {keep} | {deny}"
    cut = f"meta mark & {mask} == {deny} meta mark set meta mark & {keep} jump cut"
    assert lines.index(keep_deny) + 1 == lines.index(cut)
    # Decided flows are handled before anything is queued.
    assert lines.index(f"ct mark & {verdict} == {allow} accept") < lines.index(
        f"meta mark set meta mark | {queued}")
    # No mark bit outside nfguard's MASK is ever set or tested.
    for value in re.findall(r"\| (0x[0-9a-f]{8})", "\n".join(lines)):
        assert int(value, 16) & ~marks.MASK == 0


def test_fail_closed_drops_queued_packets_without_verdict() -> None:
    for path in (NATIVE, XT):
        lines = code_lines(render(EngineConfig(fail="closed"), path).nft)
        assert (f"meta mark & {hexmark(marks.QUEUED)} != 0 counter name fail_closed_dropped "
                "drop") in lines
        assert not [line for line in lines if hexmark(marks.QUEUED) in line
                    and line.endswith("accept")]


def test_fail_open_lets_queued_packets_without_verdict_pass() -> None:
    keep = hexmark(~marks.MASK & 0xFFFFFFFF)
    for path in (NATIVE, XT):
        lines = code_lines(render(EngineConfig(fail="open"), path).nft)
        # counted: what fail open let through shows in nfguard_fail_open_passed_total
        assert (f"meta mark & {hexmark(marks.QUEUED)} != 0 counter name fail_open_passed "
                f"meta mark set meta mark & {keep} accept") in lines
        assert not [line for line in lines if line.endswith("fail_closed_dropped drop")]


def test_denied_flows_are_cut_and_table_is_ours() -> None:
    text = render(EngineConfig(), NATIVE).nft
    assert text.count("table inet nfguard {") == 1
    assert re.search(r"chain cut \{\s*meta l4proto tcp reject with tcp reset\s*"
                     r"reject with icmpx admin-prohibited\s*\}", text)
    assert "hook output priority filter - 10" in text
    assert f"hook output priority {nft.VERDICT_PRIORITY}" in text
    assert text.count("{") == text.count("}")


def test_header_reflects_settings() -> None:
    text = render(EngineConfig(mode="audit", fail="open", queue=9), NATIVE).nft
    assert "engine mode audit, fail open, queue 9" in text


def test_render_does_not_depend_on_installed_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft.shutil, "which", lambda name: None)
    without = render(EngineConfig(), XT).describe()
    monkeypatch.setattr(nft.shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert render(EngineConfig(), XT).describe() == without


@pytest.mark.parametrize(("path", "file"), [(NATIVE, "nfguard-native.nft"),
                                            (XT, "nfguard-xt.nft")])
def test_repository_copies_are_current(path: str, file: str) -> None:
    shipped = REPO / "nft" / file
    assert shipped.is_file(), f"{shipped} is missing: render it from EngineConfig()"
    assert shipped.read_text(encoding="utf-8") == render(EngineConfig(), path).describe()


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


# ---------------------------------------------------------------- forwarded traffic


def chain_lines(text: str, name: str) -> list[str]:
    found = re.search(rf"chain {name} \{{(.*?)\n\t\}}", text, re.S)
    assert found is not None, f"no chain {name}"
    return code_lines(found.group(1))


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_forwarded_flows_from_the_listed_interfaces_take_the_egress_path(path: str) -> None:
    text = render(EngineConfig(queue=2, forward_from=("docker0", "br-*")), path).nft
    names = '{ "docker0", "br-*" }'
    suffix = " queue num 2" if path == NATIVE else ""
    answer = hexmark(marks.ANSWER)
    pending = (f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.PENDING)} "
               "jump pending_reply")
    assert chain_lines(text, "forward") == [
        "type filter hook forward priority filter - 10; policy accept;",
        # first: a container's raw socket gets nothing untracked past (ct matches fail)
        f"iifname {names} ct state invalid,untracked counter name untracked_dropped drop",
        # every DNS query of theirs, whatever its direction (never a "reply")
        f"iifname {names} meta l4proto {{ tcp, udp }} th dport 53 jump dns_query",
        f"ct direction reply oifname {names} {pending}",
        f"meta l4proto {{ tcp, udp }} th sport 53 ct direction reply oifname {names} "
        "jump forwarded_answer",
        f"udp sport 53 ct direction reply oifname {names} meta mark set meta mark | "
        f"{answer}{suffix}",
        f"tcp sport 53 ct direction reply oifname {names} meta mark set meta mark | "
        f"{answer}{suffix}",
        f"ct state new iifname {names} update @new_flows_per_source4 {{ ip saddr limit rate "
        "over 2000/second burst 4000 packets } counter name new_flows_over_limit drop",
        f"ct state new iifname {names} update @new_flows_per_source6 {{ ip6 saddr limit rate "
        "over 2000/second burst 4000 packets } counter name new_flows_over_limit drop",
        # the original direction: the reply direction answers connections made into them
        f"ct direction original iifname {names} jump egress"]
    assert chain_lines(text, "forward_verdict") == [
        f"type filter hook forward priority {nft.VERDICT_PRIORITY}; policy accept;",
        "ct direction reply jump settle_answer",  # answers leave the ct mark alone
        "jump settle"]  # whatever else carries a verdict, with a conntrack entry or not
    assert chain_lines(text, "forwarded_answer") == [
        "fib saddr . iif oif missing counter name forged_answers_dropped drop",
        "meta nfproto ipv4 update @answers_per_client4 { ip daddr limit rate over "
        "500/second burst 1000 packets } counter name dns_answers_over_limit drop",
        "meta nfproto ipv6 update @answers_per_client6 { ip6 daddr limit rate over "
        "500/second burst 1000 packets } counter name dns_answers_over_limit drop"]
    # the host's own flows take the same chain: one flow logic for both
    assert chain_lines(text, "output")[-1] == "jump egress"
    egress = chain_lines(text, "egress")
    assert egress[-1] == "goto to_engine"
    assert chain_lines(text, "to_engine")[-1] == ("queue num 2" if path == NATIVE else
                          f"meta mark set meta mark | {hexmark(marks.QUEUED)}")
    assert marks.ANSWER & ~marks.MASK == 0 and marks.ANSWER & marks.QUEUED
    assert marks.is_answer(marks.ANSWER | 0x5) and not marks.is_answer(marks.QUEUED)
    assert not marks.is_answer(marks.QUEUED | marks.PENDING)


def test_forwarded_traffic_is_left_alone_without_interfaces() -> None:
    for path in (NATIVE, XT):
        ruleset = render(EngineConfig(forward_from=()), path)
        assert "hook forward" not in ruleset.nft
        assert not [rule for rule in ruleset.xt_rules if rule.chain == "FORWARD"]


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


def test_link_local_control_traffic_is_checked_before_anything_else() -> None:
    """Neighbour discovery, MLD and IGMP are not tracked: they go to link_control before the
    untracked drop, and leave only in their protocol's shape."""
    for path in (NATIVE, XT):
        text = render(EngineConfig(), path).nft
        output = chain_lines(text, "output")
        igmp = "ip protocol igmp jump link_control"
        icmpv6 = next(line for line in output if line.startswith("icmpv6 type {"))
        assert icmpv6.endswith("jump link_control")
        for kind in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit",
                     "mld-listener-report", "mld2-listener-report", "mld-listener-done"):
            assert kind in icmpv6
        untracked = output.index("ct state invalid,untracked counter name untracked_dropped "
                                 "drop")
        assert output.index(igmp) < untracked and output.index(icmpv6) < untracked
        control = chain_lines(text, "link_control")
        assert control[-1] == "counter name link_control_dropped drop"
        nd = [line for line in control if line.startswith("icmpv6 type nd-")]
        assert nd and all("ip6 hoplimit 255 ip6 nexthdr ipv6-icmp" in line for line in nd)
        solicit = next(line for line in nd if line.startswith("icmpv6 type nd-neighbor-solicit"))
        # a unicast solicitation to a global address (with payload or not) does not leave
        assert solicit.endswith("ip6 length { 24, 32 } ip6 daddr { fe80::/10, "
                                "ff02::1:ff00:0/104 } accept")
        advert = next(line for line in nd if line.startswith("icmpv6 type nd-neighbor-advert"))
        assert "ip6 length { 24, 32 }" in advert
        mld = next(line for line in control if "mld2-listener-report" in line)
        assert ("ip6 hoplimit 1 ip6 saddr { ::, fe80::/10 } ip6 daddr ff00::/8 limit rate "
                "10/second burst 50 packets accept") in mld
        assert ("ip protocol igmp ip ttl 1 ip hdrlength { 5, 6 } ip daddr 224.0.0.0/4 "
                "limit rate 10/second burst 50 packets accept") in control


@pytest.mark.parametrize(("path", "loopback"), [(NATIVE, False), (XT, False), (XT, True)])
def test_untracked_packets_are_dropped_before_anything_accepts_them(
        path: str, loopback: bool) -> None:
    """A packet without a conntrack entry fails every ct match: dropped (and counted) in
    output before the reply shortcut and the flow path; loopback stays unfiltered unless
    filter_loopback."""
    output = chain_lines(render(EngineConfig(filter_loopback=loopback), path).nft, "output")
    untracked = output.index("ct state invalid,untracked counter name untracked_dropped drop")
    assert untracked < output.index("ct direction reply accept") < output.index("jump egress")
    assert ('oifname "lo" accept' in output) is not loopback
    injected = f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.INJECTED)} accept"
    assert output[1] == injected, "the engine's own refusals first"
    before = output[2:untracked]
    assert [line for line in before if line.endswith("accept")] == (
        [] if loopback else ['oifname "lo" accept'])
    assert all(line.endswith(("jump link_control", "jump dns_query", "accept"))
               for line in before)


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_a_verdict_that_no_ct_mark_keeps_never_lets_the_packet_through(path: str) -> None:
    """Keeping a verdict reads the ct mark, which fails without a conntrack entry: the
    deny cuts the packet in a rule of its own, and any other verdict that could not be
    kept ends in a drop."""
    settle = chain_lines(render(EngineConfig(), path).nft, "settle")
    mask = hexmark(marks.MASK)
    assert settle[-1] == f"meta mark & {mask} != 0 counter name verdicts_without_conntrack drop"
    cut = [line for line in settle if line.endswith("jump cut")]
    assert cut == [f"meta mark & {mask} == {hexmark(marks.DENY)} meta mark set meta mark & "
                   f"{hexmark(~marks.MASK & 0xFFFFFFFF)} jump cut"]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_new_flows_and_dns_answers_are_metered_before_the_queue(path: str) -> None:
    text = render(EngineConfig(), path).nft
    output = chain_lines(text, "output")
    meter = ("ct state new update @new_flows_per_user { meta skuid limit rate over "
             "2000/second burst 4000 packets } counter name new_flows_over_limit drop")
    assert output.index(meter) == output.index("jump egress") - 1
    assert chain_lines(text, "answer") == [
        'iifname "lo" fib saddr type != local counter name forged_answers_dropped drop',
        'iifname != "lo" fib saddr . iif oif missing counter name forged_answers_dropped drop',
        "meta nfproto ipv4 update @answers_per_socket4 { ip daddr . th dport limit rate over "
        "200/second burst 400 packets } counter name dns_answers_over_limit drop",
        "meta nfproto ipv6 update @answers_per_socket6 { ip6 daddr . th dport limit rate "
        "over 200/second burst 400 packets } counter name dns_answers_over_limit drop"]
    lines = code_lines(text)
    for name, key in (("new_flows_per_user", "uid"),
                      ("answers_per_socket4", "ipv4_addr . inet_service"),
                      ("answers_per_client6", "ipv6_addr")):
        assert f"set {name} {{ type {key}; flags dynamic; timeout 1m; size 65536; }}" in lines
    comments = text.split("table inet nfguard {")[1].split("\tset ")[0]
    for value in ("2000/s per user (burst 4000", *map(str, nft.ANSWERS_PER_SOCKET)):
        assert value in comments, "the numbers are stated in the ruleset's comments"


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_the_new_flow_rate_is_the_configured_one_and_0_meters_none(path: str) -> None:
    forward = ("docker0",)
    text = render(EngineConfig(new_flows_per_user=25, forward_from=forward), path).nft
    assert ("ct state new update @new_flows_per_user { meta skuid limit rate over 25/second "
            "burst 50 packets } counter name new_flows_over_limit drop") in code_lines(text)
    assert len(re.findall(r"limit rate over 25/second burst 50 packets", text)) == 3
    unmetered = render(EngineConfig(new_flows_per_user=0, forward_from=forward), path).nft
    assert "update @new_flows" not in unmetered
    assert "not metered (engine.new_flows_per_user = 0)" in unmetered
    assert chain_lines(unmetered, "output")[-1] == "jump egress"


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_every_counter_used_is_declared(fail: str) -> None:
    text = render(EngineConfig(fail=fail, forward_from=("docker0",)), XT).nft
    declared = {line.split()[1] for line in code_lines(text)
                if re.fullmatch(r"counter \w+ \{ \}", line)}
    assert declared == set(nft.COUNTERS)
    used = set(re.findall(r"counter name (\w+)", text))
    assert used == declared - {"fail_closed_dropped" if fail == "open" else "fail_open_passed"}


def test_parse_counters_takes_our_named_counters_only() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "untracked_dropped",
                     "packets": 7, "bytes": 700}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "fail_open_passed",
                     "packets": 0, "bytes": 0}},
        {"counter": {"family": "inet", "table": "other", "name": "untracked_dropped",
                     "packets": 9, "bytes": 9}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "not_ours", "packets": 1}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "link_control_dropped"}},
        "junk",
    ]}
    assert nft.parse_counters(listing) == {"untracked_dropped": 7, "fail_open_passed": 0}
    assert nft.parse_counters({}) == {}


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_locally_sent_replies_pass_before_the_egress_checks(path: str) -> None:
    """A cut sends its reset or ICMP error from this host, attached to the cut flow's
    conntrack as a related reply: judged by `egress`, the flow's DENY would drop it (the
    container or loopback client would wait for a timeout instead of failing at once)."""
    output = chain_lines(render(EngineConfig(filter_loopback=True), path).nft, "output")
    assert output.index("ct direction reply accept") == output.index("jump egress") - 2
    assert "new_flows_per_user" in output[output.index("jump egress") - 1]


def _listing(*chains: tuple[str, str | None], rules: tuple[str, ...] = (),
             extra: tuple[dict, ...] = ()) -> list[dict]:
    """A JSON listing of the xt table: (chain name, policy or None for a regular chain)."""
    items: list[dict] = [{"metainfo": {}}, {"table": {"family": "ip", "name": "security"}}]
    for name, policy in chains:
        chain = {"family": "ip", "table": "security", "name": name}
        if policy is not None:
            chain |= {"type": "filter", "hook": name.lower(), "prio": 150, "policy": policy}
        items.append({"chain": chain})
    items += [{"rule": {"family": "ip", "table": "security", "chain": chain}}
              for chain in rules]
    return items + list(extra)


@pytest.mark.parametrize(("listing", "expected"), [
    # What iptables-nft leaves once nfguard's last rule is gone: the whole table goes.
    (_listing(("OUTPUT", "accept"), ("INPUT", "accept")), ["delete table ip security"]),
    # Someone's rule, drop policy or own chain: only the idle accepting base chains go.
    (_listing(("OUTPUT", "accept"), ("INPUT", "accept"), rules=("OUTPUT",)),
     ["delete chain ip security INPUT"]),
    (_listing(("OUTPUT", "drop"), ("INPUT", "accept")), ["delete chain ip security INPUT"]),
    (_listing(("OUTPUT", "accept"), ("mine", None)), ["delete chain ip security OUTPUT"]),
    (_listing(("OUTPUT", "accept"), extra=({"set": {"name": "s"}},)),
     ["delete chain ip security OUTPUT"]),
    (_listing(("OUTPUT", "drop")), []),
])
def test_uninstall_drops_only_the_empty_accepting_chains_of_the_xt_table(
        listing: list[dict], expected: list[str]) -> None:
    assert nft._empty_chain_deletions("ip", listing) == expected


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_every_dns_query_goes_to_the_engine_whatever_its_flows_verdict(path: str) -> None:
    """A decided flow's later queries too (A and AAAA on one socket, a tunnel's thousands),
    and a query that conntrack calls a reply (of a flow an inbound or forged packet from
    port 53 started); a denied flow stays cut in the kernel."""
    text = render(EngineConfig(queue=2, forward_from=("br0",)), path).nft
    output = chain_lines(text, "output")
    query = output.index("meta l4proto { tcp, udp } th dport 53 jump dns_query")
    assert (output.index("ct state invalid,untracked counter name untracked_dropped drop")
            < query < output.index("ct direction reply accept"))
    assert "jump dns_query" not in "\n".join(chain_lines(text, "egress"))
    ct_field = hexmark(marks.VERDICT_MASK)
    assert chain_lines(text, "dns_query") == [
        f"ct mark & {ct_field} == {hexmark(marks.DENY)} jump cut",  # stays cut
        *(f"meta nfproto {family} update @queries_per_socket{n} {{ {field} saddr . th sport "
          "limit rate over 200/second burst 400 packets } counter name dns_queries_over_limit "
          "drop" for family, n, field in (("ipv4", 4, "ip"), ("ipv6", 6, "ip6"))),
        "meta l4proto udp goto to_engine",  # every datagram
        "tcp flags & (syn | rst) != 0 return",  # the handshake: the flow's usual path
        "jump bare",  # a segment without bytes passes
        "goto to_engine"]  # every segment with bytes, pipelined queries too


def test_the_engines_refusals_are_not_tracked() -> None:
    """Tracked, a refusal (server:53 -> client:port) would make the client's next query on
    that socket a conntrack "reply"."""
    text = render(EngineConfig(), NATIVE).nft
    assert chain_lines(text, "refusals") == [
        "type filter hook output priority raw; policy accept;",
        f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.INJECTED)} notrack"]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_queries_to_a_local_stub_are_judged_on_loopback(path: str) -> None:
    output = chain_lines(render(EngineConfig(), path).nft, "output")
    stub = output.index('oifname "lo" meta l4proto { tcp, udp } th dport 53 jump dns_query')
    assert stub < output.index('oifname "lo" accept'), "before the rest of loopback passes"
    filtered = chain_lines(render(EngineConfig(filter_loopback=True), path).nft, "output")
    assert [line for line in filtered if "dns_query" in line] == [
        "meta l4proto { tcp, udp } th dport 53 jump dns_query"], "the one rule judges them then"


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_with_queries_any_for_everyone_no_query_is_queued(path: str) -> None:
    text = render(EngineConfig(), path, queries=False).nft
    assert "jump dns_query" not in text
    assert code_lines(text) == [line for line in code_lines(render(EngineConfig(), path).nft)
                                if "jump dns_query" not in line]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_the_engines_refusals_pass_to_their_client_without_a_verdict(path: str) -> None:
    """The REFUSED answer the engine writes carries marks.INJECTED: let through in output
    (not a new flow), in settle (before fail-closed drops what came back unjudged) and on
    input (not an answer to learn, and not a loopback forgery), its mark cleared there."""
    text = render(EngineConfig(fail="closed"), path).nft
    mask, injected = hexmark(marks.MASK), hexmark(marks.INJECTED)
    assert chain_lines(text, "output")[1] == f"meta mark & {mask} == {injected} accept"
    settle = chain_lines(text, "settle")
    assert settle[0] == f"meta mark & {mask} == {injected} accept"
    assert not [line for line in settle[1:] if injected in line]
    keep = hexmark(~marks.MASK & 0xFFFFFFFF)
    assert chain_lines(text, "input")[1] == (f"meta mark & {mask} == {injected} "
                                             f"meta mark set meta mark & {keep} accept")
    assert marks.INJECTED & marks.QUEUED and not marks.is_answer(marks.INJECTED)
    assert marks.INJECTED not in (marks.ALLOW, marks.DENY, marks.PENDING, marks.QUEUED,
                                  marks.QUEUED | marks.PENDING)


def test_the_xt_queue_rules_leave_the_engines_refusals_alone() -> None:
    """INJECTED carries the QUEUED bit: the xt rules must not queue a refusal."""
    rules = render(EngineConfig(forward_from=("br0",)), XT).xt_rules
    unless = ("-m", "mark", "!", "--mark",
              f"{hexmark(marks.INJECTED)}/{hexmark(marks.MASK)}")
    for rule in rules:
        assert any(rule.spec[i:i + len(unless)] == unless for i in range(len(rule.spec)))
