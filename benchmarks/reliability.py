"""The reliability suite's results table: runs tests/test_reliability_*.py and tabulates what each test tried.

    python benchmarks/reliability.py          # writes benchmarks/results/reliability.md and reliability.json

Each reliability test reproduces one defect of issue 23 and records, through pytest's `record_property`,
how many hostile cases it tried (`cases`) and what it counted after them: input rows or products lost
(`lost`), files written outside the output it named (`writes_outside`), files read outside the inputs it
named (`reads_outside`). This script only collects those counts from the JUnit XML; the tests compute them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import commit as git_commit, cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COUNTS = ("cases", "lost", "writes_outside", "reads_outside")


def defect_order(row: dict) -> tuple[int, str]:
    """Rows in the issue's order: "10. JSONL BOM" after "9. ids with /"; unnumbered ones ("API key") last."""
    head = row["defect"].split(".", 1)[0]
    return (int(head) if head.isdigit() else 99, row["file"] or "")


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_reliability_*.py"))
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-o", "junit_family=xunit1", f"--junitxml={xml}", *files], cwd=REPO)
        seconds = time.time() - t0
        rows = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            rows.append({"file": case.get("file") or case.get("classname"), "test": case.get("name"),
                         "outcome": "failed" if failed else "skipped" if skipped else "passed",
                         "defect": props.get("defect", ""),
                         **{k: int(props[k]) if k in props else None for k in COUNTS}})
    rows.sort(key=defect_order)   # by the numbering (stable: a file's order within a defect)
    commit = git_commit()
    totals = {k: sum(r[k] or 0 for r in rows) for k in COUNTS}
    measured = {k: sum(r[k] is not None for r in rows) for k in COUNTS}
    record = {"benchmark": "reliability", "script": "benchmarks/reliability.py", "commit": commit,
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 1),
              "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version()},
              "tests": rows, "totals": totals, "measured_by": measured,
              "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in ("passed", "failed", "skipped")}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(record, indent=1) + "\n")
    fmt = lambda v: "" if v is None else f"{v:,}"  # noqa: E731
    lines = ["# Reliability suite (issue 23)", "",
             f"`benchmarks/reliability.py`, commit {commit}, {record['date_utc']}, {record['machine']['cpu']} "
             f"({os.cpu_count()} CPUs), {seconds:.0f} s. Each row is one test of `tests/test_reliability_*.py`; "
             "the counts are what the test itself tried and counted (pytest `record_property`).", "",
             "| defect | test | outcome | cases tried | data lost | writes outside the output | reads outside the inputs |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['defect']} | `{r['test']}` | {r['outcome']} | {fmt(r['cases'])} | {fmt(r['lost'])} | "
                     f"{fmt(r['writes_outside'])} | {fmt(r['reads_outside'])} |")
    lines += [f"| **total** | {len(rows)} tests | {record['outcomes']['passed']} passed | {totals['cases']:,} | "
              f"{totals['lost']} | {totals['writes_outside']} | {totals['reads_outside']} |", "",
              "A blank count is one the test cannot observe, so it records none; the totals add the measured ones "
              f"(data lost: {measured['lost']} tests, writes: {measured['writes_outside']}, reads: "
              f"{measured['reads_outside']}). Writes are counted in the dirs each test snapshots before and after "
              "(its tmp dir, the shared test shop), not in the whole file system; `tests/reliability.py` says how "
              "each count is made.", ""]
    (RESULTS / "reliability.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
