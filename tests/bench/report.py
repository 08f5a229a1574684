"""Figures the benchmarks return, and the one markdown table the suite prints."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Figure:
    """One measured line: what, the result as printed, and the goal it answers, if any."""

    measure: str
    result: str
    target: str = ""
    met: bool | None = None  # None: no target, or not measurable in this run

    def row(self) -> str:
        verdict = "" if self.met is None else (" (met)" if self.met else " (**not met**)")
        target = f"{self.target}{verdict}" if self.target else ""
        return f"| {self.measure} | {self.result} | {target} |"


def table(figures: list[Figure]) -> str:
    lines = ["| Measure | Result | Target |", "| --- | --- | --- |"]
    lines += [figure.row() for figure in figures]
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; values need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def conditions() -> str:
    """The machine and code a table was measured on, for the line above it."""
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, nfguard {commit or '?'}, "
            f"{os.cpu_count()} x {cpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average {load}")
