"""A larger catalog made from a real one, for measuring scale (`dashclip catalog synth`).

The first products are the source catalog's, unchanged (at N = its size the output is the source catalog).
Each further product starts from a random source product of the same aisle as a donor: it keeps the base
product's image (reused, not copied: the output's `images/` links to the source's) and its aisle, takes the
first word of the donor's title (the brand, in most catalogs) and, for each attribute the title does not
name, the donor's value half of the time. So titles and attributes recombine the shop's own vocabulary,
every product has a real image, and the image still shows what the aisle says. Seeded: the same source, N
and seed give the same catalog, byte for byte.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_dir, mark_output_dir, prepare_output_dir, write_json
from .catalog import CATALOG_FILE, IMAGES_FILE, MANIFEST_FILE, Catalog, is_missing


def synthesize_catalog(source: str | Path | Catalog, n: int, out: str | Path, seed: int = 0,
                       overwrite: bool = False) -> Path:
    """Write a catalog dir of `n` products made from `source` (see the module doc); returns its path."""
    src = source if isinstance(source, Catalog) else Catalog.open(source)
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if len(src) == 0:
        raise ValueError(f"{src.root}: the source catalog has no products")
    out = prepare_output_dir(out, "catalog", inputs=[src.root], overwrite=overwrite, check_only=True)
    base = src.products.reset_index(drop=True)
    keep = base.iloc[:min(n, len(base))]
    extra = _recombine(base, n - len(keep), src.attributes, np.random.default_rng(seed)) if n > len(base) else None
    if extra is not None:
        extra["id"] = _new_ids(base["id"], len(extra))
    products = pd.concat([keep, extra], ignore_index=True) if extra is not None else keep

    images = src.images[src.images["product_id"].isin(set(keep["id"]))]
    if extra is not None:      # a new product's one image: its base product's primary one
        primary = pd.DataFrame({"product_id": extra["id"].to_numpy(), "image": extra["image"].to_numpy(),
                                "role": "primary", "split": None})
        images = pd.concat([images, primary[primary["image"].map(lambda v: not is_missing(v))]])
    images = images.reset_index(drop=True)

    with atomic_dir(out) as tmp:
        if (src.root / "images").is_dir():     # reused, not copied: 1M products need no 1M files
            os.symlink(os.path.realpath(src.root / "images"), tmp / "images", target_is_directory=True)
        products.to_parquet(tmp / CATALOG_FILE, index=False)
        images.to_parquet(tmp / IMAGES_FILE, index=False)
        h = hashlib.sha256(f"synth\0{src.content_hash}\0{n}\0{seed}\n".encode())
        for name in (CATALOG_FILE, IMAGES_FILE):
            h.update((tmp / name).read_bytes())
        manifest = {**{k: v for k, v in src.manifest.items() if k not in ("counts", "content_hash", "source")},
                    "name": f"{src.manifest.get('name') or src.root.name}-synth-{n}", "source": str(src.root),
                    "synthesized": {"from": str(src.root), "from_content_hash": src.content_hash, "n": int(n),
                                    "seed": int(seed), "original_products": int(len(keep))},
                    "counts": {"products": int(len(products)),
                               "with_image": int(products["image"].map(lambda v: not is_missing(v)).sum()),
                               "images": int(len(images))},
                    "content_hash": h.hexdigest()}
        write_json(tmp / MANIFEST_FILE, manifest)
        mark_output_dir(tmp, "catalog")
    return out


def _recombine(base: pd.DataFrame, m: int, attributes: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """`m` new products: base rows of random products, each with a donor of the same aisle."""
    rows = rng.integers(0, len(base), m)
    new = base.iloc[rows].reset_index(drop=True).copy()
    aisle = base["category"].astype(str).to_numpy() if "category" in base else np.array([""] * len(base))
    members = pd.Series(np.arange(len(base))).groupby(aisle).apply(np.asarray).to_dict()
    picks = rng.random(m)
    donors = np.array([members[aisle[r]][int(p * len(members[aisle[r]]))] for r, p in zip(rows, picks)])
    donor = base.iloc[donors].reset_index(drop=True)

    titles = new["title"].astype(str).tolist()
    donor_titles = donor["title"].astype(str).tolist()
    new["title"] = [_swap_first_word(t, d) for t, d in zip(titles, donor_titles)]
    swap = rng.random((m, len(attributes))) < 0.5
    for j, a in enumerate(attributes):
        if a not in new:
            continue
        named = np.array([_names(t, v) for t, v in zip(new["title"], new[a])], dtype=bool)
        take = swap[:, j] & ~named            # a value the title states stays, so title and attribute agree
        new.loc[take, a] = donor.loc[take, a].to_numpy()
    return new


def _swap_first_word(title: str, donor: str) -> str:
    words, first = title.split(), donor.split()[:1]
    return " ".join(first + words[1:]) if len(words) > 1 and first else title


def _names(title: str, value) -> bool:
    return not is_missing(value) and str(value).lower() in title.lower()


def _new_ids(ids: pd.Series, m: int):
    """Ids after the source's: integers past its largest, or "synth-<k>" for string ids."""
    if pd.api.types.is_integer_dtype(ids.dtype):
        start = int(ids.max()) + 1
        return np.arange(start, start + m, dtype=ids.dtype)
    taken = set(ids.astype(str))
    out, k = [], 0
    while len(out) < m:
        candidate = f"synth-{k}"
        if candidate not in taken:
            out.append(candidate)
        k += 1
    return np.array(out, dtype=object)
