"""The layers of src/dashclip as a checked contract (docs/architecture.md, "Layers").

`lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]): the lower layers never
import the stages built on them, only `dashclip.cli` imports CLI modules, and no import cycles. The
cycle check below reads the source with `ast` as well, so it runs even where import-linter is not
installed (it is in the dev extra, so CI runs both)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())", "--no-cache"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def _module_imports() -> dict[str, set[str]]:
    """Module -> the dashclip modules it imports anywhere (function-level imports count)."""
    files = {}
    for f in (SRC / "dashclip").rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    edges = {}
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                while name not in files and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in files and name != mod:
                    out.add(name)
        edges[mod] = out
    return edges


def test_no_import_cycles_between_modules():
    edges = _module_imports()
    # a package's __init__ re-exporting its own modules is not a cycle
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    cycles, state = [], {}

    def visit(mod, path):
        state[mod] = "open"
        for nxt in sorted(edges[mod]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[mod] = "done"

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
