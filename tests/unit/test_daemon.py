"""The daemon's signals: SIGUSR1 reopens the audit file (logrotate) and nothing else."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

from nfguard.audit import AuditLog
from nfguard.daemon import Daemon


def test_sigusr1_asks_for_a_reopen_not_a_reload_nor_a_stop() -> None:
    daemon = Daemon("/nonexistent.toml")
    daemon._on_signal(signal.SIGUSR1, None)
    assert daemon._sigusr1 and not daemon._sighup and not daemon._stop


def test_the_reopen_continues_in_a_new_file_and_tells_the_workers(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    signalled: list[int] = []
    daemon = Daemon("/nonexistent.toml")
    daemon.services = SimpleNamespace(audit=AuditLog(str(path)),  # type: ignore[assignment]
                                      team=SimpleNamespace(signal=signalled.append))
    daemon.services.audit.write({"n": 1})
    path.rename(tmp_path / "audit.jsonl.1")  # logrotate, before its postrotate
    daemon._reopen_audit()
    daemon.services.audit.write({"n": 2})
    daemon.services.audit.close()
    assert [json.loads(line)["n"] for line in (tmp_path / "audit.jsonl.1").open()] == [1]
    assert [json.loads(line)["n"] for line in path.open()] == [2]
    assert signalled == [signal.SIGUSR1]
