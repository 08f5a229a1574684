"""The rollout story end to end: audit-only with a policy that allows nothing, real traffic,
`nfguard suggest` on the audit log, then enforce the suggestion."""

from __future__ import annotations

import os
import shutil
import signal

from tests.e2e.lab import ALLOWED_V4, OTHER_V4, SERVER_V4, Lab
from tests.e2e.test_clients import CURL, PYTHON, urllib_get
from tests.e2e.test_names import CUT, DNS_RECORDS, curl_http, curl_https

DIG = os.path.realpath(shutil.which("dig") or "/usr/bin/dig")

NOTHING_ALLOWED = """
    [[client]]
    name = "everyone"
    policies = ["nothing"]

    [[policy]]
    name = "nothing"

    [[policy.rule]]
    name = "everything"
    action = "deny"
"""


def test_audit_then_suggest_then_enforce(named: Lab) -> None:
    lab = named
    lab.serve_dns(*DNS_RECORDS)
    # 1. Audit only: nothing is allowed, yet everything passes and is recorded.
    lab.start_engine(lab.write_config(NOTHING_ALLOWED, mode="audit"))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    assert curl_https(lab, "allowed.test", ALLOWED_V4) == (0, "https allowed.test")
    assert curl_http(lab, f"http://{OTHER_V4}/")[0] == 0
    assert lab.stop_engine(signal.SIGTERM) == 0
    observed = lab.audit_events()
    assert observed and all(e["event"]["action"] == "deny" for e in observed)
    assert any(e.get("destination", {}).get("domain") == "allowed.test" for e in observed)

    # 2. Suggest: a policy that passes check, by name where the flows had one.
    suggested = lab.nfguard("suggest", str(lab.audit_path)).stdout
    assert '"allowed.test"' in suggested
    assert f'"{OTHER_V4}/32"' in suggested
    assert f'"{SERVER_V4}/32"' in suggested  # the DNS server, by address
    # one client per program seen: dig asked the DNS server, curl made the web requests
    assert f'match = {{ exe = "{DIG}", user = "root" }}' in suggested
    assert f'match = {{ exe = "{CURL}", user = "root" }}' in suggested
    config = lab.write_config(suggested)
    lab.nfguard("check", "--config", str(config))
    lab.audit_path.unlink()

    # 3. Enforce it: what was observed passes, what was not is cut.
    lab.start_engine(config)
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    assert curl_https(lab, "allowed.test", ALLOWED_V4) == (0, "https allowed.test")
    assert curl_http(lab, f"http://{OTHER_V4}/")[0] == 0
    assert lab.dig("denied.test") == [], "never resolved in audit: the query is refused"
    assert curl_https(lab, "denied.test", OTHER_V4)[0] in CUT, "never observed: denied"
    assert curl_http(lab, f"http://{ALLOWED_V4}/")[0] in CUT, "never observed: denied"
    # The destination curl was seen reaching is not open to another program.
    assert urllib_get(lab, f"http://{OTHER_V4}/") != "ok"
    denied = lab.wait_for_event(lambda e: e["event"]["action"] == "deny"
                                and e["process"]["executable"] == PYTHON)
    assert denied["nfguard"]["mode"] == "enforce" and "client" not in denied["nfguard"]
    assert lab.stop_engine(signal.SIGTERM) == 0

    # 4. Switch on one client at a time: engine in audit, curl's client enforcing.
    one_by_one = suggested.replace('name = "curl-root"\n',
                                   'name = "curl-root"\nmode = "enforce"\n', 1)
    lab.start_engine(lab.write_config(one_by_one, mode="audit"))
    assert curl_http(lab, f"http://{ALLOWED_V4}/")[0] in CUT, "curl's client enforces"
    assert urllib_get(lab, f"http://{ALLOWED_V4}/") == "ok", "other programs: audit only"
