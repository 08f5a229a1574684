"""TOML parsed in pieces: on any text, the same document (keys in the same order) or the
same error as one parse of the whole text; and a large policy really is parsed in pieces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.policy import document
from tests.bench.policies import scale_policy

LINES = [
    "[[client]]", "[[policy]]", "[[policy.rule]]", "[[policy.rule.to]]", "[[ policy ]]",
    "[policy]", "[policy.rule]", "[policy.meta]", "[client.match]", "[[a]]", "[[a.b]]", "[a]",
    "[[a.b.c]]", "[a.b.x]", "  [[policy.rule]]", "[[policy.rule]] # next", "[[policy.rule]]x",
    'name = "x"', 'name = "y"', "b = 1", "b.c = 2", "rule = []", 'rule = [{name = "r"}]',
    "policy = [{}]", "client = 1", "a = {}", "to = [", '"t",', "]", 'note = """', '"""',
    "x.y = 1", "ports = [443]", "", "# [[policy]]", "[[]]", "[[policy.rule]",
]


def ordered(value: Any) -> Any:
    """A document with the order of its keys made visible to ==."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


def outcome(loads: Any, text: str) -> tuple[str, Any]:
    try:
        return "document", ordered(loads(text))
    except document.TOMLDecodeError as exc:
        return "error", str(exc)


@settings(max_examples=4000, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=30), st.integers(1, 40),
       st.sampled_from(["\n", "\r\n"]))
def test_pieces_give_what_the_whole_text_gives(lines: list[str], step: int, end: str) -> None:
    assert_same(end.join(lines) + end, step)


def assert_same(text: str, step: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(document, "STEP", step)
        pieces = outcome(document.loads, text)
    assert pieces == outcome(document.toml.loads, text)


POLICY_LINES = ["[[policy]]", "[[policy.rule]]", "[policy.meta]", "rule = []", "[policy]",
                'name = "x"', "[[client]]", "[[policy.rule.x]]", "[policy.rule]", "x = 1"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(POLICY_LINES), max_size=14), st.integers(1, 30))
def test_pieces_of_policies_give_what_the_whole_text_gives(lines: list[str], step: int) -> None:
    assert_same("\n".join(lines) + "\n", step)


@pytest.mark.parametrize("text", [
    # A table of the element after its rules: not one of the pieces' arrays.
    '[[policy]]\nname = "a"\n[[policy.rule]]\nx = 1\n[[policy.rule]]\nx = 2\n[policy.meta]\n',
    # Rules the element already holds as a value: the whole text's error.
    '[[policy]]\nname = "a"\nrule = []\n[[policy.rule]]\nx = 1\n[[policy.rule]]\nx = 2\n',
    '[[policy]]\nrule = [{x = 0}]\n[[policy.rule]]\nx = 1\n',
    # Arrays the first piece already began another way.
    'policy = [{name = "a"}]\n[[policy]]\nname = "b"\n[[policy.rule]]\nx = 1\n',
    '[policy]\n[[client]]\nname = "c"\n[[policy]]\nname = "b"\n',
    # Rules of an element whose table is declared again.
    '[[policy]]\n[[policy.rule]]\nx = 1\n[[policy.rule]]\nx = 2\n[policy]\n',
    '[[policy]]\nname = "a"\n[[policy.rule]]\nx = 1\n[[client]]\n[[policy.rule]]\nx = 2\n',
])
@pytest.mark.parametrize("step", [1, 8, 20])
def test_pieces_that_cannot_join(text: str, step: int) -> None:
    assert_same(text, step)


def test_a_large_policy_is_parsed_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    text = scale_policy(3000)
    parsed: list[int] = []

    def counting(piece: str) -> dict[str, Any]:
        parsed.append(len(piece))
        return whole_loads(piece)

    whole_loads = document.toml.loads
    monkeypatch.setattr(document, "STEP", 4096)
    monkeypatch.setattr(document.toml, "loads", counting)
    assert ordered(document.loads(text)) == ordered(whole_loads(text))
    assert len(parsed) > 50 and max(parsed) < 3 * 4096  # never the whole text


def test_an_error_is_the_whole_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(document, "STEP", 4096)
    text = scale_policy(3000).replace('name = "r2500"', 'name = "r2500', 1)
    with pytest.raises(document.TOMLDecodeError) as info:
        document.loads(text)
    line = text[:text.index('name = "r2500')].count("\n") + 1
    assert f"(at line {line}, column" in str(info.value)
