"""Atomic file writes and small JSON helpers, shared by every stage.

A long job that is killed, or a disk that fills up, must never leave a half-written file under
the real name: each writer here writes a temporary sibling, fsyncs it and renames it into place.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


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
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a bad line is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


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


def _overlaps(inner: Path, outer: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def prepare_output_dir(path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                       overwrite: bool = False, is_kind: Callable[[Path], bool] | None = None,
                       check_only: bool = False) -> Path:
    """Check that `path` may be written as a `kind` output, before any work is done; return it.

    - an output may not be, or contain, one of its `inputs` (ValueError);
    - a missing or empty dir, or one that already is a `kind` output (`is_kind(path)`; default: its
      meta.json says `"kind": kind`), may be written (replaced by the writer, atomically);
    - any other existing dir, or a file, is refused unless `overwrite`; with `overwrite` a dir's
      contents are deleted here (the user asked for it), a file is an error still. `check_only`: check
      now, before long work, and delete nothing (call again to write).
    """
    path = Path(path)
    real = path.resolve()
    for given in inputs:
        if given is None:
            continue
        inp = Path(given).resolve()
        if _overlaps(inp, real):
            raise ValueError(f"{path}: the output {'is' if inp == real else 'contains'} an input ({given}); "
                             f"choose another output dir")
    if not path.exists():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory; choose another output dir")
    entries = [p for p in path.iterdir() if p.name != LOCK_FILE]
    if not entries or (is_kind or (lambda p: _meta_kind(p) == kind))(path):
        return path
    if not overwrite:
        shown = ", ".join(sorted(p.name for p in entries)[:5]) + (" ..." if len(entries) > 5 else "")
        raise ValueError(f"{path}: not empty and not a dashclip {kind} ({shown}); refusing to write over it "
                         f"(choose another output dir, or pass --overwrite to replace its contents)")
    if check_only:
        return path
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return path


def _meta_kind(path: Path) -> str | None:
    try:
        meta = read_json(path / "meta.json")
    except (OSError, ValueError):
        return None
    return meta.get("kind") if isinstance(meta, dict) else None


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
