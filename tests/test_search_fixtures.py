"""A tiny shop for the search, service and web page tests: a hand-written CSV with Pillow-drawn images,
imported with `import_catalog`, the tiny random model, and a FAISS index built from its product embeddings.

Imported by tests/test_search*.py, tests/test_service*.py and tests/test_web_page.py (no tests here); the
service tests take its `shop` and `client` fixtures."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"Red": (214, 48, 49), "Blue": (9, 132, 227), "Black": (30, 30, 30), "White": (236, 236, 236),
           "Green": (0, 148, 50)}
KINDS = {"Dresses": "Dress", "Heels": "Heels", "Tshirts": "T-shirt", "Watches": "Watch"}
SEASONS = ["Summer", "Winter"]
NO_IMAGE_ID = 999  # a product whose image cell is empty


@dataclass
class Shop:
    root: Path
    catalog_dir: Path
    model_dir: Path
    index_dir: Path
    model: object
    catalog: object
    index: object


def _draw(path: Path, kind: str, rgb: tuple[int, int, int]) -> None:
    """A 60x80 product shot: white background, one coloured shape per kind."""
    im = Image.new("RGB", (60, 80), (255, 255, 255))
    d = ImageDraw.Draw(im)
    if kind == "Dresses":
        d.polygon([(30, 8), (48, 72), (12, 72)], fill=rgb)
    elif kind == "Heels":
        d.rectangle([8, 50, 52, 60], fill=rgb)
        d.rectangle([44, 60, 48, 74], fill=rgb)
    elif kind == "Tshirts":
        d.rectangle([16, 20, 44, 70], fill=rgb)
        d.rectangle([6, 20, 54, 34], fill=rgb)
    else:
        d.ellipse([14, 24, 46, 56], fill=rgb, outline=(0, 0, 0))
    im.save(path, "JPEG", quality=90)


def write_source(src: Path) -> Path:
    """The CSV (+ images) a shop owner would hand over: 40 products and one without an image."""
    images = src / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, pid = [], 100
    for colour, rgb in COLOURS.items():
        for kind, noun in KINDS.items():
            for gender in ("Women", "Men"):
                if kind in ("Dresses", "Heels") and gender == "Men":
                    continue
                season = SEASONS[pid % 2]
                _draw(images / f"{pid}.jpg", kind, rgb)
                rows.append({"id": pid, "name": f"{colour} {season} {noun} for {gender}", "type": kind,
                             "img": f"{pid}.jpg", "gender": gender, "baseColour": colour, "season": season})
                pid += 1
    rows.append({"id": NO_IMAGE_ID, "name": "Mystery Gift Card", "type": "Accessories", "img": "",
                 "gender": "Unisex", "baseColour": "Multi", "season": "Summer"})
    path = src / "products.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


MAPPING = {"id": "id", "title": "name", "image": "img", "images_dir": "images", "category": "type",
           "attrs": ["gender", "baseColour", "season"]}


def make_catalog(root: Path) -> Path:
    from dashclip.data.importer import import_catalog

    import_catalog(write_source(root / "src"), out=root / "catalog", mapping=MAPPING, workers=1)
    return root / "catalog"


def make_model(path: Path, seed: int = 0):
    import torch

    from dashclip.models.factory import create_model

    torch.manual_seed(seed)
    model = create_model("tiny", pretrained=False)
    model.save(path)
    return model


def build_shop_index(model, catalog, out: Path, drop_ids=(), **meta):
    """Embed the catalog with `model` and index it, as `dashclip index build` does (attributes included)."""
    from dashclip.index import build_index
    from dashclip.models.embeddings import embed_catalog, load_embeddings

    emb_dir = out.parent / f"{out.name}-embeddings"
    if not (emb_dir / "meta.json").exists():
        embed_catalog(model, catalog, emb_dir, progress=False)
    emb = load_embeddings(emb_dir)
    keep = ~np.isin(emb.ids, list(drop_ids))
    products = catalog.products.set_index("id")
    attributes = products.loc[emb.ids[keep], ["category", *catalog.attributes]].reset_index()
    return build_index(np.asarray(emb.vectors["fused"])[keep], emb.ids[keep], out,
                       meta={"model_id": model.model_id, "catalog_hash": catalog.content_hash,
                             "catalog_dir": str(catalog.root), **meta},
                       attributes=attributes)


def make_shop(root: Path) -> Shop:
    from dashclip.data.catalog import Catalog

    catalog_dir = make_catalog(root)
    model = make_model(root / "model")
    catalog = Catalog.open(catalog_dir)
    index = build_shop_index(model, catalog, root / "index")
    return Shop(root, catalog_dir, root / "model", root / "index", model, catalog, index)


_SHOP: Shop | None = None


def shared_shop(tmp_path_factory) -> Shop:
    """One shop per test session, shared by the search, service and web page tests (none of them changes it)."""
    global _SHOP
    if _SHOP is None:
        _SHOP = make_shop(tmp_path_factory.mktemp("shop"))
    return _SHOP


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return shared_shop(tmp_path_factory)


@pytest.fixture(scope="module")
def client(shop):
    from fastapi.testclient import TestClient

    from dashclip.serving.search import Searcher
    from dashclip.serving.service import create_app

    app = create_app(Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0)
    with TestClient(app) as c:
        yield c
