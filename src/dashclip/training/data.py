"""Image-text pairs from a catalog, and the held-out split by product.

Every image of a product makes one (image, product text) pair, so a grocery product with five
in-store photos gives five pairs that share a product id (the contrastive loss knows they are not
negatives of each other). The held-out split is by product, never by pair, so no photo of a
held-out product is ever trained on; it depends only on (seed, product id), so it is the same on
every machine, for every run, and when the catalog grows.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.catalog import Catalog


def heldout_mask(product_ids, frac: float, seed: int = 0) -> np.ndarray:
    """True for the products held out: sha1("seed:id") as a number in [0, 1) is below `frac`."""
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), not {frac}")
    out = np.zeros(len(product_ids), dtype=bool)
    for i, pid in enumerate(product_ids):
        digest = hashlib.sha1(f"{seed}:{pid}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2**64 < frac
    return out


@dataclass
class CatalogPairs:
    """All (image, text) pairs of a catalog.

    Products are numbered by their row in `catalog.products` ("product rows"); that row number is
    the id the losses compare. Images are numbered by position in `image_paths`.
    """

    catalog: Catalog
    texts: list[str]                # per product row: `product_text`, the one text form of a product
    image_paths: list[Path]         # per image: absolute path
    pair_product: np.ndarray        # [pairs] product row of each pair
    pair_image: np.ndarray          # [pairs] image index of each pair
    heldout: np.ndarray             # [products] True for held-out products
    primary_image: np.ndarray       # [products] one image index per product (-1: none), for evaluation
    skipped: dict                   # reason -> count of image rows that made no pair

    @classmethod
    def from_catalog(cls, catalog: Catalog, heldout_frac: float = 0.1, seed: int = 0) -> "CatalogPairs":
        products = catalog.products
        row_of = catalog.row_of
        images = catalog.images
        skipped = {"no image path": 0, "unknown product id": 0}
        pair_product, pair_image, paths, index_of_path = [], [], [], {}
        primary = np.full(len(products), -1, dtype=np.int64)
        roles = images["role"] if "role" in images else pd.Series(["primary"] * len(images))
        for pid, rel, role in zip(images["product_id"].tolist(), images["image"].tolist(), roles.tolist()):
            if rel is None or (isinstance(rel, float) and pd.isna(rel)):
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
        return cls(catalog=catalog, texts=catalog.product_texts(), image_paths=paths,
                   pair_product=np.asarray(pair_product, dtype=np.int64),
                   pair_image=np.asarray(pair_image, dtype=np.int64),
                   heldout=heldout_mask(products["id"].tolist(), heldout_frac, seed),
                   primary_image=primary, skipped={k: v for k, v in skipped.items() if v})

    def __len__(self) -> int:
        return len(self.pair_product)

    def without_images(self, bad: np.ndarray) -> "CatalogPairs":
        """Drop the pairs whose image index is marked True in `bad` (images that failed to load)."""
        keep = ~bad[self.pair_image]
        primary = self.primary_image.copy()
        primary[(primary >= 0) & bad[np.maximum(primary, 0)]] = -1
        for row, img in zip(self.pair_product[keep], self.pair_image[keep]):  # another photo stands in
            if primary[row] < 0:
                primary[row] = img
        skipped = dict(self.skipped)
        if (~keep).sum():
            skipped["image failed to load"] = int((~keep).sum())
        return CatalogPairs(self.catalog, self.texts, self.image_paths, self.pair_product[keep],
                            self.pair_image[keep], self.heldout, primary, skipped)

    def train_pairs(self) -> np.ndarray:
        """Indices of the pairs whose product is not held out."""
        return np.flatnonzero(~self.heldout[self.pair_product])

    def heldout_pairs(self) -> np.ndarray:
        return np.flatnonzero(self.heldout[self.pair_product])

    def products_with_image(self, heldout: bool) -> np.ndarray:
        """Product rows (held out or not) that have an image."""
        return np.flatnonzero((self.heldout == heldout) & (self.primary_image >= 0))
