"""Name patterns: the quick checks decide exactly as the label-by-label rules they stand
in front of, on any text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.policy import patterns
from nfguard.policy.patterns import is_pattern_text, parse_name_pattern

MANY = settings(max_examples=3000, deadline=None)
LABELS = st.one_of(
    st.sampled_from(["*", "**", "***", "a*", "-a", "a-", "x_y", "xn--p1ai", "A", "é", "", " ",
                     "a\n", "1", "a" * 63, "b" * 64, "ß", "İ"]),
    st.text(alphabet="ab-_*9.Z\n", max_size=6),
)
NAMES = st.one_of(st.lists(LABELS, min_size=1, max_size=8).map(".".join),
                  st.text(max_size=30), st.just("a." * 130))


def outcome(text: str) -> tuple[str, object]:
    try:
        pattern = parse_name_pattern(text)
    except ValueError as exc:
        return "error", str(exc)
    return "pattern", (pattern.text, pattern.labels)


@MANY
@given(NAMES)
def test_quick_check_accepts_only_what_the_label_rules_accept(text: str) -> None:
    quick = outcome(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(patterns, "_VALID_NAME", re.compile(r"(?!)"))  # label rules only
        assert quick == outcome(text)


def test_quick_check_takes_the_usual_names() -> None:
    for text in ("github.com", "*.github.com", "**.corp.example", "svc_1.x-y.example", "*"):
        assert patterns._VALID_NAME.fullmatch(parse_name_pattern(text).text)


@MANY
@given(st.one_of(NAMES, st.text(alphabet="0123456789abcdef.:/*xé²٣", max_size=20)))
def test_pattern_or_address_as_defined(text: str) -> None:
    # A `to` entry is a name when it has a letter or a wildcard and no colon.
    assert is_pattern_text(text) == (any(c.isalpha() or c == "*" for c in text)
                                     and ":" not in text)


@MANY
@given(NAMES)
def test_literal_suffix_is_the_labels_after_the_last_wildcard(text: str) -> None:
    try:
        pattern = parse_name_pattern(text)
    except ValueError:
        return
    labels = list(pattern.labels)
    while any(label in ("*", "**") for label in labels):
        labels.pop(0)
    assert pattern.literal_suffix == ".".join(labels)
