"""The canonical catalog: the one form of product data that every stage after import reads.

A catalog directory, written by `dashclip catalog import` (see `importer.py`):

    catalog.parquet   one row per product. Columns:
                        id        int64 when every input id is an integer, else string
                        title     non-empty string
                        text      extra text fields joined with " | " ("" when none)
                        category  the "aisle" (string, may be null)
                        image     primary image path relative to the catalog dir, e.g. "images/15970.jpg"
                                  (null when the product has no readable image)
                        <attr>... every extra attribute kept for filtering, under its own name
    images.parquet    every image of every product: product_id, image (relative path),
                      role ("primary" | "extra"), split (e.g. "train"/"val"/"test", or null)
    images/           the image files that passed validation, copied in
    manifest.json     name, source, preset, attributes, text_fields, counts, content_hash
    report.json/.md   the import report: counts per problem and the first rows of each
    dashclip-output.json   {"kind": "catalog"}: the marker that lets a re-import replace this dir
                      (`dashclip.io.prepare_output_dir`)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import math

import numpy as np
import pandas as pd

from ..io import read_json

CATALOG_FILE = "catalog.parquet"
IMAGES_FILE = "images.parquet"
MANIFEST_FILE = "manifest.json"
CORE_COLUMNS = ("id", "title", "text", "category", "image")


def is_missing(value) -> bool:
    """Whether a catalog value is missing: None, NaN (pandas' float null) or pd.NA. The one test, so every
    stage agrees on what a missing value is."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


@dataclass
class Catalog:
    """An imported catalog. `products` has one row per product, in a stable order (by id)."""

    root: Path
    products: pd.DataFrame
    images: pd.DataFrame
    manifest: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> "Catalog":
        root = Path(root)
        path = root / CATALOG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{root}: not a dashclip catalog (no {CATALOG_FILE}); "
                                    f"run `dashclip catalog import` first")
        products = pd.read_parquet(path)
        images_path = root / IMAGES_FILE
        images = (pd.read_parquet(images_path) if images_path.exists()
                  else pd.DataFrame({"product_id": products["id"], "image": products["image"],
                                     "role": "primary", "split": None}).dropna(subset=["image"]))
        manifest = read_json(root / MANIFEST_FILE) if (root / MANIFEST_FILE).exists() else {}
        return cls(root=root, products=products, images=images, manifest=manifest)

    def __len__(self) -> int:
        return len(self.products)

    @property
    def attributes(self) -> list[str]:
        """Extra attribute columns kept for filtering (e.g. gender, baseColour)."""
        return list(self.manifest.get("attributes") or
                    [c for c in self.products.columns if c not in CORE_COLUMNS])

    @property
    def content_hash(self) -> str:
        return str(self.manifest.get("content_hash", ""))

    @cached_property
    def row_of(self) -> dict:
        """Product id -> row position in `products`."""
        return {pid: i for i, pid in enumerate(self.products["id"].tolist())}

    def image_path(self, rel: str | None) -> Path | None:
        """Absolute path of an image given its catalog-relative path (never taken from a request)."""
        return None if rel is None or (isinstance(rel, float)) else self.root / rel

    def product(self, pid) -> dict:
        """One product as a plain dict (raises KeyError naming the id when unknown)."""
        pid = self.coerce_id(pid)
        if pid not in self.row_of:
            raise KeyError(f"unknown product id {pid!r}")
        row = self.products.iloc[self.row_of[pid]].to_dict()
        return {k: (None if is_missing(v) else v) for k, v in row.items()}

    @cached_property
    def integer_ids(self) -> bool:
        """Whether product ids are integers (asked once: `coerce_id` runs per row of large tables)."""
        return pd.api.types.is_integer_dtype(self.products["id"].dtype)

    def coerce_id(self, pid):
        """Ids arrive as strings from URLs and JSON: the catalog's id type (`data.ids.coerce_id`; a value
        that cannot be one of its ids is a KeyError)."""
        from .ids import coerce_id

        return coerce_id(pid, self.integer_ids)

    def image_index(self) -> "ImageIndex":
        """Every image of the catalog in one fixed order, with its products: see `ImageIndex`."""
        return ImageIndex.of(self)

    def product_texts(self, rows=None) -> list[str]:
        """The text of every product (or of catalog `rows`, in that order) as the text models read it:
        see `product_text`."""
        return product_texts(self.products if rows is None else self.products.iloc[list(rows)], self.attributes)


@dataclass
class ImageIndex:
    """A catalog's images numbered in one fixed order (images.parquet's, each file once), and which
    product each belongs to. Products are numbered by their row in `catalog.products`.

    The order is what Stage 1's pairs and the image-feature caches (models/feature_cache.py, keyed by
    this list of paths) number images by, so it must not change."""

    paths: list[Path]               # per image: absolute path
    pair_product: np.ndarray        # [pairs] product row of each (image, product) pair
    pair_image: np.ndarray          # [pairs] image number of each pair
    primary: np.ndarray             # [products] one image number per product (-1: none)
    skipped: dict                   # reason -> count of image rows that made no pair

    @classmethod
    def of(cls, catalog: Catalog) -> "ImageIndex":
        row_of, images = catalog.row_of, catalog.images
        skipped = {"no image path": 0, "unknown product id": 0}
        pair_product, pair_image, paths, index_of_path = [], [], [], {}
        primary = np.full(len(catalog.products), -1, dtype=np.int64)
        roles = images["role"] if "role" in images else pd.Series(["primary"] * len(images))
        for pid, rel, role in zip(images["product_id"].tolist(), images["image"].tolist(), roles.tolist()):
            if is_missing(rel):
                skipped["no image path"] += 1
                continue
            row = row_of.get(catalog.coerce_id(pid)) if pid is not None else None
            if row is None:
                skipped["unknown product id"] += 1
                continue
            if rel not in index_of_path:
                index_of_path[rel] = len(paths)
                paths.append(catalog.image_path(rel))
            img = index_of_path[rel]
            pair_product.append(row)
            pair_image.append(img)
            if primary[row] < 0 or role == "primary":
                primary[row] = img
        return cls(paths, np.asarray(pair_product, dtype=np.int64), np.asarray(pair_image, dtype=np.int64),
                   primary, {k: v for k, v in skipped.items() if v})

    def without_images(self, bad: np.ndarray) -> "ImageIndex":
        """Drop the pairs whose image number is marked True in `bad` (images that failed to load); a
        product whose primary image is dropped gets another of its images, when it has one."""
        keep = ~bad[self.pair_image]
        primary = self.primary.copy()
        primary[(primary >= 0) & bad[np.maximum(primary, 0)]] = -1
        for row, img in zip(self.pair_product[keep], self.pair_image[keep]):  # another photo stands in
            if primary[row] < 0:
                primary[row] = img
        skipped = dict(self.skipped)
        if (~keep).sum():
            skipped["image failed to load"] = int((~keep).sum())
        return ImageIndex(self.paths, self.pair_product[keep], self.pair_image[keep], primary, skipped)


def product_texts(products: pd.DataFrame, attributes: list[str] | tuple = ()) -> list[str]:
    """`product_text` of every row of a catalog's products table (or a part of it), in its order."""
    # only the columns product_text reads, each as one Python list: through to_dict("records") of every
    # column the fashion catalog's 44,439 texts took 0.95 s, this way 0.29 s (2026-12-07, a busy EPYC host)
    columns = [c for c in dict.fromkeys(("title", "category", *attributes, "text")) if c in products]
    values = [products[c].tolist() for c in columns]
    return [product_text(dict(zip(columns, row)), attributes) for row in zip(*values)]


def product_text(row: dict, attributes: list[str] | tuple = ()) -> str:
    """Title plus category and attribute values, e.g.
    "Turtle Check Men Navy Blue Shirt | Shirts | Men | Navy Blue | Casual".

    One definition, used by BM25, the cross-encoder labeler and the baselines, so they all see the
    same words for a product."""
    parts = [str(row["title"]).strip()]
    seen = {parts[0].lower()}
    for key in ("category", *attributes):
        v = row.get(key)
        if is_missing(v):
            continue
        s = str(v).strip()
        if s and s.lower() not in seen:
            parts.append(s)
            seen.add(s.lower())
    extra = row.get("text")
    extra = "" if is_missing(extra) else str(extra).strip()   # pandas' str columns hold a missing value as NaN
    if extra:
        parts.append(extra)
    return " | ".join(parts)
