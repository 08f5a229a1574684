"""Rule CIDRs: `parse_network` accepts, rejects and words errors exactly as
`ipaddress.ip_network(text, strict=True)` does, on any text."""

from __future__ import annotations

import ipaddress
from socket import AF_INET6, inet_ntop

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.policy import networks
from nfguard.policy.networks import Network, parse_network

MANY = settings(max_examples=3000, deadline=None)


def reference(text: str) -> tuple[str, object]:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return "error", str(exc)
    return "network", Network(network.version, int(network.network_address), network.prefixlen)


def parsed(text: str) -> tuple[str, object]:
    try:
        return "network", parse_network(text)
    except ValueError as exc:
        return "error", str(exc)


def netmask(prefix: int) -> str:
    return f"/{ipaddress.IPv4Network((0, prefix)).netmask}"


def v4_texts() -> st.SearchStrategy[str]:
    """Dotted quads, canonical or not (leading zeros, big octets), with or without host bits,
    with prefixes in and out of range, with netmasks."""
    octet = st.one_of(st.integers(0, 255).map(str), st.integers(0, 999).map(str),
                      st.integers(0, 255).map(lambda o: f"0{o}"), st.just(""))
    address = st.lists(octet, min_size=3, max_size=5).map(".".join)
    prefix = st.one_of(st.just(""), st.integers(0, 40).map(lambda p: f"/{p}"),
                       st.integers(0, 32).map(lambda p: f"/0{p}"),
                       st.integers(0, 32).map(netmask),
                       st.sampled_from(["/", "/-1", "/+8", "/8/8", "/ 8", "/٣"]))
    return st.tuples(address, prefix).map("".join)


def v6_texts() -> st.SearchStrategy[str]:
    """IPv6 in every spelling: compressed, exploded, upper case, embedded IPv4, the C
    library's own form; with and without host bits and prefixes."""
    def spell(value: int, style: int) -> str:
        address = ipaddress.IPv6Address(value)
        if style == 0:
            return str(address)
        if style == 1:
            return address.exploded
        if style == 2:
            return str(address).upper()
        if style == 3:
            return f"::ffff:{ipaddress.IPv4Address(value & 0xFFFFFFFF)}"
        return inet_ntop(AF_INET6, address.packed)

    value = st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**32 - 1),
                      st.integers(0, 2**16 - 1).map(lambda v: v << 112))
    address = st.builds(spell, value, st.integers(0, 4))
    prefix = st.one_of(st.just(""), st.integers(0, 130).map(lambda p: f"/{p}"),
                       st.sampled_from(["/", "/064", "/a", "/1/2"]))
    return st.tuples(address, prefix).map("".join)


@MANY
@given(st.one_of(v4_texts(), v6_texts(),
                 st.text(alphabet="0123456789abcdefABCDEF.:/% x\x00é", max_size=45),
                 st.text(max_size=20)))
def test_same_result_and_message_as_ipaddress(text: str) -> None:
    assert parsed(text) == reference(text)


ADDRESS_TYPES = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}
BITS = {4: 32, 6: 128}


def networks_of(version: int) -> st.SearchStrategy[tuple[int, int, int]]:
    """(version, any address value, any prefix length) of one IP version."""
    bits = BITS[version]
    return st.tuples(st.just(version), st.integers(0, 2**bits - 1), st.integers(0, bits))


@MANY
@given(st.one_of(networks_of(4), networks_of(6)))
def test_every_network(case: tuple[int, int, int]) -> None:
    version, value, prefix = case
    address = ADDRESS_TYPES[version]
    network = value & ~((1 << (BITS[version] - prefix)) - 1)
    text = f"{address(network)}/{prefix}"
    assert parse_network(text) == Network(version, network, prefix) == reference(text)[1]
    host = f"{address(value)}/{prefix}"  # host bits set, or not
    assert parsed(host) == reference(host)


@pytest.mark.parametrize("text, message", [
    ("10.0.0.1/8", "10.0.0.1/8 has host bits set"),
    ("10.0.0.0/33", "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
    ("010.0.0.0/8", "'010.0.0.0/8' does not appear to be an IPv4 or IPv6 network"),
    ("1.2.3.4/24/8", "'1.2.3.4/24/8' does not appear to be an IPv4 or IPv6 network"),
    ("2001:db8::1/32", "2001:db8::1/32 has host bits set"),
    ("", "'' does not appear to be an IPv4 or IPv6 network"),
])
def test_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_network(text)
    assert str(info.value) == message


def test_usual_spellings_do_not_need_ipaddress(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("went through ipaddress")

    monkeypatch.setattr(networks.ipaddress, "ip_network", refuse)
    assert parse_network("10.1.0.0/16") == Network(4, 0x0A010000, 16)
    assert parse_network("192.0.2.7") == Network(4, 0xC0000207, 32)
    assert parse_network("0.0.0.0/0") == Network(4, 0, 0)
    assert parse_network("2001:db8::/32") == Network(6, 0x20010DB8 << 96, 32)
    assert parse_network("::1") == Network(6, 1, 128)


def test_other_spellings_are_still_accepted() -> None:
    assert parse_network("10.1.0.0/255.255.0.0") == Network(4, 0x0A010000, 16)
    assert parse_network("2001:DB8::/32") == Network(6, 0x20010DB8 << 96, 32)
    assert parse_network("2001:db8:0:0:0:0:0:0/032") == Network(6, 0x20010DB8 << 96, 32)


def test_text_and_membership() -> None:
    v4, v6 = parse_network("140.82.112.0/20"), parse_network("2606:50c0::/32")
    assert (str(v4), str(v6)) == ("140.82.112.0/20", "2606:50c0::/32")
    assert str(parse_network("192.0.2.7")) == "192.0.2.7/32"
    assert v4.contains(ipaddress.ip_address("140.82.127.255"))
    assert not v4.contains(ipaddress.ip_address("140.82.128.0"))
    assert not v4.contains(ipaddress.ip_address("::ffff:140.82.112.1"))
    assert v6.contains(ipaddress.ip_address("2606:50c0:ffff::1"))
    assert not v6.contains(ipaddress.ip_address("2606:50c1::"))
    assert parse_network("0.0.0.0/0").contains(ipaddress.ip_address("255.255.255.255"))
