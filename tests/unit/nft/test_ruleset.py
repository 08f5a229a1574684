"""The nftables ruleset as rendered (pure text; nothing is loaded here): the hook chains
a flow, a DNS query and a DNS answer take."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, VERDICT_PRIORITY, XT
from nfguard.nft.ruleset import render
from tests.unit.nft.rendered import ONE_TRIP_JUMP, chain_lines, code_lines, hexmark

REPO = Path(__file__).resolve().parents[3]


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
    answer = hexmark(marks.ANSWER)
    assert [line for line in code_lines(native.nft) if "queue" in line] == [
        f'udp sport 53 ct direction reply oifname {{ "docker0" }} meta mark set meta mark | '
        f"{answer} {step}",
        f'tcp sport 53 ct direction reply oifname {{ "docker0" }} meta mark set meta mark | '
        f"{answer} {step}",
        step,
        f"udp sport 53 ct direction reply meta mark set meta mark | {answer} {step}",
        f"tcp sport 53 ct direction reply meta mark set meta mark | {answer} {step}"]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_dns_answers_are_queued_on_input_including_loopback(path: str) -> None:
    text = render(EngineConfig(queue=5, forward_from=()), path).nft
    lines = chain_lines(text, "input")
    assert lines[0] == "type filter hook input priority filter - 10; policy accept;"
    suffix = " queue num 5" if path == NATIVE else ""
    queued, answer = hexmark(marks.QUEUED), hexmark(marks.ANSWER)
    pending = f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.PENDING)}"
    keep = hexmark(~marks.MASK & 0xFFFFFFFF)
    assert lines[1:] == [
        f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.INJECTED)} udp sport 53 "
        f'iifname "lo" meta mark set meta mark & {keep} accept',
        f"ct direction reply {pending} jump pending_reply",
        f"ct direction reply ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.DENY)} "
        "meta l4proto tcp jump pending_reply",
        f"tcp sport 53 ct direction reply ct mark & {hexmark(marks.VERDICT_MASK)} == "
        f"{hexmark(marks.DENY)} tcp flags & rst == rst accept",  # a cut stream's reset
        "meta l4proto { tcp, udp } th sport 53 ct direction reply jump answer",
        f"udp sport 53 ct direction reply meta mark set meta mark | {answer}{suffix}",
        f"tcp sport 53 ct direction reply meta mark set meta mark | {answer}{suffix}"]
    assert not [line for line in lines[2:] if "iifname" in line], \
        "loopback answers (a local stub) are queued too"
    after = code_lines(re.search(r"chain input_verdict \{(.*?)\}", text, re.S).group(1))
    assert after == [f"type filter hook input priority {VERDICT_PRIORITY}; policy accept;",
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
        assert not [line for line in filtered
                    if '"lo"' in line and hexmark(marks.INJECTED) not in line]


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
    assert f"hook output priority {VERDICT_PRIORITY}" in text
    assert text.count("{") == text.count("}")


def test_header_reflects_settings() -> None:
    text = render(EngineConfig(mode="audit", fail="open", queue=9), NATIVE).nft
    assert "engine mode audit, fail open, queue 9" in text


def test_render_does_not_depend_on_installed_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    without = render(EngineConfig(), XT).describe()
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert render(EngineConfig(), XT).describe() == without


@pytest.mark.parametrize(("path", "file"), [(NATIVE, "nfguard-native.nft"),
                                            (XT, "nfguard-xt.nft")])
def test_repository_copies_are_current(path: str, file: str) -> None:
    shipped = REPO / "nft" / file
    assert shipped.is_file(), f"{shipped} is missing: render it from EngineConfig()"
    assert shipped.read_text(encoding="utf-8") == render(EngineConfig(), path).describe()


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
    assert output[1] == refusal_rule(EngineConfig()), "the engine's own refusals first"
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
def test_locally_sent_replies_pass_before_the_egress_checks(path: str) -> None:
    """A cut sends its reset or ICMP error from this host, attached to the cut flow's
    conntrack as a related reply: judged by `egress`, the flow's DENY would drop it (the
    container or loopback client would wait for a timeout instead of failing at once)."""
    output = chain_lines(render(EngineConfig(filter_loopback=True), path).nft, "output")
    assert output.index("ct direction reply accept") == output.index(ONE_TRIP_JUMP) - 2
    assert "new_flows_per_user" in output[output.index(ONE_TRIP_JUMP) - 1]


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
        "tcp flags & (syn | rst) != 0 goto dns_handshake",
        "jump bare",  # a segment without bytes passes
        "goto to_engine"]  # every segment with bytes, pipelined queries too
    # The handshake takes its flow's usual path (the return leaves dns_query too, as it
    # was entered by goto), unless its SYN or RST carries bytes: TCP Fast Open data, which
    # over loopback nothing else would judge.
    handshake = chain_lines(text, "dns_handshake")
    assert handshake[-1] == "goto to_engine"
    assert "ip hdrlength 5 ip length 40 tcp doff 5 return" in handshake
    assert "ip6 nexthdr tcp ip6 length 40 tcp doff 10 return" in handshake
    assert all(line.endswith(" return") for line in handshake[:-1])
    assert [line.replace(" return", " accept") for line in handshake[:-1]] == \
        chain_lines(text, "bare_handshake"), "the same shape as a bare SYN-ACK"


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
                                if "jump dns_query" not in line
                                and "jump settle\t# such a query" not in line
                                and not line.startswith("ct direction original meta mark")]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_the_engines_refusals_pass_to_their_client_without_a_verdict(path: str) -> None:
    """The REFUSED answer the engine writes carries marks.INJECTED: let through in output
    (not a new flow), in settle (before fail-closed drops what came back unjudged) and on
    input (not an answer to learn, and not a loopback forgery), its mark cleared there."""
    text = render(EngineConfig(fail="closed"), path).nft
    mask, injected = hexmark(marks.MASK), hexmark(marks.INJECTED)
    assert chain_lines(text, "output")[1] == refusal_rule(EngineConfig())
    settle = chain_lines(text, "settle")
    assert settle[0] == f"meta mark & {mask} == {injected} accept"
    assert not [line for line in settle[1:] if injected in line]
    keep = hexmark(~marks.MASK & 0xFFFFFFFF)
    assert chain_lines(text, "input")[1] == (f"meta mark & {mask} == {injected} udp sport 53 "
                                             f'iifname "lo" meta mark set meta mark & {keep} '
                                             "accept")
    assert marks.INJECTED & marks.QUEUED and not marks.is_answer(marks.INJECTED)
    assert marks.INJECTED not in (marks.ALLOW, marks.DENY, marks.PENDING, marks.QUEUED,
                                  marks.QUEUED | marks.PENDING)


def refusal_rule(settings: EngineConfig) -> str:
    to = ", ".join(f'"{name}"' for name in ("lo", *settings.forward_from))
    return (f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.INJECTED)} udp sport 53 "
            f"oifname {{ {to} }} accept")


def test_only_a_refusals_shape_passes_with_the_refusal_mark() -> None:
    """SO_MARK takes only CAP_NET_RAW: the mark lets through UDP from port 53 to a client
    on this host or behind forward_from, nothing else (which, untracked, is dropped)."""
    settings = EngineConfig(forward_from=("docker0", "br-*"))
    output = chain_lines(render(settings, NATIVE).nft, "output")
    assert output[1] == (f"meta mark & {hexmark(marks.MASK)} == {hexmark(marks.INJECTED)} "
                         'udp sport 53 oifname { "lo", "docker0", "br-*" } accept')
    assert [line for line in output if hexmark(marks.INJECTED) in line] == [output[1]]
    alone = chain_lines(render(EngineConfig(forward_from=()), NATIVE).nft, "output")
    assert 'udp sport 53 oifname { "lo" } accept' in alone[1]
