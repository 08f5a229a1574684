"""Names in rules: the registrable domain, and siblings collapsed under it."""

from __future__ import annotations

from nfguard.suggest.names import collapse_names, registrable_domain


def test_registrable_domain_uses_the_public_suffix_list() -> None:
    assert registrable_domain("a.b.example.com") == "example.com"
    assert registrable_domain("x.y.example.co.uk") == "example.co.uk"
    assert registrable_domain("co.uk") is None
    assert registrable_domain("com") is None


def test_collapse_at_threshold_only() -> None:
    two = collapse_names(["a.example.com", "b.example.com"], 3)
    assert two == {"a.example.com": ["a.example.com"], "b.example.com": ["b.example.com"]}
    three = collapse_names(["a.example.com", "b.example.com", "c.example.com"], 3)
    assert three == {"**.example.com": ["a.example.com", "b.example.com", "c.example.com"]}
    assert collapse_names(["a.example.com", "b.example.com"], 2) == {
        "**.example.com": ["a.example.com", "b.example.com"]}
    off = collapse_names(["a.example.com", "b.example.com", "c.example.com"], 0)
    assert set(off) == {"a.example.com", "b.example.com", "c.example.com"}


def test_collapse_never_past_the_registrable_domain() -> None:
    # Three different registrable domains under .com and under .co.uk: no collapse at all.
    names = ["one.com", "two.com", "three.com", "a.one.co.uk", "b.two.co.uk", "c.three.co.uk"]
    entries = collapse_names(names, 2)
    assert sorted(entries) == sorted(names)
    assert not any(e in ("**.com", "**.co.uk", "**.uk") for e in entries)
    # Siblings under a multi-part public suffix collapse to the registrable domain, no higher.
    entries = collapse_names(["a.shop.co.uk", "b.shop.co.uk", "c.shop.co.uk", "d.other.co.uk"])
    assert entries == {"**.shop.co.uk": ["a.shop.co.uk", "b.shop.co.uk", "c.shop.co.uk"],
                       "d.other.co.uk": ["d.other.co.uk"]}


def test_collapse_to_deepest_common_parent_and_keeps_the_apex() -> None:
    entries = collapse_names(["x.cdn.example.com", "y.cdn.example.com", "z.cdn.example.com",
                              "example.com"])
    assert entries == {
        "**.cdn.example.com": ["x.cdn.example.com", "y.cdn.example.com", "z.cdn.example.com"],
        "example.com": ["example.com"],
    }
    # cdn.example.com itself is one of them: "**.cdn.example.com" would miss it.
    entries = collapse_names(["cdn.example.com", "a.cdn.example.com", "b.cdn.example.com"])
    assert entries == {"**.example.com": ["a.cdn.example.com", "b.cdn.example.com",
                                          "cdn.example.com"]}
