"""The one-trip sets: which (address, port) a name may be allowed on, what the mirror of
the kernel's sets pushes and when, and the keeper's rewrites."""

from __future__ import annotations

import pytest

from nfguard.onetrip import (
    ANY_PORT,
    REFRESH_AFTER,
    Batch,
    Element,
    OneTrip,
    SetMirror,
    name_ports,
)
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet

POLICY = """\
[[client]]
name = "web"
match = { user = "www" }
policies = ["web"]

[[client]]
name = "ci"
policies = ["ci"]

[[policy]]
name = "web"

[[policy.rule]]
action = "deny"
to = ["bad.example"]
ports = [443]

[[policy.rule]]
action = "allow"
to = ["*.example", "bad.example"]
ports = [443, 80]

[[policy.rule]]
action = "allow"
to = ["resolver.test"]
ports = [53]
proto = "udp"

[[policy]]
name = "ci"

[[policy.rule]]
action = "allow"
to = ["git.test"]
ports = [22]

[[policy.rule]]
action = "allow"
to = ["**.wide.example"]
ports = ["1000-2000"]

[[policy.rule]]
action = "allow"
to = ["any.test"]
"""
NOW = 1_000.0
V4, V6 = "192.0.2.1", "2001:db8::1"


def compiled(text: str = POLICY) -> CompiledPolicySet:
    return CompiledPolicySet(parse_policy_texts([("p.toml", text)]))


@pytest.mark.parametrize(("name", "ports"), [
    ("www.example", {80, 443}),
    ("git.test", {22}),  # the ci policy's: the sets are every policy's
    ("bad.example", {80, 443}),  # a deny before an allow: the allow may still hold
    ("resolver.test", set()),  # udp only: no TCP flow waits for it
    ("a.b.wide.example", {ANY_PORT}),  # a range too wide to list
    ("any.test", {ANY_PORT}),  # no ports
    ("elsewhere.test", set()),
])
def test_name_ports(name: str, ports: set[int]) -> None:
    assert name_ports(compiled(), name) == ports


def test_elements_name_their_set_and_key() -> None:
    assert Element(4, V4, 443).set_name == "onetrip4"
    assert Element(6, V6, ANY_PORT).set_name == "onetrip_any6"
    assert Element(4, V4, 443).key == f"{V4} . 443"
    assert Element(6, V6, ANY_PORT).key == V6


def test_a_new_element_is_pushed_once_with_the_time_left() -> None:
    mirror = SetMirror()
    mirror.want(Element(4, V4, 443), NOW + 360.2, NOW)
    mirror.want(Element(4, V4, 443), NOW + 300, NOW)  # a shorter one changes nothing
    batch = mirror.take(NOW)
    assert batch == Batch(False, (), ((Element(4, V4, 443), 361),))
    assert batch.commands() == (f"add element inet nfguard onetrip4 {{ {V4} . 443 timeout "
                                "361s }\n")
    assert not mirror.take(NOW)


def test_a_longer_expiry_is_pushed_again_only_when_worth_it() -> None:
    mirror = SetMirror()
    element = Element(4, V4, 443)
    mirror.want(element, NOW + 100, NOW)
    mirror.take(NOW)
    mirror.want(element, NOW + 100 + REFRESH_AFTER / 2, NOW + 1)
    assert not mirror.take(NOW + 1)
    mirror.want(element, NOW + 100 + REFRESH_AFTER, NOW + 2)
    batch = mirror.take(NOW + 2)
    assert batch.deletes == (element,) and batch.adds == ((element, 100 + int(REFRESH_AFTER) - 2),)
    assert batch.commands().splitlines()[0] == (
        f"delete element inet nfguard onetrip4 {{ {V4} . 443 }}")


def test_an_element_expired_in_the_kernel_is_added_anew_not_refreshed() -> None:
    mirror = SetMirror()
    element = Element(6, V6, ANY_PORT)
    mirror.want(element, NOW + 10, NOW)
    mirror.take(NOW)
    mirror.want(element, NOW + 500, NOW + 10)
    assert mirror.take(NOW + 10) == Batch(False, (), ((element, 490),))


def test_a_full_set_takes_no_more_until_elements_expire() -> None:
    mirror = SetMirror(size=2)
    for n in range(3):
        mirror.want(Element(4, f"192.0.2.{n}", 443), NOW + 10 + n, NOW)
    assert [e.address for e, _t in mirror.take(NOW).adds] == ["192.0.2.0", "192.0.2.1"]
    mirror.want(Element(6, V6, 443), NOW + 10, NOW)  # another set: room there
    mirror.want(Element(4, "192.0.2.2", 443), NOW + 30, NOW + 10.5)  # .0 has expired
    assert [e.address for e, _t in mirror.take(NOW + 10.5).adds] == [V6, "192.0.2.2"]


def test_a_rewrite_flushes_every_set_then_adds_what_is_wanted() -> None:
    mirror = SetMirror()
    mirror.want(Element(4, V4, 443), NOW + 100, NOW)
    mirror.take(NOW)
    batch = mirror.rewrite([(Element(4, V4, 80), NOW + 50), (Element(4, V4, 80), NOW + 70),
                            (Element(4, V4, 22), NOW - 1)], NOW)
    lines = batch.commands().splitlines()
    assert lines[:4] == [f"flush set inet nfguard {name}" for name in
                         ("onetrip4", "onetrip_any4", "onetrip6", "onetrip_any6")]
    assert lines[4:] == [f"add element inet nfguard onetrip4 {{ {V4} . 80 timeout 70s }}"]
    assert mirror.pushed == {Element(4, V4, 80): NOW + 70}


class Keeper:
    """A OneTrip with a clock, a name cache's content and a recording nft."""

    def __init__(self) -> None:
        self.now = NOW
        self.applied: list[str] = []
        self.fail = False
        self.generation = 0
        self.cached: list[tuple[str, str, float]] = []
        self.one_trip = OneTrip(self.apply, lambda: self.now, lambda: self.generation)

    def apply(self, commands: str) -> None:
        if self.fail:
            raise RuntimeError("Could not process rule: No such file or directory")
        self.applied.append(commands)

    def tend(self, policies: CompiledPolicySet | None) -> str:
        self.applied.clear()
        self.one_trip.tend(policies, lambda now: self.cached)
        self.now += 1
        return "".join(self.applied)


def test_the_keeper_rewrites_from_the_cache_then_pushes_what_is_learnt() -> None:
    keeper, policies = Keeper(), compiled()
    keeper.cached = [(V4, "www.example", NOW + 100)]
    first = keeper.tend(policies)
    assert first.startswith("flush set") and f"{V4} . 443 timeout 100s" in first
    keeper.one_trip.learnt(policies, [(V6, "git.test", keeper.now + 50)], keeper.now)
    assert keeper.tend(policies) == (f"add element inet nfguard onetrip6 {{ {V6} . 22 timeout "
                                     "50s }\n")
    assert keeper.tend(policies) == ""  # nothing new


def test_a_reload_or_a_restored_ruleset_rewrites_and_a_failed_push_is_retried_whole() -> None:
    keeper, policies = Keeper(), compiled()
    keeper.cached = [(V4, "any.test", NOW + 100)]
    keeper.tend(policies)
    reloaded = compiled(POLICY.replace('to = ["any.test"]', 'to = ["other.example"]'))
    keeper.one_trip.learnt(policies, [(V6, "www.example", NOW + 50)], keeper.now)  # old policy
    rewrite = keeper.tend(reloaded)
    assert rewrite.startswith("flush set") and "add element" not in rewrite  # name gone
    keeper.generation += 1  # the ruleset was put back: its sets are empty
    keeper.cached = [(V4, "www.example", keeper.now + 100)]
    assert keeper.tend(reloaded).startswith("flush set")
    keeper.fail = True
    keeper.one_trip.learnt(reloaded, [(V6, "www.example", keeper.now + 50)], keeper.now)
    assert keeper.tend(reloaded) == "" and keeper.one_trip.failures == 1
    keeper.fail = False
    again = keeper.tend(reloaded)
    assert again.startswith("flush set") and f"{V4} . 443" in again


def test_one_trip_turned_off_empties_the_sets_and_on_again_fills_them() -> None:
    keeper, policies = Keeper(), compiled()
    keeper.cached = [(V4, "www.example", NOW + 100)]
    assert "add element" in keeper.tend(policies)
    off = keeper.tend(None)
    assert off.startswith("flush set") and "add element" not in off
    keeper.one_trip.learnt(policies, [(V6, "www.example", keeper.now + 50)], keeper.now)
    assert keeper.tend(None) == ""
    assert "add element" in keeper.tend(policies)


def test_addresses_names_are_kept_from_never_enter_the_sets() -> None:
    """The DNS rebinding guard decides a SYN to an inside address in the engine: one trip
    must not let that SYN (and a handshake) go there first."""
    keeper, policies = Keeper(), compiled()
    keeper.one_trip.kept_from = lambda address: address == V4
    keeper.cached = [(V4, "www.example", NOW + 100), (V6, "git.test", NOW + 100)]
    first = keeper.tend(policies)
    assert V4 not in first and f"{V6} . 22" in first
    keeper.one_trip.learnt(policies, [(V4, "www.example", keeper.now + 50)], keeper.now)
    assert keeper.tend(policies) == ""
