"""Atomic file writes, output dirs and small JSON helpers, shared by every stage.

A long job that is killed, or a disk that fills up, must never leave a half-written file under
the real name: each writer here writes a temporary sibling, fsyncs it and renames it into place.
An output dir is (re)written only where `prepare_output_dir` says it is safe: it never replaces a
folder of the user's own files, an input, or a folder holding one.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .clihelp import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    On any error (including OSError from a full disk) the temporary file is removed and the
    previous `path`, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)     # mkstemp makes 0600; outputs are shared (e.g. a service user)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it replaces `path` whole.

    Readers of the old directory keep a complete copy until the swap; a crash leaves it as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)          # mkdtemp makes 0700
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old.{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; a file that is not JSON (or not UTF-8) is an InputFileError (a ValueError)
    that names the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise InputFileError(f"{path}: not valid JSON (not UTF-8 text: {e.reason})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")


class InputFileError(UserError, ValueError):
    """A bad line in an input file; the message names the file and the line. (A ValueError too, for
    callers that caught read_jsonl's ValueError.)"""


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a UTF-8 JSONL file (a BOM at the start is skipped).
    A line that is not UTF-8 or not JSON is an InputFileError naming the file and the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputFileError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                     f"{e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a bad line is an error naming the file and line (see iter_jsonl)."""
    return [row for _, row in iter_jsonl(path)]


def qid_key(qid: Any) -> str:
    """The one form of a query id: a string, stripped ("1" and 1 are the same qid)."""
    return str(qid).strip()


def check_unique_qids(qids: Iterable[tuple[int, Any]], path: str | os.PathLike, label: str = "line") -> None:
    """`qids` are (line, qid) pairs of one file; two qids that are the same after `qid_key` are an
    InputFileError naming both lines."""
    seen: dict[str, tuple[int, Any]] = {}
    for lineno, qid in qids:
        key = qid_key(qid)
        if key in seen:
            first_line, first = seen[key]
            same = "" if first == qid else f" ({qid!r} and {first!r} are the same qid)"
            raise InputFileError(f"{path}:{lineno}: duplicate qid: qid {qid!r} repeats {label} {first_line}{same}")
        seen[key] = (lineno, qid)


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line and flush it: used for metric logs, where a lost last line is acceptable."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()


def save_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write `path` with a writer that takes a path (e.g. DataFrame.to_parquet)."""
    with atomic_path(path) as tmp:
        writer(tmp)


# ----------------------------------------------------------------------------- output dirs and writers

LOCK_FILE = ".lock"
LOCK_TIMEOUT = 600.0        # seconds a writer waits for another one before giving up
_held = threading.local()   # resolved dirs this thread holds the lock of (dir_lock is re-entrant)


class DirLocked(ValueError):
    """Another process is writing the directory (a user error: try again when it is done)."""


@contextlib.contextmanager
def dir_lock(path: str | os.PathLike, what: str = "dir", timeout: float = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the write lock of a directory (`fcntl.flock` on `<path>/.lock`, made if missing).

    Writers of one dir take it around their whole read-modify-write, so that two of them serialize
    instead of one losing the other's changes. Re-entrant within a thread; waits up to `timeout` seconds,
    then raises DirLocked naming the dir and the pid of the holder. Readers never need it.
    """
    import fcntl

    path = Path(path)
    key = str(path.resolve())
    held = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = {}
    if held.get(key):
        held[key] += 1
        try:
            yield path
        finally:
            held[key] -= 1
        return
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                    except OSError:
                        holder = "unknown"
                    raise DirLocked(f"{what} {path} is being written by another process (pid {holder}); "
                                    f"waited {timeout:.0f} s, try again when it is done") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held[key] = 1
        try:
            yield path
        finally:
            held.pop(key, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# Output dirs: where a command may write
# ---------------------------------------------------------------------------------------------------------

OUTPUT_MARKER = "dashclip-output.json"
# Outputs written before the marker existed are recognised by their files (all must be there).
LEGACY_OUTPUT_FILES = {"catalog": ("manifest.json", "catalog.parquet", "images.parquet"),
                       "index": ("meta.json", "ids.parquet")}


class OutputDirError(UserError, ValueError):
    """An output dir that must not be written (it holds the user's files, an input, or another output)."""


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of dashclip output in the dir `path` ("catalog", "index", ...), or None when it is not one."""
    path = Path(path)
    try:
        marker = json.loads((path / OUTPUT_MARKER).read_text(encoding="utf-8"))
        if isinstance(marker, dict) and isinstance(marker.get("kind"), str):
            return marker["kind"]
    except (OSError, ValueError):
        pass
    try:  # an index names its kind in its own meta.json
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if isinstance(meta, dict) and isinstance(meta.get("kind"), str):
            return meta["kind"]
    except (OSError, ValueError):
        pass
    for kind, files in LEGACY_OUTPUT_FILES.items():
        if all((path / f).is_file() for f in files):
            return kind
    return None


def mark_output_dir(path: str | os.PathLike, kind: str) -> None:
    """Write the marker that makes `path` a dashclip output of `kind` (call it inside the atomic_dir)."""
    write_json(Path(path) / OUTPUT_MARKER, {"kind": kind, "written_by": "dashclip"})


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def prepare_output_dir(path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                       overwrite: bool = False, is_kind: Callable[[Path], bool] | None = None,
                       check_only: bool = False) -> Path:
    """Check that the dir `path` may be (re)written as a dashclip output of `kind`, before any work; return it.

    One rule for every command that writes an output dir, so no command deletes what it should not. The dir
    may be written when it does not exist yet, is empty, or already is a dashclip output of the same `kind`
    (`is_kind(path)`; default: `output_kind(path) == kind`). `overwrite=True` also allows any other
    directory: its contents are deleted here (the user asked for it), unless `check_only` (check now, before
    long work, and delete nothing; a writer that replaces the dir whole, like `atomic_dir`, needs no more).
    Never allowed, even with `overwrite`: a path that is a file; the file system root; the current directory
    or a folder holding it; a path that is one of `inputs` (files or dirs the command reads; None entries are
    skipped) or holds one; a path inside an input dir. Raises OutputDirError (a UserError) saying why."""
    given = path
    if str(given).strip() == "":
        raise OutputDirError("output dir: empty path")
    path = Path(os.path.abspath(os.path.expanduser(given)))
    real = Path(os.path.realpath(path))
    if real.parent == real:
        raise OutputDirError(f"output dir {given}: is the file system root; give a new folder")
    cwd = Path(os.path.realpath(os.getcwd()))
    if _is_within(cwd, real):
        raise OutputDirError(f"output dir {given}: is the current directory"
                             f"{'' if real == cwd else ' or holds it'}, which would be replaced; give a new folder, "
                             f"e.g. --out runs/{kind}")
    for inp in inputs:
        if inp is None:
            continue
        inp_real = Path(os.path.realpath(os.path.abspath(inp)))
        if _is_within(inp_real, real):
            what = "is" if inp_real == real else "holds"
            raise OutputDirError(f"output dir {given}: {what} the input {inp}, which would be deleted; "
                                 f"give another folder")
        if inp_real.is_dir() and _is_within(real, inp_real):
            raise OutputDirError(f"output dir {given}: is inside the input folder {inp}; give a folder "
                                 f"outside it")
    if not os.path.lexists(path):
        return path
    if not real.is_dir():
        raise OutputDirError(f"output dir {given}: exists and is not a directory")
    entries = [p for p in real.iterdir() if p.name != LOCK_FILE]
    if not entries:
        return path
    found = output_kind(real)
    if is_kind(real) if is_kind is not None else found == kind:
        return path
    if not overwrite:
        if found is not None and found != kind:
            raise OutputDirError(f"output dir {given}: holds a dashclip {found}, not a {kind}; give another "
                                 f"folder (or --overwrite to replace it)")
        shown = ", ".join(sorted(p.name for p in entries)[:5]) + (" ..." if len(entries) > 5 else "")
        raise OutputDirError(f"output dir {given}: is a non-empty folder that is not a dashclip {kind} output "
                             f"({shown}); its contents would be deleted. Give a new or empty folder, or "
                             f"--overwrite to replace it")
    if not check_only:
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    return path


def check_output_file(path: str | os.PathLike, what: str = "--output") -> Path:
    """Check up front that `path` can be written as a file (before the work that produces it)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory; give a file path")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path}: not writable")
    return path
