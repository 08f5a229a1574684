"""Bash completion rendered from the parser: every command and option, values from choices,
file names only where an option takes a path; tried in bash with bash-completion."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nfguard import cli, completion

BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers for `words` (the last one being completed), in an empty directory."""
    line = " ".join(words)
    program = "\n".join((
        f"source {BASH_COMPLETION}", f"source {script}",
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
        f"COMP_CWORD={len(words) - 1}", f"COMP_LINE={shlex.quote(line)}",
        f"COMP_POINT={len(line)}", "_nfguard", 'printf "%s\\n" "${COMPREPLY[@]}"'))
    result = subprocess.run(["bash", "-c", program], cwd=script.parent, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    if shutil.which("bash") is None or not BASH_COMPLETION.exists():
        pytest.fail("bash-completion is not installed (apt: bash-completion; ./bootstrap.sh "
                    "test installs it)")
    path = tmp_path / "empty" / "nfguard"
    path.parent.mkdir()
    path.write_text(completion.bash(cli._parser()))
    return path


def test_every_command_and_option_of_the_parser_is_offered(script: Path) -> None:
    parser = cli._parser()
    commands = completion._subcommands(parser)
    assert complete(script, "nfguard", "") == list(commands)
    assert "--version" in complete(script, "nfguard", "--")
    for name, sub in commands.items():
        options = [o for a in completion._visible(sub) for o in a.option_strings]
        assert complete(script, "nfguard", name, "-") == options, name


def test_values_come_from_choices_and_paths_only_where_a_path_is_taken(script: Path) -> None:
    (script.parent / "audit.jsonl").touch()
    assert complete(script, "nfguard", "explain", "--proto", "") == ["tcp", "udp"]
    assert complete(script, "nfguard", "-v", "install", "--config", "") == [
        "audit.jsonl", "nfguard"]
    assert complete(script, "nfguard", "explain", "--to", "") == []
    assert complete(script, "nfguard", "suggest", "aud") == ["audit.jsonl"]
    assert complete(script, "nfguard", "ins") == ["install"]


def test_the_script_is_what_the_module_prints() -> None:
    """`python -m nfguard.completion` is what the Debian package installs."""
    rendered = subprocess.run([sys.executable, "-m", "nfguard.completion"],
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0
    assert rendered.stdout == completion.bash(cli._parser())
    assert subprocess.run(["bash", "-n"], input=rendered.stdout, text=True).returncode == 0
