"""The command's policy set: its policy file(s), with the `--allow` rules in front.

`compose` is shared by both paths: the private engine and the service (whose `exec_begin`
request carries the policy text and the `--allow` values) build the same set from the same
inputs. The quick rules come first in every client of the file, and a last client without
`match` has them too, so a flow the file's clients do not cover still meets them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nfguard.exec.quick import ALLOW_ALL_POLICY, QUICK_POLICY, SOURCE, parse_allow, quick_policy
from nfguard.policy.load import PolicyError, Problem, parse_policy_texts
from nfguard.policy.model import Client, Location, PolicySet

EXEC_CLIENT = "exec"  # the last client: every process of the command the file left out

Documents = list[tuple[str, str]]  # (file name, TOML text)


def read_documents(path: str) -> Documents:
    """A policy file, or every *.toml of a directory in file-name order; PolicyError
    naming the path if there is none or it cannot be read."""
    target = Path(path)
    files = sorted(target.glob("*.toml")) if target.is_dir() else [target]
    if target.is_dir() and not files:
        raise PolicyError([Problem(Location(path, 0), "no *.toml policy file in directory")])
    documents = []
    for file in files:
        try:
            documents.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError([Problem(Location(str(file), 0), f"cannot read: {exc}")]) from None
    return documents


def joined(documents: Documents) -> str:
    """Several policy files as one TOML text (they hold only arrays of tables, so the
    concatenation means the same): what the service's request carries."""
    return "\n".join(text if text.endswith("\n") else text + "\n" for _, text in documents)


def compose(documents: Documents, allows: list[str], allow_all: bool = False) -> PolicySet:
    """The command's policy set; PolicyError with file and line (`--allow` values are
    reported as from the command line)."""
    try:
        destinations = [parse_allow(text) for text in allows]
    except ValueError as exc:
        raise PolicyError([Problem(Location(SOURCE, 0), str(exc))]) from None
    quick = (SOURCE, quick_policy(destinations, allow_all))
    parsed = parse_policy_texts([*documents, quick])
    front = (QUICK_POLICY, ALLOW_ALL_POLICY) if allow_all else (QUICK_POLICY,)
    clients = [dataclasses.replace(client, policies=(*front, *client.policies))
               for client in parsed.clients]
    clients.append(Client(EXEC_CLIENT, (), front, None, Location(SOURCE, 0)))
    return dataclasses.replace(parsed, clients=tuple(clients))
