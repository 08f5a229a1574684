"""The man pages (man/*.scd, rendered by scdoc into the Debian package) name every command of
the parser and every key the config accepts, so neither can grow past its documentation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nfguard import cli, completion, config
from nfguard.policy.model import MATCH_KEYS

MAN = Path(__file__).resolve().parents[2] / "man"
NFGUARD_8 = MAN / "nfguard.8.scd"
NFGUARD_TOML_5 = MAN / "nfguard.toml.5.scd"


def sections(text: str) -> dict[str, str]:
    """'# HEADING' -> the text under it."""
    parts = re.split(r"^# (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_command_is_in_nfguard_8() -> None:
    commands = sections(NFGUARD_8.read_text())["COMMANDS"]
    documented = re.findall(r"^\*([a-z-]+)\*", commands, re.M)
    assert set(completion._subcommands(cli._parser())) <= set(documented)


def test_every_config_key_is_in_nfguard_toml_5() -> None:
    text = sections(NFGUARD_TOML_5.read_text())
    for section, keys in config._SCHEMA.items():
        body = text.get(f"[{section}]", "")
        missing = [key for key in keys if f"*{key}*" not in body]
        assert missing == [], f"[{section}] in {NFGUARD_TOML_5.name}"
    policy = text["POLICY FILES"]
    assert [key for key in MATCH_KEYS if f"*{key}*" not in policy] == []


@pytest.mark.parametrize("page", [NFGUARD_8, NFGUARD_TOML_5], ids=lambda p: p.name)
def test_scdoc_renders(page: Path) -> None:
    if shutil.which("scdoc") is None:
        pytest.fail("scdoc is not installed (apt: scdoc; ./bootstrap.sh test installs it)")
    result = subprocess.run(["scdoc"], input=page.read_text(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    name, section = page.name.removesuffix(".scd").rsplit(".", 1)
    assert result.stdout.count(f'.TH "{name}" "{section}"') == 1
