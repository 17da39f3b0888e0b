"""Built-in presets: the column mapping (and, where the layout needs it, the reading) for known datasets,
so that `dashclip catalog import <preset>` works without flags. Data comes from `settings.data_dir()`.

- fashion-product-images-small: catalog.csv; image images/<id>.jpg. The 374 rows with has_image=0 have no
  image file: they are imported as text-only products and listed in the report as image_missing.
- grocery-store-dataset: the 81 products of classes.csv, with the iconic image as the primary image and the
  in-store photos of train.txt/val.txt/test.txt as extra images (role "extra", split train/val/test).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..settings import dataset_dir
from .rows import ExtraImage, Mapping, RawRow, Table


@dataclass
class PresetSource:
    """What a preset gives the importer: a file to read (or a table it built), the mapping, extra images."""

    mapping: Mapping
    file: Path | None = None
    table: Table | None = None
    extra_images: list[ExtraImage] = field(default_factory=list)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    load: Callable[[], PresetSource]
    vocabulary: str | None = None     # the shopper vocabulary of its query synthesis (labeling/vocabularies/)


def _fashion() -> PresetSource:
    root = dataset_dir("fashion-product-images-small")
    return PresetSource(
        file=root / "catalog.csv",
        mapping=Mapping(id="id", title="productDisplayName", image_pattern="{id}.jpg", category="articleType",
                        attrs=["subCategory", "masterCategory", "gender", "baseColour", "usage", "season"],
                        images_dir=str(root / "images")))


def readable_class_name(name: str) -> str:
    """"Golden-Delicious" -> "Golden Delicious"."""
    return " ".join(name.replace("-", " ").replace("_", " ").split())


def _grocery_title(folder: Path, fine: str) -> str | None:
    """The "Title:" line of <Fine>_Information.txt (one class spells it <Fine>-Information.txt)."""
    for fname in (f"{fine}_Information.txt", f"{fine}-Information.txt"):
        path = folder / fname
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.lower().startswith("title:"):
                    title = line.split(":", 1)[1].strip()
                    if title:
                        return title
    return None


def _grocery() -> PresetSource:
    root = dataset_dir("grocery-store-dataset") / "dataset"
    classes = root / "classes.csv"
    columns = ["id", "title", "description", "coarse_class", "fine_class", "group", "image"]
    rows = []
    with open(classes, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for cells in reader:
            number = reader.line_num
            if len(cells) < 6:
                rows.append(RawRow(number, {}, malformed=f"{len(cells)} fields, expected 6"))
                continue
            fine, class_id, coarse, _, iconic, description = (c.strip() for c in cells[:6])
            iconic, description = iconic.lstrip("/"), description.lstrip("/")  # relative to dataset/
            desc_path = root / description
            text = (" ".join(desc_path.read_text(encoding="utf-8", errors="replace").split())
                    if desc_path.is_file() else None)
            folder = desc_path.parent
            rows.append(RawRow(number, {
                "id": class_id, "title": _grocery_title(folder, fine) or readable_class_name(fine),
                "description": text, "coarse_class": coarse, "fine_class": fine,
                "group": Path(iconic).parts[1] if len(Path(iconic).parts) > 1 else None,
                "image": iconic}))
    extras = []
    for split in ("train", "val", "test"):
        split_file = root / f"{split}.txt"
        with open(split_file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                parts = [p.strip() for p in line.split(",")]
                if line.strip():  # a line without an id is reported by the importer as unknown_product
                    extras.append(ExtraImage(product_id=parts[1] if len(parts) > 1 else "", path=parts[0],
                                             split=split, file=str(split_file), row=number))
    return PresetSource(
        table=Table(str(classes), columns, rows, "line"),
        mapping=Mapping(id="id", title="title", image="image", category="coarse_class", text=["description"],
                        attrs=["fine_class", "group"], images_dir=str(root)),
        extra_images=extras)


PRESETS: dict[str, Preset] = {
    "fashion-product-images-small": Preset(
        "fashion-product-images-small", "Myntra fashion catalog, 44k products, 60x80 images", _fashion,
        vocabulary="fashion"),
    "grocery-store-dataset": Preset(
        "grocery-store-dataset", "81 grocery products with iconic images and 5,421 in-store photos", _grocery),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
