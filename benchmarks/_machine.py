"""What every benchmark stamps on its results: the CPU model and the commit (the scripts import this as `_machine`)."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    """The short hash of the checked-out commit, with "+changes" when the code (src/, benchmarks/ but their
    results) differs from it, a new script not yet added included, so a figure is never credited to a
    commit that did not make it; "unknown" outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "src", "benchmarks",
                                  ":(exclude)benchmarks/results"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.strip()
        return f"{head}+changes" if changed else head
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
