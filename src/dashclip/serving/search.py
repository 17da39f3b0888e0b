"""The one search path: query text -> nearest products, used by `dashclip search`, the HTTP service,
the benchmarks and `dashclip eval`.

    searcher = Searcher.open("runs/model", "runs/index")          # catalog: the one recorded in the index
    hits = searcher.search("red summer dress", k=10, filters={"gender": ["Women"]})
    runs = searcher.search_batch(["red dress", "black heels"], k=100)
    hits = searcher.search_image(photo, k=10)                    # a photo: PIL image or image bytes
    hits = searcher.search_image(photo, text="in red")           # a photo plus words ("this, but in red")
    hits = searcher.search_similar(product_id, k=10)             # more like this product (itself left out)

Photo queries. A photo is encoded by the image tower and the photo head (`model.encode_photo`: the image
embedding for a model without photo alignment). With a photo head, every photo query searches the product
embeddings. Without one, a photo alone searches the
index's photo index, where a product's score is (1 - w) cos(photo, product embedding) + w cos(photo,
product image) (`ranking.photo_vectors`; w recorded in the index): with Stage 1's image -> product term
(`pretrain --image-product-weight`) the photo lands next to its product's embedding, and the image term
finds look-alikes. An index without a photo index (built before there was one, or by a text-only model)
serves photos from the product embeddings alone. Photo plus text searches the product embeddings with
`ranking.mix_photo_and_words`: (1 - IMAGE_TEXT_WEIGHT) * photo + IMAGE_TEXT_WEIGHT * query-encoder(text), each
side in units of the spread of its cosines over a fixed sample of products (`spread_products`), normalised.
With `photo_expansion=m` (default `ranking.PHOTO_EXPANSION`, 0: off) every photo query searches twice: its
vector is moved toward the stored vectors of its first m hits (`ranking.expand_query`, average query
expansion), and that vector finds the results; an index that cannot read its vectors back is searched once.
More like this: the product's own embedding, read back from the index (`VectorIndex.vectors`), else
computed from its catalog record (title and image) as `embed-catalog` does, so every index backend and
every catalog product serves it. benchmarks/photo_search.py measures the choices.

Scores. A vector search hit's `score` is the cosine similarity of the query embedding and the product
embedding (both L2-normalised; higher is better, at most 1). A hybrid hit's `score` is its reciprocal-rank
fusion score, sum over the two ranked lists (vector, BM25) of 1 / (RRF_K + rank), rank starting at 1: at most
2 / 61 ~ 0.0328 (first in both lists), 0 for a product in neither. The two kinds of score are not comparable.
"""
from __future__ import annotations

import re
import threading
import unicodedata
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..data.catalog import is_missing
from ..data.ids import plain_id
from ..index import single_thread_searches
from ..index.backends import search_defaults
from ..ranking import HYBRID_DEPTH, RRF_K, rrf_fuse  # noqa: F401  (RRF_K: also public here)
from ..ranking import PHOTO_EXPANSION, expand_query, mix_photo_and_words, spread_sample_rows

MAX_QUERY_CHARS = 256      # longer queries are refused, not cut: a truncated query is a different query
MAX_K = 1000               # the service bounds k further (MAX_K_HTTP in service.py)
ENCODE_BATCH = 64          # queries per encoder call in search_batch
# Photo + text: the text's share of the query vector (benchmarks/photo_search.py: the weight sweep).
IMAGE_TEXT_WEIGHT = 0.5

_SPACES = re.compile(r"\s+")


@dataclass
class Hit:
    """One search result. `image` is the catalog-relative image path (None when the product has none)."""

    id: Any
    title: str
    category: str | None
    score: float
    rank: int
    image: str | None = None
    attributes: dict[str, str | None] = field(default_factory=dict)
    rerank_score: float | None = None   # the re-ranker's expected grade (0..2) when it re-ranked this hit

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_query(query: Any) -> str:
    """Trim, fold Unicode compatibility forms, drop control characters and collapse whitespace.

    Raises ValueError for a non-string, an empty query, or one longer than MAX_QUERY_CHARS."""
    if not isinstance(query, str):
        raise ValueError(f"query must be a string, got {type(query).__name__}")
    text = unicodedata.normalize("NFKC", query)
    text = "".join(" " if unicodedata.category(ch).startswith(("C", "Z")) else ch for ch in text)
    text = _SPACES.sub(" ", text).strip()
    if not text:
        raise ValueError("query is empty: type a few words, e.g. 'red summer dress'")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return text


def parse_filter_args(args: Iterable[str], separators: str = "=:") -> dict[str, list[str]]:
    """["gender=Women", "gender=Men", "season:Summer"] -> {"gender": ["Women", "Men"], "season": ["Summer"]}.

    The first of `separators` found in each argument splits field from value. A value may contain the
    separator ("usage=Smart Casual: Office" keeps "Smart Casual: Office")."""
    out: dict[str, list[str]] = {}
    for arg in args:
        cut = min((i for i in (str(arg).find(s) for s in separators) if i >= 0), default=-1)
        field_name, value = (str(arg)[:cut].strip(), str(arg)[cut + 1:].strip()) if cut >= 0 else ("", "")
        if cut < 0 or not field_name or not value:
            want = " or ".join(f"field{s}value" for s in separators)
            raise ValueError(f"filter {arg!r} is not {want} (e.g. gender{separators[0]}Women)")
        values = out.setdefault(field_name, [])
        if value not in values:
            values.append(value)
    return out


def _attribute_strings(values: pd.Series) -> pd.Series:
    """Attribute values as the index stores them: strings, None where missing."""
    return pd.Series([None if is_missing(v) else str(v)
                      for v in values], index=values.index, dtype=object)


class Searcher:
    """Query text -> ranked products, with attribute filters and optional hybrid (BM25 + vector) ranking.

    `model` encodes queries (`encode_query`), `index` is a `dashclip.index.VectorIndex` of the product
    embeddings of that model, `catalog` a `dashclip.data.catalog.Catalog` that gives titles, categories
    and images. Safe to call from several threads at once (the service does)."""

    def __init__(self, model, index, catalog, model_id: str | None = None, encoder: "QueryBatcher | None" = None,
                 reranker=None, photo_index=None, photo_expansion: int = PHOTO_EXPANSION):
        self.model, self.index, self.catalog = model, index, catalog
        # m >= 1: photo queries search twice, the photo's vector moved toward the stored vectors of its
        # first m hits (ranking.expand_query), then the search the shopper sees; 0: once
        self.photo_expansion = int(photo_expansion)
        # photos alone search the photo index (index.catalog_index): the product embedding mixed with the
        # product image's; photo + words search the main index, as words do
        self.photo_index = photo_index
        # optional: a cross-encoder over the top products of each words query (labeling.rerank); on by default
        # when given (rerank=False asks for the first stage alone)
        self.reranker = reranker
        # A searcher never trains: eval mode once, here, and never switched per call (threads share it).
        if callable(getattr(model, "eval", None)):
            model.eval()
        self.encoder = encoder  # optional: encodes queries of concurrent callers together (the service)
        self.model_id = model_id or model.model_id  # a hash of every weight: computed once
        self.fields = list(index.fields)
        # hybrid=None means what the index records (the pipeline chooses it on its evaluation grades)
        self.default_hybrid = bool(search_defaults(index.meta).get("hybrid", False))
        # The catalog's own name for its category column (e.g. articleType) works as a filter field too.
        source = (catalog.manifest.get("mapping") or {}).get("category")
        self.aliases = {source: "category"} if source and "category" in self.fields and source not in self.fields \
            else {}
        self._value_lookup: dict[str, dict[str, str]] = {}
        self._bm25 = None
        self._bm25_rows: np.ndarray | None = None      # catalog row of each BM25 document
        self._bm25_attrs: pd.DataFrame | None = None   # attribute strings of each BM25 document
        self._lock = threading.Lock()
        self._spread_products: np.ndarray | None = None   # made on the first photo + words query
        # One plain dict per catalog row: turning hits into results must not cost a DataFrame lookup each.
        self._records = catalog.products.to_dict("records")

    @classmethod
    def open(cls, model_dir: str | Path, index_dir: str | Path, catalog_dir: str | Path | None = None,
             model=None, backend: str = "auto", reranker: str | Path | None = None,
             rerank_depth: int | None = None, photo_expansion: int = PHOTO_EXPANSION) -> "Searcher":
        """Load a model dir, open the index built with it (another model's index is a ValueError) and its
        catalog (`catalog_dir`, else the `catalog_dir` recorded in the index's meta.json). An already
        loaded `model` skips loading `model_dir`. `backend`: torch, onnx (an export, `dashclip export onnx`)
        or auto (onnx for an export, `models.runtime.load_model`). The re-ranker: `reranker` (a cross-encoder
        labeler dir) or the model dir's own `reranker/` (`labeling.rerank.model_reranker`)."""
        from ..data.catalog import Catalog
        from ..index import open_index, read_meta
        from ..index.catalog_index import open_photo_index
        from ..labeling.rerank import model_reranker

        read_meta(index_dir)  # a missing or broken index fails before the model loads
        if model is None:
            from ..models.runtime import load_model
            model = load_model(model_dir, backend)
        model_id = model.model_id
        index = open_index(index_dir, model_id=model_id)
        catalog = Catalog.open(resolve_catalog_dir(index.meta, catalog_dir, index_dir))
        return cls(model, index, catalog, model_id, reranker=model_reranker(model_dir, reranker, rerank_depth),
                   photo_index=open_photo_index(index, model_id), photo_expansion=photo_expansion)

    def with_index(self, index, catalog=None, photo_index=None) -> "Searcher":
        """A new Searcher over another index (e.g. a rebuilt one, with its photo index), sharing this one's
        model."""
        return Searcher(self.model, index, catalog if catalog is not None else self.catalog, self.model_id,
                        self.encoder, self.reranker, photo_index, self.photo_expansion)

    # ------------------------------------------------------------------ filters
    def filter_values(self, field_name: str) -> list[str]:
        """The values a filter on `field_name` can take (from the live products of the index)."""
        return list(self._lookup(field_name).values())

    def _lookup(self, field_name: str) -> dict[str, str]:
        field_name = self.aliases.get(field_name, field_name)
        if field_name not in self.fields:
            known = ", ".join(self.fields) or "none"
            raise ValueError(f"unknown filter field {field_name!r}; this index has: {known}")
        lookup = self._value_lookup.get(field_name)
        if lookup is None:
            lookup = {v.casefold(): v for v in self.index.attribute_values(field_name)}
            self._value_lookup[field_name] = lookup
        return lookup

    def check_filters(self, filters: dict[str, Sequence[str]] | None) -> dict[str, list[str]]:
        """Validate filters against the index: an unknown field or value is a ValueError that lists the
        valid ones. Values match case-insensitively and come back spelled as in the catalog."""
        if not filters:
            return {}
        out: dict[str, list[str]] = {}
        for field_name, values in filters.items():
            lookup = self._lookup(field_name)
            field_name = self.aliases.get(field_name, field_name)
            if isinstance(values, (str, int, float)):
                values = [values]
            if not values:
                raise ValueError(f"filter {field_name!r} has no values")
            for value in values:
                canonical = lookup.get(str(value).strip().casefold())
                if canonical is None:
                    shown = ", ".join(list(lookup.values())[:12]) + (" ..." if len(lookup) > 12 else "")
                    raise ValueError(f"unknown value {str(value)!r} for filter {field_name!r}; "
                                     f"values: {shown or 'none'}")
                if canonical not in out.setdefault(field_name, []):
                    out[field_name].append(canonical)
        return out

    # ------------------------------------------------------------------ search
    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """Normalised queries -> float32 [Q, D] query embeddings, encoded ENCODE_BATCH at a time."""
        encode = self.encoder.encode if self.encoder is not None else self.encode_now
        parts = [encode(list(queries[i:i + ENCODE_BATCH])) for i in range(0, len(queries), ENCODE_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, self.index.dim), dtype=np.float32)

    def vector_search(self, texts: list[str], k: int, filters: dict[str, list[str]] | None = None):
        """Normalised queries -> the index's (ids per query, scores) for their embeddings; with a QueryBatcher,
        searched together with concurrent callers' queries."""
        if self.encoder is not None:
            return self.encoder.search(self.index, texts, k, filters or None)
        return self.index.search(self.encode(texts), k, filters or None)

    def encode_now(self, texts: list[str]) -> np.ndarray:
        """One model call on this thread (what `encode` does without a QueryBatcher)."""
        from ..models.model import to_numpy

        return to_numpy(self.model.encode_query(texts))

    def search(self, query: str, k: int = 10, filters: dict[str, Sequence[str]] | None = None,
               hybrid: bool | None = None, rerank: bool | None = None) -> list[Hit]:
        """The top-k products for one query, best first."""
        return self.search_batch([query], k=k, filters=filters, hybrid=hybrid, rerank=rerank)[0]

    @property
    def default_rerank(self) -> bool:
        return self.reranker is not None

    def search_batch(self, queries: Sequence[str], k: int = 10, filters: dict[str, Sequence[str]] | None = None,
                     hybrid: bool | None = None, rerank: bool | None = None, progress=None) -> list[list[Hit]]:
        """The top-k products for each query, best first. `hybrid`: fuse BM25 with the vector ranking (None:
        the index's recorded default, `default_hybrid`). `rerank`: re-order the first stage's top
        `reranker.depth` with the cross-encoder (None: when the searcher has one). `progress(n_done)` is
        called after each batch."""
        k = _check_k(k)
        hybrid = self.default_hybrid if hybrid is None else bool(hybrid)
        rerank = self.default_rerank if rerank is None else bool(rerank)
        if rerank and self.reranker is None:
            raise ValueError("no re-ranker: this model dir has no reranker/ (give one with --reranker DIR)")
        texts = []
        for i, q in enumerate(queries):
            try:
                texts.append(normalise_query(q))
            except ValueError as e:
                raise ValueError(f"query {i + 1}: {e}" if len(queries) > 1 else str(e)) from None
        filters = self.check_filters(filters)
        wanted = max(k, self.reranker.depth) if rerank else k      # what the first stage must return
        depth = max(wanted, HYBRID_DEPTH) if hybrid else wanted
        results: list[list[Hit]] = []
        for start in range(0, len(texts), ENCODE_BATCH):
            chunk = texts[start:start + ENCODE_BATCH]
            ids, scores = self.vector_search(chunk, depth, filters)
            firsts = []
            for j, text in enumerate(chunk):
                row_ids = list(ids[j])
                row_scores = [float(s) for s in scores[j][:len(row_ids)]]
                if hybrid:     # BM25 reads the query as the encoder does, misspellings corrected
                    correct = getattr(self.model, "correct_queries", None)
                    keyword_text = correct([text])[0] if correct is not None else text
                    row_ids, row_scores = self._fuse(keyword_text, row_ids, depth, filters)
                firsts.append((row_ids[:wanted], row_scores[:wanted]))
            if rerank:
                reranked = self.reranker.rerank_batch(self.catalog, chunk, [f[0] for f in firsts])
                for (row_ids, row_scores), (order, grades) in zip(firsts, reranked):
                    first_score = dict(zip(row_ids, row_scores))
                    hits = self._hits(order, [first_score[p] for p in order], k)
                    for h, g in zip(hits, grades):
                        h.rerank_score = round(float(g), 6)
                    results.append(hits)
            else:
                results.extend(self._hits(row_ids, row_scores, k) for row_ids, row_scores in firsts)
            if progress is not None:
                progress(len(chunk))
        return results

    # ------------------------------------------------------------------ photos and "more like this"
    def search_image(self, image, k: int = 10, filters: dict[str, Sequence[str]] | None = None,
                     text: str | None = None) -> list[Hit]:
        """The top-k products for a photo (a PIL image, or the bytes of an image file, checked as
        `data.images.decode_image` checks every image), optionally with words that refine it ("in red")."""
        return self.search_image_batch([image], k=k, filters=filters, texts=[text])[0]

    def search_image_batch(self, images: Sequence, k: int = 10, filters: dict[str, Sequence[str]] | None = None,
                           texts: Sequence[str | None] | None = None, progress=None) -> list[list[Hit]]:
        """The top-k products for each photo, best first; `texts[i]` (None: none) refines photo i."""
        k = _check_k(k)
        texts = list(texts) if texts is not None else [None] * len(images)
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        prefix = (lambda i: f"query {i + 1}: ") if len(images) > 1 else (lambda i: "")
        words = []
        for i, t in enumerate(texts):
            try:
                words.append(None if t is None or (isinstance(t, str) and not t.strip()) else normalise_query(t))
            except ValueError as e:
                raise ValueError(f"{prefix(i)}{e}") from None
        filters = self.check_filters(filters)
        results: list[list[Hit]] = []
        for start in range(0, len(images), ENCODE_BATCH):
            chunk = [as_image(im, f"{prefix(start + j)}image") for j, im in enumerate(images[start:start + ENCODE_BATCH])]
            chunk_words = words[start:start + ENCODE_BATCH]
            vectors = self.encode_images(chunk, chunk_words)
            found = [None] * len(chunk)
            for index, rows in self._photo_routes(chunk_words):
                ids, scores = index.search(self._expanded(index, vectors[rows], filters), k, filters or None)
                for j, r in enumerate(rows):
                    found[r] = self._hits(list(ids[j]), [float(s) for s in scores[j]], k)
            results.extend(found)
            if progress is not None:
                progress(len(chunk))
        return results

    def _photo_routes(self, words: list) -> list[tuple[Any, list[int]]]:
        """Which index answers each photo query: the photo index for a photo alone, the main index for a
        photo with words, and for every photo when there is no photo index or the model has a photo head
        (trained to land a photo on its product's embedding, it finds the articleType better against the
        product embeddings alone than against the photo index's mix: photo_search.md)."""
        alone = [i for i, w in enumerate(words) if not w]
        with_words = [i for i, w in enumerate(words) if w]
        if self.photo_index is None or getattr(self.model, "has_photo_encoder", False):
            return [(self.index, alone + with_words)]
        return [(ix, rows) for ix, rows in ((self.photo_index, alone), (self.index, with_words)) if rows]

    def _expanded(self, index, queries: np.ndarray, filters: dict) -> np.ndarray:
        """Photo query vectors moved toward the stored vectors of their first `photo_expansion` hits in
        `index` (`ranking.expand_query`); as they are where the index cannot read its vectors back."""
        m = self.photo_expansion
        if m < 1:
            return queries
        ids, scores = index.search(queries, m, filters or None)
        try:
            stored = index.vectors([p for row in ids for p in row])
        except KeyError:        # a product removed between the two calls: search from the photo alone
            return queries
        if stored is None:
            return queries
        hits = np.zeros((len(queries), scores.shape[1], index.dim), dtype=np.float32)
        weights = np.full(scores.shape, -np.inf, dtype=np.float32)   # fewer hits than m: the rest adds nothing
        at = 0
        for i, row in enumerate(ids):
            hits[i, :len(row)], weights[i, :len(row)] = stored[at:at + len(row)], scores[i, :len(row)]
            at += len(row)
        return expand_query(queries, hits, weights)

    def encode_images(self, images: list, texts: Sequence[str | None] | None = None) -> np.ndarray:
        """Photo queries -> float32 [Q, D] unit vectors: the photo embedding, mixed with the query
        encoder's embedding of `texts[i]` where one is given (`ranking.mix_photo_and_words`, IMAGE_TEXT_WEIGHT)."""
        from ..models.model import to_numpy

        vectors = to_numpy(self.model.encode_photo(images))
        with_text = [i for i, t in enumerate(texts or []) if t]
        if with_text:
            words = self.encode([texts[i] for i in with_text])
            vectors[with_text] = mix_photo_and_words(vectors[with_text], words, self.spread_products(),
                                                     IMAGE_TEXT_WEIGHT)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def search_similar(self, product_id, k: int = 10, filters: dict[str, Sequence[str]] | None = None) -> list[Hit]:
        """More like this: the top-k other products nearest to product `product_id`'s embedding. An unknown
        id is a KeyError; the product need not be in the index, only in the catalog."""
        k = _check_k(k)
        filters = self.check_filters(filters)
        row = self.catalog.row_of.get(self.catalog.coerce_id(product_id))
        if row is None:
            raise KeyError(f"unknown product id {product_id!r}")
        pid = plain_id(self.catalog.products["id"].iat[row])
        # the vector the index holds, where it can read it back (no image to decode, no tower to run)
        try:
            vector = self.index.vectors([pid])
        except KeyError:        # not in the index (or removed meanwhile): made from its catalog record
            vector = None
        if vector is None:
            vector = self.product_vectors(np.array([row]))
        ids, scores = self.index.search(vector, k + 1, filters or None)
        keep = [(p, float(s)) for p, s in zip(ids[0], scores[0]) if plain_id(p) != pid][:k]
        return self._hits([p for p, _ in keep], [s for _, s in keep], k)

    def spread_products(self) -> np.ndarray:
        """The product embeddings of a fixed sample of the catalog (`ranking.spread_sample_rows`), on which
        photo + words queries measure each side's spread; made once, on first use (256 products: 5.6 s
        for the demo model in torch on 2 CPU cores)."""
        with self._lock:
            if self._spread_products is None:
                self._spread_products = self.product_vectors(spread_sample_rows(len(self.catalog.products)))
            return self._spread_products

    def product_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The product embeddings of catalog `rows`, made from their catalog records (title and image, a
        white stand-in when unreadable) as `embed-catalog` makes them for the index."""
        from ..models.embeddings import embed_batches

        rows = np.asarray(rows)
        # only the rows asked for: the whole catalog's texts would cost ~1 s per request on 44K products
        texts = dict(zip(rows.tolist(), self.catalog.product_texts(rows)))
        out = np.zeros((len(rows), self.index.dim), dtype=np.float32)
        for batch, vecs, _ in embed_batches(self.model, self.catalog, texts, rows, kinds=("fused",)):
            out[batch] = vecs["fused"]
        return out

    def _hits(self, row_ids: list, row_scores: list[float], k: int) -> list[Hit]:
        return [self._hit(pid, score, rank) for rank, (pid, score) in enumerate(zip(row_ids[:k], row_scores[:k]), 1)]

    # ------------------------------------------------------------------ hybrid
    def _fuse(self, query: str, vector_ids: list, depth: int, filters: dict) -> tuple[list, list[float]]:
        return rrf_fuse(vector_ids, self.bm25_search(query, depth, filters))

    def bm25_search(self, query: str, k: int, filters: dict[str, list[str]] | None = None) -> list:
        """Product ids of the BM25 top-k over the catalog texts of the indexed products, filters applied."""
        bm25 = self.keyword_index()
        allowed = np.ones(bm25.n, dtype=bool)
        for field_name, values in (filters or {}).items():
            allowed &= self._bm25_attrs[field_name].isin(values).to_numpy()
        rows, scores = bm25.search(query, k, allowed)
        rows = rows[scores > 0]  # a product that shares no word with the query is not a keyword match
        pid_column = self.catalog.products["id"]
        return [plain_id(pid_column.iat[self._bm25_rows[r]]) for r in rows]

    @property
    def has_keyword_index(self) -> bool:
        return self._bm25 is not None

    def keyword_index(self):
        """BM25 over `catalog.product_texts()` of the products in the index, built on first use."""
        with self._lock:
            if self._bm25 is None:
                from ..text import BM25

                live = {self.index.key(pid) for pid in self.index.ids}
                pids = [self.index.key(plain_id(p)) for p in self.catalog.products["id"].tolist()]
                rows = np.array([i for i, pid in enumerate(pids) if pid in live], dtype=np.int64)
                texts = self.catalog.product_texts()
                attrs = pd.DataFrame(index=range(len(rows)))
                for field_name in self.fields:
                    if field_name not in self.catalog.products.columns:
                        raise ValueError(f"hybrid search: the catalog {self.catalog.root} has no column "
                                         f"{field_name!r} that the index filters on; rebuild the index")
                    column = self.catalog.products[field_name].iloc[rows].reset_index(drop=True)
                    attrs[field_name] = _attribute_strings(column)
                self._bm25_attrs, self._bm25_rows = attrs, rows
                self._bm25 = BM25([texts[i] for i in rows])
            return self._bm25

    # ------------------------------------------------------------------ results
    def _hit(self, pid, score: float, rank: int) -> Hit:
        pid = plain_id(pid)
        row = self.catalog.row_of.get(pid)  # index ids are the catalog's ids, same type
        if row is None:  # indexed but no longer in the catalog: still a result, with what the index knows
            attrs = self.index.attributes_of(pid)
            return Hit(pid, str(pid), attrs.get("category"), score, rank, None,
                       {k: v for k, v in attrs.items() if k != "category"})
        product = self._records[row]
        return Hit(id=pid, title=str(product["title"]), category=_text_or_none(product.get("category")),
                   score=float(score), rank=rank, image=_text_or_none(product.get("image")),
                   attributes={a: _text_or_none(product.get(a)) for a in self.catalog.attributes
                               if a in product})


class QueryBatcher:
    """Encodes the queries of concurrent callers in one model call, and searches their vectors in one index
    call (the service's request threads).

    Two worker threads, a pipeline: the encoder thread owns the model, the search thread the index calls. A
    caller queues its texts and waits; the encoder takes everything queued so far (up to `max_batch` texts)
    and encodes it at once, then hands the batch's searches to the search thread and goes on to the next
    batch. Nothing waits on purpose: while one batch is being encoded the next one gathers, so a lone
    request is encoded alone and a busy server encodes in batches, which costs far less per query on a CPU.
    The search thread searches a batch's vectors together, one index call per (index, depth, filters), and
    runs FAISS on itself alone (`index.single_thread_searches`); on one thread FAISS's exact scan costs the same
    per query in a call of 1 or 8, so sharing the call saves calls, not scanning. A query's near-ties may come
    out in another order than when it is searched alone (FAISS scans 4 queries at a time with another kernel;
    README, "Fast CPU serving"). With one worker doing both in turn, a busy service was bound by that one
    thread; as a pipeline, batch n's index search runs while batch n+1 is encoded (README, "Fast CPU
    serving", for the A/B)."""

    def __init__(self, encode_fn: Callable[[list[str]], np.ndarray], max_batch: int = ENCODE_BATCH):
        import queue

        self.encode_fn, self.max_batch = encode_fn, max_batch
        self.batches = 0          # model calls so far (for tests and stats)
        self.index_calls = 0      # index searches so far (for tests and stats)
        self._queue: "queue.Queue" = queue.Queue()
        self._searches: "queue.Queue" = queue.Queue()   # encoded batches' searches, in the order encoded
        self._encode_thread = threading.Thread(target=self._run, name="dashclip-query-encoder", daemon=True)
        self._encode_thread.start()
        self._search_thread = threading.Thread(target=self._run_searches, name="dashclip-index-search",
                                               daemon=True)
        self._search_thread.start()

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), D] query vectors."""
        return self._submit(texts, None)

    def search(self, index, texts: list[str], k: int, filters: dict[str, list[str]] | None = None):
        """`index.search` of the texts' vectors: (ids per query, scores)."""
        return self._submit(texts, (index, int(k), filters or None))

    def _submit(self, texts: list[str], search):
        from concurrent.futures import Future

        future: Future = Future()
        self._queue.put((list(texts), future, search))
        return future.result()

    def _run(self) -> None:
        import queue

        while True:
            first = self._queue.get()
            jobs, n = [first], len(first[0])
            while n < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                n += len(job[0])
            try:
                vectors = self.encode_fn([t for texts, _, _ in jobs for t in texts])
                self.batches += 1
            except BaseException as e:  # every waiting caller gets the error, and the worker goes on
                for _, future, _ in jobs:
                    future.set_exception(e)
                continue
            groups: dict[tuple, list] = {}
            start = 0
            for texts, future, search in jobs:
                part = vectors[start:start + len(texts)]
                start += len(texts)
                if search is None:
                    future.set_result(part)
                else:
                    index, k, filters = search
                    key = (id(index), k, tuple(sorted((f, tuple(v)) for f, v in (filters or {}).items())))
                    groups.setdefault(key, []).append((part, future, search))
            if groups:
                self._searches.put(list(groups.values()))

    def _run_searches(self) -> None:
        single_thread_searches()     # this thread makes the service's index calls (see that function)
        while True:
            for members in self._searches.get():
                self._search_group(members)

    def _search_group(self, members: list) -> None:
        index, k, filters = members[0][2]
        try:
            ids, scores = index.search(np.concatenate([part for part, _, _ in members]), k, filters)
            self.index_calls += 1
        except BaseException as e:
            for _, future, _ in members:
                future.set_exception(e)
            return
        start = 0
        for part, future, _ in members:
            future.set_result((ids[start:start + len(part)], scores[start:start + len(part)]))
            start += len(part)


def resolve_catalog_dir(meta: dict, catalog_dir: str | Path | None, index_dir: str | Path) -> Path:
    """The catalog to show results from: the one given, else the one the index was built from."""
    if catalog_dir is not None:
        path = Path(catalog_dir)
    elif meta.get("catalog_dir"):
        from ..index.base import meta_path

        path = meta_path(meta, "catalog_dir", index_dir)  # relative to the index dir: any working dir works
    else:
        raise ValueError(f"{index_dir}: the index does not record its catalog (no catalog_dir in meta.json); "
                         f"give the catalog dir with --catalog")
    catalog_hash = meta.get("catalog_hash")
    manifest = path / "manifest.json"
    if catalog_hash and manifest.exists():
        from ..io import read_json
        found = read_json(manifest).get("content_hash")
        if found and found != catalog_hash:
            warnings.warn(f"{path}: catalog content hash {found} differs from the one the index at {index_dir} "
                          f"was built from ({catalog_hash}); titles and images may not match the vectors",
                          stacklevel=2)
    return path


def as_image(image, what: str = "image"):
    """A photo query as an RGB PIL image: a PIL image as it is (converted to RGB), or image-file bytes
    decoded by `data.images.decode_query_image` (safe formats only, at most 10 MB and 40 megapixels, bombs
    refused before decoding, truncated files found). Anything else is a ValueError; bytes that are no usable
    image an ImageError (a ValueError whose `kind` says why)."""
    from PIL import Image

    from ..data.images import decode_query_image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_query_image(bytes(image), what)
    raise ValueError(f"{what} must be a PIL image or the bytes of an image file, got {type(image).__name__}")


def _check_k(k: Any) -> int:
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise ValueError(f"k must be a whole number, got {k!r}") from None
    if k_int != k or not 1 <= k_int <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k!r}")
    return k_int


def _text_or_none(value) -> str | None:
    if is_missing(value):
        return None
    return str(value)
