"""Grocery transfer, the "after Stage 1" row: Stage 1 (`training.pretrain`) on the in-store photos
of one split (train) of a grocery catalog, so the report can set zero-shot numbers beside numbers
after catalog pretraining. The photos of the other splits are never seen in training.

    from dashclip.evaluation.grocery import pretrain_on_split
    model_dir = pretrain_on_split("runs/catalogs/grocery", "runs/eval/grocery-stage1", epochs=2)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.catalog import Catalog


def split_catalog(catalog: Catalog, split: str = "train") -> Catalog:
    """The same products, with only their primary (iconic) images and the extra photos of `split`."""
    images = catalog.images
    keep = (images["role"] != "extra") | (images["split"] == split)
    if not ((images["role"] == "extra") & (images["split"] == split)).any():
        raise ValueError(f"{catalog.root}: no in-store photos (images with role 'extra') in split {split!r}")
    return dataclasses.replace(catalog, images=images[keep].reset_index(drop=True))


def pretrain_on_split(catalog: str | Path | Catalog, out: str | Path, split: str = "train",
                      config: str = "default", image_size: int | None = None, epochs: int = 2,
                      **options) -> Path:
    """Run Stage 1 with a frozen, cached image tower on the `split` photos of `catalog` into `out`
    and return the model dir (`out/model`). A finished run in `out` is reused, not retrained.
    `options` are further `PretrainConfig` fields (batch_size, lr, pretrained, heldout_frac, ...)."""
    from ..training.pretrain import MODEL_DIR, PretrainConfig, pretrain

    from ..io import read_json

    out = Path(out)
    model_dir = out / MODEL_DIR
    if (model_dir / "config.json").is_file():
        done = read_json(out / "pretrain_config.json") if (out / "pretrain_config.json").is_file() else {}
        asked = {"config": config, "image_size": image_size, "epochs": epochs}
        differ = {k: (done.get(k), v) for k, v in asked.items() if done.get(k) != v}
        if differ:
            raise ValueError(f"{out}: holds a Stage 1 run with other settings ("
                             + ", ".join(f"{k} {a!r}, asked {b!r}" for k, (a, b) in differ.items())
                             + "); remove it or choose another dir")
        return model_dir
    catalog = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
    # A few products stay held out: Stage 1 reports its held-out retrieval after every epoch.
    settings = {"heldout_frac": 0.05, "batch_size": 32, "warmup_steps": 10, **options}
    cfg = PretrainConfig(config=config, image_size=image_size, epochs=epochs, freeze_image=True,
                         resume=(out / "checkpoints").is_dir(), **settings)
    pretrain(split_catalog(catalog, split), out, cfg)
    return model_dir
