"""`nfguard log`'s lines and filters: pure, from audit events as the audit log writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from nfguard.audit import audit_event, query_event
from nfguard.logview import (
    Colour,
    Filter,
    event_time,
    parse_event,
    parse_since,
    render,
    wants_colour,
)
from nfguard.policy.resolve import QueryDecision
from tests.unit.test_audit import ALLOW, DENY_AUDIT, NO_CLIENT, NOW, PROCESS, V4, V6


def line(event: dict[str, Any], colour: bool = False) -> str:
    # through the JSON line, as `nfguard log` reads it
    parsed = parse_event(orjson.dumps(event))
    assert parsed is not None
    return render(parsed, colour, UTC)


def test_an_allow_names_client_rule_process_and_destination() -> None:
    assert line(audit_event(ALLOW, V4, NOW, PROCESS)) == (
        "2023-11-14 22:13:20.250  ALLOW  deploy-bot/github/github-https  "
        "/usr/bin/git[4242] deploy (deploy.service)  tcp -> api.github.com "
        "(140.82.112.3:443)  rule_match")


def test_a_deny_in_audit_mode_says_it_was_let_through() -> None:
    text = line(audit_event(DENY_AUDIT, V4, NOW))
    assert text == ("2023-11-14 22:13:20.250  DENY*  ci/-  ?  tcp -> 140.82.112.3:443  "
                    "no_rule_match (audit mode: let through)")
    enforced = line(audit_event(NO_CLIENT, V6, NOW))
    assert "  DENY   -/-  " in enforced and "[2001:db8::53]:53" in enforced
    assert "let through" not in enforced


def test_a_dns_query_shows_the_name_asked() -> None:
    decision = QueryDecision("deny", "name_not_allowed", "default", "evil.test", "ci")
    text = line(query_event(decision, "TXT", "enforce", "deny", V6, NOW))
    assert "DENY   ci/-  ?  udp query evil.test TXT to [2001:db8::53]:53  name_not_allowed" \
        in text


def test_colours_only_on_request_and_only_on_the_mark() -> None:
    event = audit_event(NO_CLIENT, V4, NOW, PROCESS)
    assert "\x1b" not in line(event)
    coloured = line(event, colour=True)
    assert f"{Colour.RED}DENY {Colour.RESET}" in coloured
    assert f"{Colour.GREEN}ALLOW{Colour.RESET}" in line(audit_event(ALLOW, V4, NOW), True)
    assert f"{Colour.YELLOW}DENY*{Colour.RESET}" in line(audit_event(DENY_AUDIT, V4, NOW), True)


def test_hostile_names_cannot_forge_lines_or_colours() -> None:
    event = audit_event(ALLOW, V4, NOW, PROCESS)
    event["destination"]["domain"] = "x.test\n2023-11-14 DENY \x1b[31mfake"
    event["process"] = {**event["process"], "executable": "/tmp/\x1b]0;title\x07"}  # shared
    for colour in (False, True):
        text = line(event, colour)
        assert "\n" not in text and "\x1b]" not in text and "\x1b[31m" not in text
        assert "\\x1b[31mfake" in text


def test_odd_events_still_make_a_line() -> None:
    assert parse_event(b"not json") is None
    assert parse_event(b"[1, 2]") is None
    assert parse_event(b'{"no": "event"}') is None
    bare = parse_event(b'{"event": {"action": "deny"}, "nfguard": "junk", "@timestamp": 5}')
    assert bare is not None
    assert render(bare) == "5  DENY   -/-  ?  ? -> ?:?  "


def test_filters() -> None:
    deny = audit_event(DENY_AUDIT, V4, NOW)
    allow = audit_event(ALLOW, V4, NOW)
    assert Filter().wants(deny) and Filter().wants(allow)
    assert Filter(deny=True).wants(deny) and not Filter(deny=True).wants(allow)
    assert Filter(client="ci").wants(deny) and not Filter(client="ci").wants(allow)
    assert Filter(since=NOW).wants(deny) and not Filter(since=NOW + 0.001).wants(deny)
    assert not Filter(since=NOW).wants({"event": {}, "@timestamp": "yesterday"})


def test_event_time() -> None:
    assert event_time(audit_event(ALLOW, V4, NOW)) == NOW
    assert event_time({"@timestamp": 1}) is None


def test_since() -> None:
    now = datetime(2026, 12, 7, 21, 30, tzinfo=UTC).timestamp()
    assert parse_since("10m", now) == now - 600
    assert parse_since("90", now) == now - 90
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("2026-12-07T20:00:00Z", now) == now - 5400
    assert parse_since("2026-12-07T21:00+01:00", now) == now - 5400
    local = datetime.fromtimestamp(now)
    assert parse_since("14:30", now) == local.replace(hour=14, minute=30, second=0,
                                                      microsecond=0).timestamp()
    with pytest.raises(ValueError, match="--since 'soon'"):
        parse_since("soon", now)


def test_colour_follows_the_terminal_and_no_color() -> None:
    assert wants_colour(True, {})
    assert not wants_colour(False, {})
    assert not wants_colour(True, {"NO_COLOR": "1"})
    assert wants_colour(True, {"NO_COLOR": ""}), "no-color.org: set and not empty"
    assert not wants_colour(True, {"TERM": "dumb"})
