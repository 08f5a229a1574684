"""Strings from events made safe for TOML values, `match` patterns and comments."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase

from nfguard.suggest.text import comment_text, fnmatch_escape, toml_string


def test_toml_string_escapes_hostile_strings() -> None:
    hostile = 'a"b\\c\nd\te\x00f\x7fg\u00e9\ud800'
    assert tomllib.loads(f"x = {toml_string(hostile)}")["x"] == hostile.replace("\ud800",
                                                                                "\ufffd")


def test_fnmatch_escape_matches_only_itself() -> None:
    exe = '/opt/weird "tool"[1]*'
    assert fnmatchcase(exe, fnmatch_escape(exe))
    assert not fnmatchcase('/opt/weird "tool"1x', fnmatch_escape(exe))


def test_comment_text_stays_on_one_line() -> None:
    assert comment_text("a\nb\x00c\ud800d\u00e9") == "a?b?c?d\u00e9"
