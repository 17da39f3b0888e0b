"""The HTTP service: search, products, images and a web page, over one `Searcher`.

    app = create_app(model_dir="runs/model", index_dir="runs/index")   # or create_app(searcher)
    uvicorn.run(app, host="127.0.0.1", port=8000)                       # `dashclip serve` does this

Endpoints (OpenAPI schema at /openapi.json, docs at /docs):
    GET /                        the web page (serving/static, no CDN)
    GET /search?q=&k=&filter=field:value&hybrid=   ranked products
    POST /search/image?q=&k=&filter=   search by photo: multipart/form-data with a file field `image`
                                 (at most 10 MB and 40 megapixels), optional words `q` ("in red")
    GET /products/{id}/similar?k=&filter=          more like this product (itself left out)
    GET /products/{id}           one product (the id percent-encoded as one path segment: AB%2F123)
    GET /products/{id}/image     its image, from the catalog's own record (never a path from the request)
    GET /filters                 every filter field and its values (the page's chips)
    GET /healthz                 model id, index size, when the index was built; 503 after a failed reload

Input limits: q is 1..256 characters, 1 <= k <= 100, at most 32 filters, no request body; an empty query, a
bad filter or an unknown id is a 4xx whose `detail` says what is wrong (a 422 echoes at most 200 characters
of the input). The one request body accepted is the photo of POST /search/image: read into memory up to
its limit (never to disk), its file name ignored; an oversized, non-image, truncated or bomb upload is a
413 / 415 / 400 naming the problem (see uploads.py). Optional API key (`api_key`: clients send `X-API-Key`; /, /static, /healthz and the docs stay
open) and CORS origins (`cors_origins`; none by default). Per-client rate limits belong in a reverse proxy. Hot swap: a background thread watches the index dir's meta.json; when
the index is rebuilt it loads the new one next to the old and swaps the reference in one assignment, so
requests keep being answered by the old index until the new one is ready.
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..index import single_thread_searches
from .search import MAX_QUERY_CHARS, QueryBatcher, Searcher, normalise_query, parse_filter_args

log = logging.getLogger("dashclip.serving")

MAX_K_HTTP = 100
MAX_FILTERS = 32            # filter parameters per request
STATIC_DIR = Path(__file__).parent / "static"
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
WATCH_SECONDS = 2.0
MAX_ECHO_CHARS = 200        # of a bad input echoed back in a 422
MAX_BODY_BYTES = 0          # every endpoint but the photo upload is a GET: a request body is refused (413)
UPLOAD_PATH = "/search/image"
# ImageError kinds of a bad upload -> HTTP status: too big is 413, not an image 415, broken 400.
UPLOAD_STATUS = {"too_large": 413, "decompression_bomb": 413, "not_an_image": 415}
API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "DASHCLIP_API_KEY"


# ---------------------------------------------------------------------------------------------- schema
class Problem(BaseModel):
    detail: str = Field(description="What is wrong with the request, in words.")


class Result(BaseModel):
    id: Union[int, str]
    title: str
    category: Optional[str] = None
    score: float = Field(description="Cosine similarity (vector search) or reciprocal-rank-fusion score "
                                     "(hybrid); see dashclip.serving.search.")
    rank: int
    image_url: Optional[str] = Field(None, description="Relative URL of the product image; null when none.")
    attributes: dict[str, Optional[str]] = {}
    rerank_score: Optional[float] = Field(None, description="The re-ranker's expected grade (0..2) when it "
                                                            "re-ranked this result; null otherwise.")


class SearchResponse(BaseModel):
    query: str = Field(description="The query as searched (trimmed, whitespace collapsed).")
    k: int
    hybrid: bool
    filters: dict[str, list[str]]
    reranked: bool = Field(False, description="Whether the re-ranker re-ordered the top results.")
    results: list[Result]
    took_ms: float


class ImageSearchResponse(BaseModel):
    query: Optional[str] = Field(None, description="The words that refined the photo, as searched; null: none.")
    image: dict = Field(description="The photo as decoded: width, height (after downscaling to 1024 px).")
    k: int
    filters: dict[str, list[str]]
    results: list[Result]
    took_ms: float


class SimilarResponse(BaseModel):
    product_id: Union[int, str] = Field(description="The product whose look-alikes these are (not among them).")
    k: int
    filters: dict[str, list[str]]
    results: list[Result]
    took_ms: float


class Product(BaseModel):
    id: Union[int, str]
    title: str
    category: Optional[str] = None
    text: Optional[str] = None
    image_url: Optional[str] = None
    attributes: dict[str, Optional[str]] = {}
    in_index: bool = Field(description="Whether the product can be found by search right now.")


class Health(BaseModel):
    status: str
    model_id: str
    index_size: int
    index_built_at: Optional[str] = None
    index_updated_at: Optional[str] = None
    index_backend: Optional[str] = None
    index_generation: int = Field(description="How many times the index was swapped since start (0 = none).")
    catalog: str
    error: Optional[str] = Field(None, description="Why the last reload of a changed index failed (status "
                                                   "'degraded', HTTP 503; the previous index is still served).")


ERRORS = {400: {"model": Problem, "description": "Bad input (empty query, bad filter, ...)"},
          401: {"model": Problem, "description": "Missing or wrong API key (only when the service has one)"},
          404: {"model": Problem, "description": "No such product or image"}}


def product_path(pid) -> str:
    """The URL path of a product: its id percent-encoded as one segment ("/" -> %2F, "%" -> %25, ...)."""
    return f"/products/{quote(str(pid), safe='')}"


PRODUCT_ACTIONS = ("image", "similar")   # /products/{id}/image, /products/{id}/similar


def _product_request(request: Request) -> tuple[str, str | None]:
    """(product id, the action asked for: "image", "similar" or None for the product) from the raw path.

    The decoded path cannot tell `/products/a%2Fimage` (product "a/image") from `/products/a/image` (the
    image of "a"); the raw path can: only a literal "/" separates segments."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.url.path, safe="/")
    rest = path.split("/products/", 1)[1] if "/products/" in path else ""
    action = next((a for a in PRODUCT_ACTIONS if rest.endswith("/" + a)), None)
    if action:
        rest = rest[:-len(action) - 1]
    return unquote(rest, errors="strict"), action


def _truncate(value, limit: int = MAX_ECHO_CHARS):
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"... ({len(value)} characters)"
    if isinstance(value, (list, tuple)):
        return [_truncate(v, limit) for v in value[:10]]
    if isinstance(value, dict):
        return {k: _truncate(v, limit) for k, v in list(value.items())[:10]}
    return value


# ---------------------------------------------------------------------------------------------- hot swap
class SearcherHolder:
    """Holds the current Searcher and replaces it when the index dir is rebuilt.

    `current` is read once per request; a swap is one reference assignment, so a request sees the old
    searcher or the new one, never a half-loaded one. Loading happens in a background thread."""

    def __init__(self, searcher: Searcher, index_dir: Path | None, catalog_dir: Path | None = None,
                 watch_seconds: float = WATCH_SECONDS):
        self.current = searcher
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.catalog_dir = catalog_dir  # as given by the user; else the one each index records
        self.watch_seconds = watch_seconds
        self.generation = 0
        self.last_error: str | None = None
        self._seen = self._stamp()
        self._loading = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stamp(self) -> bytes | None:
        """meta.json's bytes: every build and every add/remove rewrites it (built_at / updated_at, n)."""
        if self.index_dir is None:
            return None
        try:
            return (self.index_dir / "meta.json").read_bytes()
        except OSError:  # mid-swap of the dir, or being rebuilt: look again next time
            return None

    def poll(self) -> threading.Thread | None:
        """If meta.json changed, start loading the new index in a background thread (returned)."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen or self._loading.locked():
            return None
        thread = threading.Thread(target=self._reload, args=(stamp,), name="dashclip-index-reload", daemon=True)
        thread.start()
        return thread

    def _reload(self, stamp: bytes) -> None:
        from ..data.catalog import Catalog
        from ..index import open_index
        from ..index.catalog_index import open_photo_index
        from .search import resolve_catalog_dir

        with self._loading:
            old = self.current
            try:
                index = open_index(self.index_dir, model_id=old.model_id)
                catalog = old.catalog
                if index.meta.get("catalog_hash") != old.index.meta.get("catalog_hash") or \
                        (self.catalog_dir is None and index.meta.get("catalog_dir") != old.index.meta.get("catalog_dir")):
                    catalog = Catalog.open(resolve_catalog_dir(index.meta, self.catalog_dir, self.index_dir))
                new = old.with_index(index, catalog, open_photo_index(index, old.model_id))
                if old.has_keyword_index or new.default_hybrid:  # hybrid in use: BM25 now, not in a request
                    new.keyword_index()
            except Exception as e:  # a broken or other-model index must not take the service down
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("index at %s changed but could not be loaded, still serving the previous one: %s",
                          self.index_dir, self.last_error)
                self._seen = stamp  # don't retry the same broken build in a loop
                return
            self.current = new   # the swap
            self.generation += 1
            self.last_error = None
            self._seen = stamp
            log.info("swapped to the index at %s (%d products, built %s)", self.index_dir, len(index),
                     index.meta.get("built_at"))

    def start(self) -> None:
        if self.index_dir is None or self.watch_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="dashclip-index-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_seconds):
            thread = self.poll()
            if thread is not None:
                thread.join()


# ---------------------------------------------------------------------------------------------- the app
class RefuseBodies:
    """Every endpoint but the photo upload is a GET: a request that carries a body is a 413 before routing.
    A plain ASGI middleware, since Starlette's `@app.middleware("http")` wraps every request and response in
    extra tasks and streams: with the query encoder stubbed out (index search and HTTP only, 2 cores,
    2026-12-06) concurrency 8 went from 157-160 to 169-181 requests/s with this and `ModelJSON` together (an ad-hoc
    A/B, 2 runs each; README, ONNX serving)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and not (
                scope["method"] == "POST" and Request(scope).url.path == UPLOAD_PATH):  # its handler reads it, bounded
            headers = dict(scope["headers"])
            if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
                refused = JSONResponse({"detail": f"request bodies are not accepted (limit {MAX_BODY_BYTES} "
                                                  f"bytes); every endpoint is a GET"}, status_code=413)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ModelJSON(Response):
    """A pydantic model as JSON, serialized once: FastAPI would validate a returned model against
    `response_model` again before dumping it, a second pass over every result."""
    media_type = "application/json"

    def render(self, content: BaseModel) -> bytes:
        return content.model_dump_json().encode("utf-8")


def create_app(searcher: Searcher | Callable[[], Searcher] | None = None, *,
               model_dir: str | Path | None = None, index_dir: str | Path | None = None,
               catalog_dir: str | Path | None = None, watch_seconds: float = WATCH_SECONDS,
               api_key: str | None = None, cors_origins: Sequence[str] = ()) -> FastAPI:
    """The FastAPI app over a Searcher, a function that makes one, or the model/index/catalog dirs.

    The index dir is watched for rebuilds every `watch_seconds` while the app runs (0 turns it off).
    `api_key` (default: $DASHCLIP_API_KEY, if set): /search, /filters and /products/* then need header
    X-API-Key; `cors_origins`: the browser origins allowed to call the API from other sites (none by default)."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    if searcher is None:
        if model_dir is None or index_dir is None:
            raise ValueError("create_app: give a Searcher, or model_dir and index_dir")
        searcher = Searcher.open(model_dir, index_dir, catalog_dir)
    elif callable(searcher) and not isinstance(searcher, Searcher):
        searcher = searcher()
    if searcher.encoder is None:  # concurrent requests share model calls (see QueryBatcher)
        searcher.encoder = QueryBatcher(searcher.encode_now)
    holder = SearcherHolder(searcher, index_dir or searcher.index.path, catalog_dir, watch_seconds)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if holder.current.default_hybrid:  # the index searches hybrid by default: BM25 before the first request
            from fastapi.concurrency import run_in_threadpool
            await run_in_threadpool(holder.current.keyword_index)
        holder.start()
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(title="dashclip search", version=_version(), lifespan=lifespan,
                  description="Multimodal product search (DashCLIP): query text -> nearest products.")
    app.state.holder = holder

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="The service's API key, when it has one (`dashclip serve --api-key`).")
    expected = api_key.encode("utf-8") if api_key else None

    def require_key(given: Optional[str] = Depends(key_header)) -> None:
        if expected is None:
            return
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise HTTPException(401, f"missing or wrong API key (send header {API_KEY_HEADER})",
                                headers={"WWW-Authenticate": API_KEY_HEADER})

    secured = [Depends(require_key)]

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=[API_KEY_HEADER], allow_credentials=False, max_age=600)

    app.add_middleware(RefuseBodies)   # added last: outermost, so a body is refused before CORS or routing

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        """A 422 names the bad field; the input it echoes is cut to MAX_ECHO_CHARS (never a 100 KB echo)."""
        errors = []
        for e in exc.errors()[:10]:
            e = {k: v for k, v in e.items() if k not in ("url", "ctx")}
            if "input" in e:
                e["input"] = _truncate(e["input"])
            errors.append(e)
        from fastapi.encoders import jsonable_encoder

        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    def image_url(pid, rel) -> str | None:
        return f"{product_path(pid)}/image" if rel else None  # string ids may hold "/", "%", "?", "#", ...

    @app.get("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"], dependencies=secured)
    def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="What the shopper typed."),
               k: int = Query(10, ge=1, le=MAX_K_HTTP, description="How many products to return."),
               filter: list[str] = Query([], description="field:value, repeatable; values of one field are "
                                                          "ORed, fields are ANDed (see /filters)."),
               hybrid: Optional[bool] = Query(None, description="Fuse BM25 keyword ranking with vector ranking "
                                                               "(RRF); absent: the index's recorded default."),
               rerank: Optional[bool] = Query(None, description="Re-order the top results with the cross-encoder "
                                                                "re-ranker; absent: when the service has one.")):
        started = time.perf_counter()
        current = holder.current
        hybrid = current.default_hybrid if hybrid is None else hybrid
        try:
            if rerank and current.reranker is None:
                raise ValueError("rerank=true: this service has no re-ranker (serve --reranker DIR)")
            filters = checked_filters(current, filter)
            query = normalise_query(q)
            hits = current.search(query, k=k, filters=filters, hybrid=hybrid, rerank=rerank)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return ModelJSON(SearchResponse(query=query, k=k, hybrid=hybrid, filters=filters, results=results_of(hits),
                                        reranked=any(h.rerank_score is not None for h in hits),
                                        took_ms=round((time.perf_counter() - started) * 1000, 3)))

    def results_of(hits) -> list[Result]:
        return [Result(id=h.id, title=h.title, category=h.category, score=h.score, rank=h.rank,
                       image_url=image_url(h.id, h.image), attributes=h.attributes, rerank_score=h.rerank_score)
                for h in hits]

    def checked_filters(current: Searcher, filter: list[str]) -> dict[str, list[str]]:
        if len(filter) > MAX_FILTERS:
            raise ValueError(f"{len(filter)} filters; the limit is {MAX_FILTERS}")
        return current.check_filters(parse_filter_args(filter, separators=":"))

    @app.post(UPLOAD_PATH, response_model=ImageSearchResponse, tags=["search"], dependencies=secured,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["image"], "properties": {
                      "image": {"type": "string", "format": "binary",
                                "description": "The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, at most 10 MB "
                                               "and 40 megapixels."},
                      "q": {"type": "string", "description": "Optional words that refine the photo "
                                                             "(\"in red\"); or give q in the query string."}}}}}}},
              responses={**ERRORS, 413: {"model": Problem, "description": "Upload over 10 MB or 40 megapixels"},
                         415: {"model": Problem, "description": "Not multipart/form-data, or not an image"}})
    async def search_image(request: Request,
                           q: Optional[str] = Query(None, max_length=MAX_QUERY_CHARS,
                                                    description="Words that refine the photo (\"in red\")."),
                           k: int = Query(10, ge=1, le=MAX_K_HTTP, description="How many products to return."),
                           filter: list[str] = Query([], description="field:value, repeatable (see /search).")):
        """Search by photo: the products that look like the uploaded photo, optionally refined by words."""
        from fastapi.concurrency import run_in_threadpool

        from ..data.images import ImageError
        from .search import as_image
        from .uploads import UploadError, parse_multipart, read_body

        started = time.perf_counter()
        current = holder.current
        try:
            filters = checked_filters(current, filter)
            parts = parse_multipart(await read_body(request), request.headers.get("content-type"))
            if "image" not in parts:
                raise UploadError("no photo: send it as the form's file field 'image'")
            words = parts["q"].data.decode("utf-8", "replace") if "q" in parts and q is None else q
            words = normalise_query(words) if words is not None and words.strip() else None
            photo = await run_in_threadpool(as_image, parts.pop("image").data, "uploaded image")
            hits = await run_in_threadpool(_on_one_search_thread, current.search_image, photo, k, filters, words)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        except ImageError as e:  # the message names the upload, never a path (it has none)
            raise HTTPException(UPLOAD_STATUS.get(e.kind, 400), str(e)) from None
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return ModelJSON(ImageSearchResponse(query=words, image={"width": photo.width, "height": photo.height},
                                             k=k, filters=filters, results=results_of(hits),
                                             took_ms=round((time.perf_counter() - started) * 1000, 3)))

    def lookup(current: Searcher, product_id: str) -> dict:
        try:
            return current.catalog.product(product_id)
        except KeyError:
            raise HTTPException(404, f"unknown product id {product_id!r}") from None

    # Routes take the id as a `path` (it may hold "/", sent as %2F and decoded before routing); the handlers
    # read the id from the raw path, where "a%2Fimage" (an id) and "a/image" (an image) differ.
    @app.get("/products/{product_id:path}/similar", response_model=SimilarResponse, tags=["search"],
             dependencies=secured, responses=ERRORS)
    def similar(product_id: str, request: Request,
                k: int = Query(10, ge=1, le=MAX_K_HTTP, description="How many products to return."),
                filter: list[str] = Query([], description="field:value, repeatable (see /search).")):
        """More like this: the products nearest to this one (it is not among them)."""
        pid, action = _request_id(request, product_id)
        if action != "similar":  # e.g. product "x/similar", sent as x%2Fsimilar: the product itself
            return product_or_image(pid, action)
        started = time.perf_counter()
        current = holder.current
        p = lookup(current, pid)
        try:
            filters = checked_filters(current, filter)
            hits = _on_one_search_thread(current.search_similar, p["id"], k, filters)
        except KeyError:
            raise HTTPException(404, f"unknown product id {pid!r}") from None
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return ModelJSON(SimilarResponse(product_id=p["id"], k=k, filters=filters, results=results_of(hits),
                                         took_ms=round((time.perf_counter() - started) * 1000, 3)))

    def product_or_image(pid: str, action: str | None):
        from fastapi.encoders import jsonable_encoder

        if action == "image":
            return image_response(pid)
        return JSONResponse(jsonable_encoder(product_response(pid)))

    @app.get("/products/{product_id:path}/image", response_class=FileResponse, tags=["products"],
             dependencies=secured, responses={**ERRORS, 200: {
                 "content": {t: {} for t in sorted(set(IMAGE_TYPES.values()))},
                 "description": "The product's primary image"}})
    def product_image(product_id: str, request: Request):
        pid, action = _request_id(request, product_id)
        return product_or_image(pid, action)  # e.g. product "x/image" (x%2Fimage): JSON, not a file

    @app.get("/products/{product_id:path}", response_model=Product, responses=ERRORS, tags=["products"],
             dependencies=secured)
    def product(product_id: str, request: Request):
        pid, action = _request_id(request, product_id)
        return image_response(pid) if action == "image" else product_response(pid)

    def _request_id(request: Request, product_id: str) -> tuple[str, str | None]:
        try:
            return _product_request(request)
        except UnicodeDecodeError:
            raise HTTPException(404, "unknown product id (not valid UTF-8 once percent-decoded)") from None

    def product_response(product_id: str):
        current = holder.current
        p = lookup(current, product_id)
        attributes = {a: (None if p.get(a) is None else str(p[a])) for a in current.catalog.attributes if a in p}
        return Product(id=p["id"], title=str(p["title"]), category=p.get("category"), text=p.get("text") or None,
                       image_url=image_url(p["id"], p.get("image")), attributes=attributes,
                       in_index=current.index.has(p["id"]))

    def image_response(product_id: str):
        current = holder.current
        p = lookup(current, product_id)
        # The path comes from the catalog's record of this product, never from the request; it must
        # also stay inside the catalog dir (a hand-edited catalog could hold "../" or a symlink).
        path = current.catalog.image_path(p.get("image"))
        root = current.catalog.root.resolve()
        if path is None:
            raise HTTPException(404, f"product {product_id!r} has no image")
        path = path.resolve()
        if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in IMAGE_TYPES:
            raise HTTPException(404, f"the image of product {product_id!r} is missing from the catalog")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()],
                            headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/filters", response_model=dict[str, list[str]], tags=["search"], dependencies=secured)
    def filters():
        """Every filter field of the index with its values, for the page's filter chips."""
        current = holder.current
        return {f: current.filter_values(f) for f in current.fields}

    @app.get("/healthz", response_model=Health, tags=["service"],
             responses={503: {"model": Health, "description": "The index changed but could not be reloaded; "
                                                               "the previous one is still served"}})
    def healthz():
        current = holder.current
        meta = current.index.meta
        health = Health(status="degraded" if holder.last_error else "ok", model_id=current.model_id,
                        index_size=len(current.index), index_built_at=meta.get("built_at"),
                        index_updated_at=meta.get("updated_at"), index_backend=meta.get("backend"),
                        index_generation=holder.generation, catalog=str(current.catalog.root),
                        error=holder.last_error)
        if holder.last_error:
            return JSONResponse(health.model_dump(), status_code=503)
        return health

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - the last line of defence
        log.exception("error serving %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    return app


def _on_one_search_thread(search, *args):
    """`search(*args)` on this request thread, its FAISS searches on the thread alone. Words queries search in
    the QueryBatcher's search thread; photos and "more like this" are not batched and search here, where
    FAISS's default OpenMP team spun on the cores the photo encoder needed (index.single_thread_searches)."""
    single_thread_searches()
    return search(*args)


def _version() -> str:
    from .. import __version__
    return __version__


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0):
    """Run `app` with uvicorn in a daemon thread and yield its base URL; stop it on exit. For the
    browser test and the README screenshot, which drive the page from the same process. Port 0
    picks a free port."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"uvicorn did not start on {host}:{port} within {timeout:.0f} s")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
