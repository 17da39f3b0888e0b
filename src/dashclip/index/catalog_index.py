"""The index of a catalog's product embeddings by a model: `dashclip index build` and the demo both
build through `build_catalog_index` (library code, apart from the CLI module that calls it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..clihelp import UserError, console
from ..io import prepare_output_dir
from .backends import build_index
from .base import KIND, is_index_dir

EMBEDDING_KIND = "fused"  # the product embedding (title grounded in the image)


def catalog_attributes(catalog):
    """The filterable attributes of every product: category + the catalog's attribute columns."""
    columns = ["id"] + [c for c in ("category", *catalog.attributes) if c in catalog.products.columns]
    return catalog.products[list(dict.fromkeys(columns))]


def catalog_embeddings(model, catalog, out: Path, embeddings: Optional[Path], quiet: bool,
                        image_cache: Optional[Path] = None):
    """Product embeddings of `catalog` by `model`: given, reused from a previous build, or computed."""
    from ..io import read_json
    from ..models.embeddings import embed_catalog, load_embeddings

    if embeddings is None:
        embeddings = out.parent / f"{out.name}-embeddings"
        meta_file = embeddings / "meta.json"
        fresh = meta_file.exists() and {k: read_json(meta_file).get(k) for k in ("model_id", "catalog_hash")} \
            == {"model_id": model.model_id, "catalog_hash": catalog.content_hash}
        if fresh:
            console.print(f"reusing product embeddings in {embeddings}")
        else:
            console.print(f"embedding {len(catalog)} products into {embeddings} (resumable)")
            embed_catalog(model, catalog, embeddings, progress=not quiet, image_cache_root=image_cache)
    try:
        emb = load_embeddings(embeddings, model_id=model.model_id, catalog_hash=catalog.content_hash,
                              kind=EMBEDDING_KIND)
    except ValueError as e:
        raise UserError(f"{e} (or leave out --embeddings to embed the catalog with this model)") from None
    return embeddings, emb


def build_catalog_index(model, model_dir: Path, catalog, out: Path, embeddings: Optional[Path] = None,
                        backend: str = "faiss", factory: Optional[str] = None, uri: Optional[str] = None,
                        quiet: bool = False, image_cache: Optional[Path] = None, overwrite: bool = False):
    """The index of `catalog`'s product embeddings by `model` (loaded from `model_dir`), with the metadata
    and catalog attributes search needs: `dashclip index build` and the demo both build through here.

    `out` is checked before any embedding: it may be missing, empty or an index; another dir only with
    `overwrite`; never one of the inputs or a dir that holds one."""
    check_out(out, [catalog.root, model_dir, embeddings], overwrite)
    emb_dir, emb = catalog_embeddings(model, catalog, out, embeddings, quiet, image_cache)
    meta = {"model_id": model.model_id, "model_dir": str(model_dir), "catalog_hash": catalog.content_hash,
            "catalog_dir": str(catalog.root), "embeddings_dir": str(emb_dir), "embedding": EMBEDDING_KIND}
    return build_index(emb.vectors[EMBEDDING_KIND], emb.ids, out, meta=meta, backend=backend,
                       factory=factory, attributes=catalog_attributes(catalog), uri=uri, progress=not quiet,
                       overwrite=overwrite)


def check_out(out: Path, inputs: list, overwrite: bool) -> None:
    """Refuse a bad --out now, before any long work (build_index checks again, then writes)."""
    prepare_output_dir(out, KIND, inputs, overwrite, is_kind=is_index_dir, check_only=True)
