"""The command's policy set: the file's clients with the quick rules in front."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfguard.exec.policy import EXEC_CLIENT, compose, joined, read_documents
from nfguard.policy.load import PolicyError, parse_policy_texts

FILE = """\
[[client]]
name = "curl"
match = { exe = "/usr/bin/curl" }
policies = ["web"]

[[policy]]
name = "web"

[[policy.rule]]
action = "allow"
to = ["example.org"]
ports = [443]
"""


def test_quick_rules_come_first_in_every_client_and_a_last_client_covers_the_rest() -> None:
    policies = compose([("egress.toml", FILE)], ["github.com:443"])
    assert [(c.name, c.policies) for c in policies.clients] == [
        ("curl", ("exec-allow", "web")), (EXEC_CLIENT, ("exec-allow",))]
    assert policies.clients[-1].match == ()


def test_allow_all_puts_the_allow_everything_policy_in_front_too() -> None:
    policies = compose([], [], allow_all=True)
    assert policies.clients[0].policies == ("exec-allow", "exec-allow-all")


def test_errors_name_the_file_and_line() -> None:
    broken = FILE.replace('policies = ["web"]', 'policies = ["missing"]')
    with pytest.raises(PolicyError, match=r"egress\.toml:4"):
        compose([("egress.toml", broken)], [])
    with pytest.raises(PolicyError, match=r"command line.*--allow 'a\.\.b'"):
        compose([], ["a..b"])


def test_a_directory_reads_every_toml_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "20-b.toml").write_text(FILE)
    (tmp_path / "10-a.toml").write_text("# nothing\n")
    (tmp_path / "notes.txt").write_text("ignored")
    documents = read_documents(str(tmp_path))
    assert [Path(name).name for name, _ in documents] == ["10-a.toml", "20-b.toml"]
    assert parse_policy_texts([("all", joined(documents))]).clients[0].name == "curl"
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match=r"no \*\.toml"):
        read_documents(str(tmp_path / "empty"))
    with pytest.raises(PolicyError, match="cannot read"):
        read_documents(str(tmp_path / "missing.toml"))
