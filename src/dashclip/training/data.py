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
from ..data.catalog import Catalog, ImageIndex


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
    """All (image, text) pairs of a catalog: its `image_index()` with the product texts and the held-out split.

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
        return cls._of(catalog, catalog.product_texts(), catalog.image_index(),
                       heldout_mask(catalog.products["id"].tolist(), heldout_frac, seed))

    @classmethod
    def _of(cls, catalog: Catalog, texts: list[str], images: ImageIndex, heldout: np.ndarray) -> "CatalogPairs":
        return cls(catalog=catalog, texts=texts, image_paths=images.paths, pair_product=images.pair_product,
                   pair_image=images.pair_image, heldout=heldout, primary_image=images.primary,
                   skipped=images.skipped)

    @property
    def images(self) -> ImageIndex:
        """The images these pairs use, as the catalog numbers them."""
        return ImageIndex(self.image_paths, self.pair_product, self.pair_image, self.primary_image, self.skipped)

    def __len__(self) -> int:
        return len(self.pair_product)

    def without_images(self, bad: np.ndarray) -> "CatalogPairs":
        """Drop the pairs whose image index is marked True in `bad` (images that failed to load)."""
        return CatalogPairs._of(self.catalog, self.texts, self.images.without_images(bad), self.heldout)

    def train_pairs(self) -> np.ndarray:
        """Indices of the pairs whose product is not held out."""
        return np.flatnonzero(~self.heldout[self.pair_product])

    def heldout_pairs(self) -> np.ndarray:
        return np.flatnonzero(self.heldout[self.pair_product])

    def products_with_image(self, heldout: bool) -> np.ndarray:
        """Product rows (held out or not) that have an image."""
        return np.flatnonzero((self.heldout == heldout) & (self.primary_image >= 0))
