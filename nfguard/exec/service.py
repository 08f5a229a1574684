"""`nfguard exec` with the service running: the command's client, asked of the service
over its control socket (the requests: nfguard.exec.requests).

    if available(config):
        session = Session(config.control.socket, cgroup, mode, label)
        session.begin(documents, allows)        # PolicyRefused: file:line, nothing ran
        ... run the command in `cgroup` ...
        session.policy(documents, allows)       # on an edit; PolicyRefused keeps the old
        records = session.end()                 # what it reached (report.FlowRecord)

If the command's cgroup empties, the service removes its client by itself; `end` then
returns no records (ServiceError says so), so call `end` before the cgroup goes.
"""

from __future__ import annotations

import os
from typing import Any

from nfguard.config import Config
from nfguard.control import ControlError, request
from nfguard.exec.report import FlowRecord, from_json

Documents = list[tuple[str, str]]  # (file name, TOML text)
TIMEOUT = 30.0  # seconds: a request compiles one policy at most


class ServiceError(Exception):
    """The service could not be asked, or refused (not a policy error)."""


class PolicyRefused(ServiceError):
    """The policy has errors; the message names file and line."""


def available(config: Config) -> bool:
    """Whether a service runs here and takes exec requests from this process."""
    path = config.control.socket
    if not path or not os.path.exists(path):
        return False
    try:
        return bool(request(path, "exec_ping", timeout=5.0).get("ok"))
    except ControlError:
        return False


class Session:
    """One command's transient client at the service."""

    def __init__(self, socket_path: str, cgroup: str, mode: str, label: str) -> None:
        self.socket_path = socket_path
        self.cgroup = cgroup  # relative to the cgroup v2 root, as the service sees it
        self.mode = mode  # "enforce" | "audit" | "allow_all"
        self.label = label
        self.client: str | None = None

    def begin(self, documents: Documents, allows: list[str]) -> str:
        answer = self._ask("exec_begin", cgroup=self.cgroup, mode=self.mode,
                           label=self.label, policy=[list(d) for d in documents],
                           allow=allows, policy_name=_name(documents))
        self.client = str(answer["client"])
        return self.client

    def policy(self, documents: Documents, allows: list[str]) -> None:
        self._ask("exec_policy", client=self._client(), policy=[list(d) for d in documents],
                  allow=allows, policy_name=_name(documents))

    def end(self) -> list[FlowRecord]:
        answer = self._ask("exec_end", client=self._client())
        self.client = None
        try:
            return [from_json(record) for record in answer.get("flows", [])]
        except ValueError as exc:
            raise ServiceError(f"the service sent {exc}") from None

    def _client(self) -> str:
        if self.client is None:
            raise ServiceError("no exec client begun")
        return self.client

    def _ask(self, command: str, **fields: Any) -> dict[str, Any]:
        try:
            answer = request(self.socket_path, command, timeout=TIMEOUT, **fields)
        except ControlError as exc:
            raise ServiceError(str(exc)) from None
        if not answer.get("ok"):
            error = str(answer.get("error", "refused"))
            policy_error = command != "exec_end" and _names_a_line(error)
            raise (PolicyRefused if policy_error else ServiceError)(error)
        return answer


def _name(documents: Documents) -> str:
    return ", ".join(name for name, _text in documents) or "command line"


def _names_a_line(error: str) -> bool:
    """Whether an error starts as the policy loader's do ("file:line: ...")."""
    head = error.split(": ", 1)[0]
    return ":" in head and head.rsplit(":", 1)[1].isdigit()
