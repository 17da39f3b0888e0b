"""Where dashclip finds things. One place, so every stage agrees."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# The repository root when running from a checkout (src/dashclip/settings.py -> repo).
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The shared data folder: $DASHCLIP_DATA, else ../shared/data beside the checkout or the cwd."""
    env = os.environ.get("DASHCLIP_DATA")
    if env:
        return Path(env).expanduser().resolve()
    for base in (Path.cwd(), REPO_ROOT):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return (REPO_ROOT / ".." / "shared" / "data").resolve()


def dataset_dir(name: str) -> Path:
    """A named folder of the shared data, with a clear error when it is not there."""
    path = data_dir() / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {path} (set DASHCLIP_DATA to the folder that holds {name!r})")
    return path


def load_labels_module(path: str | Path):
    """Import a dataset's own labels.py (e.g. ../shared/data/fashion-queries/labels.py) by path: the
    evaluation and the seed grades both grade through it, never through a copy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels module not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_dashclip_labels_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_dir() -> Path:
    """Default parent of work directories (git-ignored)."""
    return Path(os.environ.get("DASHCLIP_RUNS", "runs"))


def image_cache_dir() -> Path:
    """Default home of image-feature caches (`pretrain --freeze-image` writes them; embedding the
    catalog for an index reads them): one place, so the embedder finds what Stage 1 cached."""
    return runs_dir() / "cache" / "image-features"


# Held-out split used by every benchmark: a query is held out when its qid number is divisible by 3.
def is_heldout_qid(qid: str) -> bool:
    digits = "".join(ch for ch in str(qid) if ch.isdigit())
    return bool(digits) and int(digits) % 3 == 0
