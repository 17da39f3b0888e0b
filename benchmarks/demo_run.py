"""The full `dashclip demo` on this machine: its timing per step and its report, into benchmarks/results/.

    python benchmarks/demo_run.py                 # runs `dashclip demo --no-serve` (reusing finished steps)
    python benchmarks/demo_run.py --collect-only  # only collects what runs/demo holds

Writes benchmarks/results/demo.json (the demo's own record, demo.json: sizes, seconds per step, facts)
and demo.md (the timing table, then the evaluation report the demo wrote, with its plots in demo_plots/).
Each step's seconds are its own uninterrupted run; a step reused from an earlier run keeps the seconds it
took then, so the total is what the whole chain costs from scratch on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_MINUTES = {"full": 30, "quick": 5}   # issue 25: 30 min full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="demo work dir (default runs/demo, runs/demo-quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--note", action="append", default=[], help="a line for the top of demo.md")
    ap.add_argument("--cache-built-earlier", type=float, default=None,
                    help="seconds an earlier run spent building the image-feature cache that stage1 reused")
    args = ap.parse_args()

    from dashclip.demo import run_demo
    from dashclip.io import write_json, write_text
    from dashclip.settings import runs_dir

    work = args.work or runs_dir() / ("demo-quick" if args.quick else "demo")
    if not args.collect_only:
        run_demo(work, quick=args.quick)
    record = json.loads((work / "demo.json").read_text())
    mode = record["mode"]
    steps = dict(record["steps"])
    if args.cache_built_earlier is not None:   # the feature cache was built by an earlier run of the same dir
        steps = {**{k: v for k, v in steps.items() if k == "import"},
                 "image-feature cache (built in an earlier run, reused by stage1)":
                     {"seconds": args.cache_built_earlier},
                 **{k: v for k, v in steps.items() if k != "import"}}
    total = sum(s["seconds"] for s in steps.values())
    name = "demo" if mode == "full" else "demo_quick"
    out = {"benchmark": name, "collected_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"nproc": os.cpu_count(), "platform": platform.platform()},
           "work_dir": str(work), "total_seconds_all_steps": round(total, 1),
           "target_minutes": TARGET_MINUTES[mode], "target_met": total <= 60 * TARGET_MINUTES[mode],
           "notes": args.note, "record": record}
    lines = [f"# `dashclip demo{' --quick' if mode == 'quick' else ''}` on this machine", "",
             f"Collected {out['collected_utc']} from `{work}` ({os.cpu_count()} CPUs). Config: `{json.dumps(record.get('config') or record.get('sizes'))}`.",
             *[f"\n**Note:** {n}" for n in args.note], "",
             "| step | seconds | facts |", "|---|---:|---|"]
    for step, facts in steps.items():
        shown = {k: v for k, v in facts.items() if k not in ("seconds", "headline", "report")}
        lines.append(f"| {step} | {facts['seconds']:.0f} | {json.dumps(shown)} |")
    lines += ["", f"**Total: {total / 60:.1f} min** (target <= {TARGET_MINUTES[mode]} min: "
                  f"{'met' if out['target_met'] else 'MISSED'}).", ""]
    report = work / "report" / "report.md"
    if report.exists():
        plots = RESULTS / f"{name}_plots"
        shutil.rmtree(plots, ignore_errors=True)
        if (work / "report" / "plots").exists():
            shutil.copytree(work / "report" / "plots", plots)
        lines += ["", report.read_text().replace("](plots/", f"]({name}_plots/").replace("\n# ", "\n## ", 1)]
    write_json(RESULTS / f"{name}.json", out)
    write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines[:len(steps) + 12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
