"""Source maps: the one-pass search for `[[array]]` headers locates clients, policies and
rules on exactly the lines the full line-by-line scan gives, on any text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.policy.source import SourceMap
from tests.bench.policies import scale_policy

FRAGMENTS = [
    "[[client]]", "[[policy]]", "[[policy.rule]]", "  [[ policy . rule ]]  # comment",
    "[[policy.rule.x]]", "[[ policy.rule ]]extra", "[[policy]", "[policy]", "[policy.rule]",
    "[[a.b.c]]", "[[a]]", "[ [policy]]", "[[]]", "[[po licy]]", "\t[[client]]",
    'name = "x"', 'to = ["10.0.0.0/8",', '  "a.example",', "]", '"""', "[[client]] = 1",
    "# [[policy]]", "\xa0[[policy]]", "[[policy\x1f]]", "", " ", "key.sub = 1",
]
BREAKS = ["\n", "\n", "\n", "\r\n", "\r", "\x0c", "\x85", "\u2028", "\x1c"]


def index_paths(source: SourceMap) -> dict[tuple, int]:
    """What the line scan says about every path that ends in an array index."""
    spans = source._scan()
    return {path: span[0] for path, span in spans.items() if isinstance(path[-1], int)}


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(BREAKS)), max_size=40))
def test_header_search_agrees_with_the_line_scan(lines: list[tuple[str, str]]) -> None:
    text = "".join(line + end for line, end in lines)
    source = SourceMap(text)
    expected = index_paths(SourceMap(text))
    if all(end in ("\n", "\r\n") for _line, end in lines):
        found = {(*array, index): line for array, lines in source._arrays.items()
                 for index, line in enumerate(lines)}
        assert found == expected  # found without the line scan ...
    for path, line in expected.items():
        assert source.line(path) == line  # ... and the same either way


def test_locating_rules_needs_no_line_scan() -> None:
    text = scale_policy(40)
    source = SourceMap(text)
    lines = text.splitlines()
    line = source.line(("policy", 0, "rule", 39))
    assert lines[line - 1] == "[[policy.rule]]" and lines[line] == 'name = "r39"'
    assert source.line(("client", 0)) == 1
    assert source._spans is None
    # A value's line (for a message) is the line scan's.
    assert lines[source.line(("policy", 0, "rule", 39, "to")) - 1].startswith("to = ")
    assert source._spans is not None


def test_lines_are_cut_as_before_with_other_line_breaks() -> None:
    text = "# a\u2028b\n[[policy]]\nname = 'p'\n[[policy.rule]]\naction = 'allow'\n"
    source = SourceMap(text)
    # str.splitlines() counts U+2028 as a line break, as the line scan always has.
    assert source.line(("policy", 0)) == 3
    assert source.line(("policy", 0, "rule", 0)) == 5
