"""What the reliability tests of issue 23 (tests/test_reliability_*.py) count, and how they record it.

Each test takes the `reliability` fixture (tests/conftest.py), names the defect it reproduces and counts as it goes:

    rec = reliability("1. concurrent index add")
    rec.case()                                   # one hostile input tried (rec.case(n) for n of them)
    rec.count_lost(expected_ids, found_ids)      # expected rows/products minus those found
    rec.count_files_lost(before, after)          # or the user's files gone or changed (an --out that deletes)
    rec.count_writes(before, snapshot(tmp_path), outputs=[out])   # paths created/changed/deleted outside `out`
    rec.count_reads(n)                           # where the test can see a read outside the named inputs
    rec.done()                                   # asserts every count it measured is 0

At teardown the fixture records `defect`, `cases` and each count that was measured through pytest's
`record_property` (so a failed test still shows what it counted before it failed). A count never measured is not
recorded: `benchmarks/reliability.py` shows it blank, not 0.

`writes_outside` watches the dirs a test snapshots (its tmp dir: the inputs, their neighbours, the outputs' parents;
the shared test shop where a test reads it), not the whole file system.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

BIG = 1 << 20  # files over 1 MiB are compared by size and mtime, not by their bytes

COUNTS = ("lost", "writes_outside", "reads_outside")


def snapshot(root) -> dict[str, object]:
    """Every path under `root` (relative, '/'-separated) with what it is: a file's bytes (size and mtime if big),
    a symlink's target, or "<dir>". Equal snapshots: nothing was created, changed or deleted under `root`."""
    root = Path(root)
    if not root.exists():
        return {}
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):       # never follows a symlinked dir
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("<symlink>", os.readlink(p))
            elif p.is_dir():
                out[rel] = "<dir>"
            else:
                st = p.stat()
                out[rel] = ("<big>", st.st_size, st.st_mtime_ns) if st.st_size > BIG else p.read_bytes()
    return dict(sorted(out.items()))


def changed(before: dict, after: dict, outputs: Iterable = (), root=None) -> list[str]:
    """Paths created, changed or deleted between two snapshots of one root, except the named outputs: the paths
    under them, and the dirs above them (made to hold an output). `outputs` are paths relative to the snapshots'
    root, or absolute ones under `root`."""
    outs = []
    for o in outputs:
        o = Path(o)
        if o.is_absolute():
            o = o.relative_to(root)
        outs.append(o.as_posix())

    def excused(rel: str, kind) -> bool:
        for o in outs:
            if rel == o or rel.startswith(o + "/"):
                return True
            if kind == "<dir>" and o.startswith(rel + "/"):
                return True
        return False

    diff = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel) != after.get(rel) and not excused(rel, after.get(rel, before.get(rel))):
            diff.append(rel)
    return diff


class Reliability:
    """The counts of one reliability test (see the module doc)."""

    def __init__(self, defect: str):
        self.defect = defect
        self.cases = 0
        self.lost: int | None = None
        self.writes_outside: int | None = None
        self.reads_outside: int | None = None
        self.details: dict[str, list] = {k: [] for k in COUNTS}

    def case(self, n: int = 1) -> None:
        self.cases += n

    def _add(self, count: str, n: int, what=None) -> int:
        setattr(self, count, (getattr(self, count) or 0) + n)
        if n and what is not None:
            self.details[count].append(what)
        return n

    def count_lost(self, expected, found, what=None) -> int:
        """Expected rows/products minus those found: two counts, or two collections (those of `expected` that
        are not in `found`). Returns the number lost."""
        if isinstance(expected, int):
            missing = max(expected - int(found), 0)
            return self._add("lost", missing, what)
        found = set(found)
        missing = [x for x in expected if x not in found]
        return self._add("lost", len(missing), (what, missing) if what else missing)

    def count_files_lost(self, before: dict, after: dict, outputs: Iterable = (), root=None) -> int:
        """The user's files of `before` (outside the named outputs) that are gone or changed in `after`."""
        files = [k for k, v in before.items() if v != "<dir>"]
        gone = set(changed(before, after, outputs, root))
        return self.count_lost(files, [k for k in files if k not in gone], "user files")

    def count_writes(self, before: dict, after: dict, outputs: Iterable = (), root=None, what=None) -> int:
        """Paths created, changed or deleted between two snapshots outside the named outputs."""
        diff = changed(before, after, outputs, root)
        return self._add("writes_outside", len(diff), (what, diff) if what else diff)

    def count_reads(self, n: int, what=None) -> int:
        """Reads outside the named inputs that the test could observe (bytes, requests)."""
        return self._add("reads_outside", int(n), what)

    def done(self) -> None:
        """The test's verdict on its counts: every one it measured is 0."""
        bad = {k: (getattr(self, k), self.details[k]) for k in COUNTS if getattr(self, k)}
        assert not bad, f"{self.defect}: {bad}"

    def record(self, record_property) -> None:
        record_property("defect", self.defect)
        record_property("cases", self.cases)
        for k in COUNTS:
            if getattr(self, k) is not None:
                record_property(k, getattr(self, k))
