"""The control socket's request registry: dispatch by command, one handler per command."""

from __future__ import annotations

from typing import Any

import pytest

from nfguard.control import Reply
from nfguard.control_handlers import Handlers, status_handler


def test_a_request_goes_to_the_handler_of_its_command() -> None:
    handlers = Handlers()
    seen: list[dict[str, Any]] = []
    handlers.add("status", status_handler(lambda: {"pid": 1}))

    def later(request: dict[str, Any], _reply: Reply) -> None:
        seen.append(request)

    handlers.add("reload", later)
    reply: Any = None  # the handlers here never touch it
    assert handlers({"command": "status"}, reply) == {"ok": True, "status": {"pid": 1}}
    assert handlers({"command": "reload", "x": 1}, reply) is None
    assert seen == [{"command": "reload", "x": 1}]
    assert handlers.commands == ["status", "reload"]


def test_an_unknown_command_is_answered_with_the_known_ones() -> None:
    handlers = Handlers()
    handlers.add("status", status_handler(dict))
    handlers.add("reload", status_handler(dict))
    assert handlers({"command": "nope"}, None) == {  # type: ignore[arg-type]
        "ok": False, "error": "unknown command 'nope' (status, reload)"}


def test_a_second_handler_for_one_command_is_refused() -> None:
    handlers = Handlers()
    handlers.add("status", status_handler(dict))
    with pytest.raises(ValueError, match="status"):
        handlers.add("status", status_handler(dict))
