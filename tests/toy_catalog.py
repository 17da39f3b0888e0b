"""A toy catalog drawn with Pillow: 48 products (8 colours x 6 kinds), each image showing both, a
few products with a second photo. Shared by the model, training, index and serving tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30),
          "purple": (140, 40, 170), "orange": (240, 140, 20), "black": (15, 15, 15), "white": (245, 245, 245)}
KINDS = ["shirt", "shoe", "bag", "watch", "cap", "sock"]


def make_catalog(root: Path, extra_photos: int = 6) -> Path:
    """48 products (colour x kind), each with a 16x20 image that shows both; the first products of
    every fifth row get a second photo (several images per product, as in grocery catalogs)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, images = [], []
    pid = 100
    for cname, rgb in COLORS.items():
        for k, kind in enumerate(KINDS):
            arr = np.zeros((20, 16, 3), dtype=np.uint8)
            arr[:] = rgb
            arr[k * 3:k * 3 + 3] = 255 - np.array(rgb, dtype=np.uint8)   # a stripe that says the kind
            rel = f"images/{pid}.png"
            Image.fromarray(arr).save(root / rel)
            rows.append({"id": pid, "title": f"{cname.title()} {kind}", "text": "", "category": kind,
                         "image": rel, "baseColour": cname})
            images.append({"product_id": pid, "image": rel, "role": "primary", "split": None})
            pid += 1
    for j in range(extra_photos):
        r = rows[j * 5]
        arr = np.asarray(Image.open(root / r["image"])).copy()
        arr[-2:] = 128
        rel = f"images/{r['id']}_b.png"
        Image.fromarray(arr).save(root / rel)
        images.append({"product_id": r["id"], "image": rel, "role": "extra", "split": None})
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet")
    pd.DataFrame(images).to_parquet(root / "images.parquet")
    (root / "manifest.json").write_text(json.dumps({"name": "toy", "attributes": ["baseColour"],
                                                    "content_hash": "toy-1"}))
    return root
