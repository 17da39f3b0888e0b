"""CLI for vector indexes: `dashclip index build | add | remove | info`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..clihelp import UserError, console, user_errors
from .backends import open_index
from .catalog_index import PHOTO_IMAGE_WEIGHT, add_products, build_catalog_index, check_out, remove_products

index_app = typer.Typer(help="Build and update vector indexes of product embeddings.", no_args_is_help=True)

MODEL = typer.Option(..., "--model", help="Model dir (`dashclip pretrain` / `dashclip align` output).")
CATALOG = typer.Option(..., "--catalog", help="Catalog dir (`dashclip catalog import` output).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
IMAGE_CACHE = typer.Option(None, "--image-cache", help="Where `pretrain --freeze-image` kept image features "
                           "(default runs/cache/image-features): read instead of running the image tower again.")


def _load_model(path: Path):
    from ..models.runtime import load_model

    console.print(f"loading model {path}")
    return load_model(path)       # an ONNX export (`dashclip export onnx`) runs on ONNX Runtime


def _open_catalog(path: Path):
    from ..data.catalog import Catalog

    return Catalog.open(path)


def _read_queries(path: Path) -> list[str]:
    from ..labeling.queries import read_queries

    return read_queries(path, unique_qids=False)["query"].astype(str).tolist()   # a log repeats its queries


def _split_ids(values: list[str]) -> list[str]:
    """--ids 1 --ids 2 and --ids 1,2 both give ["1", "2"]."""
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


@index_app.command("build")
def build(
    model: Path = MODEL,
    catalog: Path = CATALOG,
    out: Path = typer.Option(..., "--out", "-o", help="Index dir to write (replaced atomically if it is an "
                             "index; a missing or empty dir is fine; any other dir needs --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the contents of a non-empty --out dir "
                                   "that is not a dashclip index, then build there."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Product embeddings of --model "
                                              "(`dashclip embed-catalog`); default: embed into OUT-embeddings."),
    backend: str = typer.Option("faiss", "--backend", help="faiss (embedded) or milvus."),
    factory: Optional[str] = typer.Option(None, "--factory", help="FAISS factory string (e.g. Flat, "
                                          "HNSW32,Flat, IVF1024,PQ32, or PQ128x4fs,RFlat: a compressed scan "
                                          "re-ranked exactly, built in seconds) or Milvus index type (FLAT, "
                                          "HNSW); default: exact below 200,000 products, HNSW above."),
    uri: Optional[str] = typer.Option(None, "--uri", help="Milvus: a cluster URI (http://host:19530, token "
                                      "from $MILVUS_TOKEN) or a Milvus Lite .db file (default OUT/milvus.db)."),
    photo_image_weight: float = typer.Option(PHOTO_IMAGE_WEIGHT, "--photo-image-weight", min=0.0, max=1.0,
                                             help="The photo index (OUT/photo, searched by photo queries) scores "
                                             "(1 - w) cos(photo, product embedding) + w cos(photo, product image)."),
    photo_index: bool = typer.Option(True, "--photo-index/--no-photo-index", help="Also build the photo index "
                                     "(when the model has an image tower and the catalog images)."),
    tune_queries: Optional[Path] = typer.Option(None, "--tune-queries", help="Shoppers' queries (JSONL with "
                                                "'query', CSV/TSV/Parquet with a query column, or one per line): "
                                                "an approximate FAISS index (HNSW above 200,000 products) tunes "
                                                "its search setting to recall@10 0.95 on up to 1,000 of them "
                                                "instead of on noisy copies of product vectors."),
    image_cache: Optional[Path] = IMAGE_CACHE,
    quiet: bool = QUIET,
):
    """Embed the catalog with a model and build a vector index of its products (and its photo index)."""
    import time

    with user_errors():
        if backend not in ("faiss", "milvus"):
            raise UserError(f"--backend {backend!r}: choose faiss or milvus")
        check_out(out, [catalog, model, embeddings], overwrite)  # before the model loads
        if tune_queries is not None and backend != "faiss":
            raise UserError(f"--tune-queries: the faiss backend tunes its search setting; {backend} does not")
        queries = _read_queries(tune_queries) if tune_queries is not None else None
        cat = _open_catalog(catalog)
        net = _load_model(model)
        t0 = time.time()
        index = build_catalog_index(net, model, cat, out, embeddings, backend, factory, uri, quiet, image_cache,
                                    overwrite=overwrite, photo_image_weight=photo_image_weight if photo_index else None,
                                    tune_queries=queries)
    photo = index.meta.get("photo_index")
    with_photo = f" with its photo index (image weight {photo['image_weight']:g})" if photo else ""
    setting = next((k for k in ("ef_search", "k_factor") if f"{k}_tuned_on" in index.meta), None)
    tuned = (f", {setting} {index.meta[setting]} (recall@10 {index.meta[f'{setting}_tuned_recall_at_10']:.3f} on "
             f"{index.meta[f'{setting}_tuned_on']})") if setting else ""
    console.print(f"[green]built[/] {backend} index of {len(index)} products "
                  f"({index.meta.get('factory')}{tuned}, dim {index.dim}) at {out}{with_photo} in "
                  f"{time.time() - t0:.1f} s")


@index_app.command("add")
def add(
    index_dir: Path = typer.Option(..., "--index", help="Index dir (`dashclip index build`)."),
    model: Path = MODEL,
    catalog: Path = CATALOG,
    ids: list[str] = typer.Option([], "--ids", help="Product ids to add (repeatable or comma-separated); "
                                  "default: every catalog product not yet in the index."),
    batch_size: int = typer.Option(64, "--batch-size", help="Products per encoder batch."),
    image_cache: Optional[Path] = IMAGE_CACHE,
    quiet: bool = QUIET,
):
    """Embed catalog products and add them to an index and its photo index (saved atomically)."""
    from ..clihelp import progress
    from . import read_meta

    with user_errors():
        read_meta(index_dir)  # a missing index fails before the model loads
        cat = _open_catalog(catalog)
        net = _load_model(model)
        with progress(disable=quiet) as bar:
            task = bar.add_task("embedding products", total=None)
            added = add_products(index_dir, net, cat, _split_ids(ids) if ids else None, batch_size, image_cache,
                                 progress=lambda n: bar.advance(task, n))
        if not added:
            console.print(f"nothing to add: every product of {catalog} is already in {index_dir}")
            return
        n = read_meta(index_dir)["n"]
    console.print(f"[green]added[/] {len(added)} products; the index at {index_dir} has {n}")


@index_app.command("remove")
def remove(
    index_dir: Path = typer.Option(..., "--index", help="Index dir (`dashclip index build`)."),
    ids: list[str] = typer.Option(..., "--ids", help="Product ids to remove (repeatable or comma-separated)."),
):
    """Remove products from an index and its photo index (saved atomically)."""
    from . import read_meta

    with user_errors():
        wanted = _split_ids(ids)
        if not wanted:
            raise UserError("--ids: give at least one product id")
        remove_products(index_dir, wanted)
        n = read_meta(index_dir)["n"]
    console.print(f"[green]removed[/] {len(wanted)} products; the index at {index_dir} has {n}")


@index_app.command("info")
def info(index_dir: Path = typer.Argument(..., help="Index dir.")):
    """Show an index's metadata, size and attribute fields."""
    from rich.console import Console
    from rich.table import Table

    with user_errors():
        index = open_index(index_dir)
    table = Table(title=str(index_dir), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("products", str(len(index)))
    for key, value in index.meta.items():
        if key not in ("attributes", "n"):
            table.add_row(key, str(value))
    for field in index.fields:
        values = index.attribute_values(field)
        shown = ", ".join(values[:8]) + (f", ... ({len(values)} values)" if len(values) > 8 else "")
        table.add_row(f"filter: {field}", shown)
    Console().print(table)  # stdout: the logs and progress bars go to stderr


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
