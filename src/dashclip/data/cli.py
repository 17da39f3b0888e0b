"""CLI for the catalog: `dashclip catalog import | stats | presets`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..clihelp import UserError, console, progress, user_errors

catalog_app = typer.Typer(help="Import, validate and inspect product catalogs.", no_args_is_help=True)


def _mapping_from_options(mapping_file: Optional[Path], **flags) -> dict | None:
    """A mapping file, then the flags on top of it. None when the user gave neither."""
    from ..io import read_json

    mapping: dict = {}
    if mapping_file is not None:
        if not mapping_file.is_file():
            raise UserError(f"{mapping_file}: mapping file not found")
        mapping = read_json(mapping_file)   # not JSON: an InputFileError naming file and line
        if not isinstance(mapping, dict):
            raise UserError(f"{mapping_file}: a mapping is a JSON object, e.g. "
                            '{"id": "sku", "title": "name", "image": "image_path"}')
    mapping.update({k: v for k, v in flags.items() if v not in (None, [], ())})
    return mapping or None


IMPORT_HELP = ("Import a catalog (CSV, Parquet or JSONL) into the canonical form every stage reads.\n\n"
               "Bad rows are reported (report.md and report.json in the catalog dir), not fatal. The command "
               "fails only when a required column is missing or no usable product is left.")


@catalog_app.command("import", help=IMPORT_HELP)
def import_(
    source: str = typer.Argument(..., help="A CSV, Parquet or JSONL file, or a preset name "
                                           "(see `dashclip catalog presets`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Catalog dir (default: runs/catalogs/<name>)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="csv, parquet or jsonl (default: from extension)."),
    id_col: Optional[str] = typer.Option(None, "--id", help="Column with the product id (default: id)."),
    title: Optional[str] = typer.Option(None, "--title", help="Column with the title (default: title)."),
    image: Optional[str] = typer.Option(None, "--image", help="Column with the image path (relative to "
                                                              "--images-dir) or URL."),
    image_pattern: Optional[str] = typer.Option(None, "--image-pattern",
                                                help='Image path built from columns, e.g. "{id}.jpg".'),
    category: Optional[str] = typer.Option(None, "--category", help="Column with the category (the aisle)."),
    text: list[str] = typer.Option([], "--text", help="Extra text column (repeatable)."),
    attr: list[str] = typer.Option([], "--attr", help="Attribute column kept for filtering (repeatable)."),
    images_dir: Optional[str] = typer.Option(None, "--images-dir",
                                             help="Folder the image paths are relative to (default: the "
                                                  "input file's folder)."),
    mapping_file: Optional[Path] = typer.Option(None, "--mapping", help="JSON file with the mapping (keys: "
                                                "id, title, image, image_pattern, category, text, attrs, "
                                                "images_dir); flags override it."),
    name: Optional[str] = typer.Option(None, "--name", help="Catalog name (default: preset or file name)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of a CSV/JSONL file."),
    max_side: int = typer.Option(1024, "--max-side", help="Larger images are downscaled to this side."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels",
                                   help="Images with more pixels are refused before decoding (decompression "
                                        "bombs, and memory: 40 MP is 120 MB decoded)."),
    max_image_bytes: int = typer.Option(20 * 1024 * 1024, "--max-image-bytes",
                                        help="Image files and downloads larger than this are refused (a local "
                                             "file from its size, before it is read)."),
    allow_private_urls: bool = typer.Option(False, "--allow-private-urls",
                                            help="Fetch image URLs whose host is loopback, link-local or private "
                                                 "(refused by default)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Threads validating images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even when it is a non-empty folder "
                                   "that is not a catalog (its contents are deleted). Never an input's folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Import a catalog (CSV, Parquet or JSONL) into the canonical form every stage reads."""
    from rich.table import Table

    from .importer import import_catalog

    with user_errors():
        mapping = _mapping_from_options(mapping_file, id=id_col, title=title, image=image,
                                        image_pattern=image_pattern, category=category, text=list(text),
                                        attrs=list(attr), images_dir=images_dir)
        bar, task = progress(disable=quiet), None

        def on_progress(done: int, total: int) -> None:
            nonlocal task
            if task is None:  # started on the first image, so errors before that print alone
                bar.start()
                task = bar.add_task("validating images", total=total)
            bar.update(task, completed=done, total=total)

        try:
            result = import_catalog(source, out=out, mapping=mapping, fmt=fmt, name=name, encoding=encoding,
                                    max_side=max_side,
                                    max_pixels=max_pixels, workers=workers, progress=on_progress,
                                    overwrite=overwrite, max_image_bytes=max_image_bytes,
                                    allow_private_urls=allow_private_urls)
        finally:
            bar.stop()
    r = result.report
    summary = Table(title=f"catalog {result.manifest['name']}", show_header=False)
    summary.add_row("rows read", f"{r.rows_read:,}")
    summary.add_row("products", f"{r.products:,}")
    summary.add_row("  with image", f"{r.products_with_image:,}")
    summary.add_row("  without image", f"{r.products - r.products_with_image:,}")
    summary.add_row("rows dropped", f"{r.rows_dropped:,}")
    if r.extra_images_read:
        summary.add_row("extra images", f"{r.extra_images:,} of {r.extra_images_read:,}")
    for code, n in r.counts().items():
        summary.add_row(f"problem: {code}", f"{n:,}")
    summary.add_row("time", f"{r.seconds:.1f} s ({r.products / max(r.seconds, 1e-9):,.0f} products/s)")
    summary.add_row("content hash", result.content_hash[:16])
    console.print(summary)
    console.print(f"catalog: {result.out}\nreport:  {result.report_path}")


@catalog_app.command("stats")
def stats(
    catalog_dir: Path = typer.Argument(..., help="A catalog dir written by `dashclip catalog import`."),
    top: int = typer.Option(0, "--top", help="Show only the N largest categories (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
):
    """Print the counts of a catalog: products, with image, images by role/split, per category."""
    from rich.console import Console
    from rich.table import Table

    from .catalog import Catalog

    with user_errors():
        cat = Catalog.open(catalog_dir)
    counts = catalog_counts(cat)
    if as_json:
        typer.echo(json.dumps(counts, indent=2))
        return
    out = Console()
    head = Table(title=f"{catalog_dir}", show_header=False)
    for key in ("products", "with_image", "without_image", "images"):
        head.add_row(key.replace("_", " "), f"{counts[key]:,}")
    for key, n in sorted(counts["images_by_role_split"].items()):
        role, split = key.split("|", 1)
        head.add_row(f"  {role} images{f' ({split})' if split != '-' else ''}", f"{n:,}")
    out.print(head)
    per = Table(title="per category")
    per.add_column("category")
    per.add_column("products", justify="right")
    per.add_column("with image", justify="right")
    rows = counts["per_category"]
    for row in (rows[:top] if top else rows):
        per.add_row(str(row["category"]), f"{row['products']:,}", f"{row['with_image']:,}")
    out.print(per)


def catalog_counts(cat) -> dict:
    """The numbers `catalog stats` prints, as a dict (also used by tests)."""
    p = cat.products
    has_image = p["image"].notna()
    per = (p.assign(with_image=has_image, category=p["category"].fillna("(none)"))
           .groupby("category", dropna=False)
           .agg(products=("id", "size"), with_image=("with_image", "sum"))
           .reset_index().sort_values(["products", "category"], ascending=[False, True]))
    images = cat.images.assign(split=cat.images["split"].fillna("-"))
    by_role = images.groupby(["role", "split"]).size()
    return {
        "products": int(len(p)), "with_image": int(has_image.sum()), "without_image": int((~has_image).sum()),
        "images": int(len(cat.images)),
        "images_by_role_split": {f"{r}|{s}": int(n) for (r, s), n in by_role.items()},
        "per_category": [{"category": r.category, "products": int(r.products), "with_image": int(r.with_image)}
                         for r in per.itertuples()],
    }


@catalog_app.command("synth")
def synth(
    source: Path = typer.Option(..., "--from", help="The catalog dir to grow (`dashclip catalog import` output)."),
    n: int = typer.Option(..., "--n", min=1, help="Products in the new catalog (the source's first, then new)."),
    out: Path = typer.Option(..., "--out", help="The new catalog dir (its images/ links to the source's)."),
    seed: int = typer.Option(0, "--seed", help="The same source, N and seed give the same catalog."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty dir that is not a catalog."),
):
    """Make a larger catalog for scale tests: new products recombine the source's titles and attributes
    within each aisle and reuse its images (see dashclip.data.synth)."""
    from .catalog import Catalog
    from .synth import synthesize_catalog

    with user_errors():
        path = synthesize_catalog(source, n, out, seed=seed, overwrite=overwrite)
        cat = Catalog.open(path)
    typer.echo(f"{len(cat):,} products ({cat.manifest['synthesized']['original_products']:,} from {source}) -> {path}")


@catalog_app.command("presets")
def presets():
    """List the built-in presets (importable by name, without flags)."""
    from .presets import PRESETS

    for p in PRESETS.values():
        typer.echo(f"{p.name}\t{p.description}")


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
