"""Every benchmark script parses its arguments and imports what it needs: `--help` exits 0.

The benchmarks run for minutes to hours on the full catalog, so the suite does not run them; this
catches a script broken by a change in the package it calls (a renamed function, a moved module)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_help(script):
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                       cwd=BENCHMARKS.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()
