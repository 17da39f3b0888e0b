"""Running the HTTP service: `dashclip serve` and `dashclip demo` both end in `serve_app` (library code,
apart from the CLI modules that call it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..clihelp import UserError, console, user_errors
from ..ranking import PHOTO_EXPANSION

MAX_CONCURRENCY = 64  # connections and requests served at once (`dashclip serve --max-concurrency`)


def open_searcher(model: Path, index: Path, catalog: Optional[Path], backend: str = "auto",
                  reranker: Optional[Path] = None, rerank_depth: Optional[int] = None,
                  photo_expansion: Optional[int] = None):
    """The Searcher of a model and index dir, its warnings (e.g. another catalog) printed. `backend`,
    `reranker`, `rerank_depth`, `photo_expansion` (None: the default): see `Searcher.open`."""
    import warnings

    from .search import Searcher

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        searcher = Searcher.open(model, index, catalog, backend=backend, reranker=reranker, rerank_depth=rerank_depth,
                                 photo_expansion=PHOTO_EXPANSION if photo_expansion is None else photo_expansion)
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    return searcher


def serve_app(model: Path, index: Path, catalog: Optional[Path] = None, host: str = "127.0.0.1", port: int = 8000,
              watch_seconds: float = 2.0, log_level: str = "warning", api_key: Optional[str] = None,
              cors_origins: tuple = (), max_concurrency: int = MAX_CONCURRENCY, backend: str = "auto",
              reranker: Optional[Path] = None, rerank_depth: Optional[int] = None,
              photo_expansion: Optional[int] = None) -> None:
    """Load the model and index, then serve until Ctrl+C (`dashclip serve` and `dashclip demo` both end here)."""
    from .service import create_app

    with user_errors():
        console.print(f"loading model {model} and index {index}")
        searcher = open_searcher(model, index, catalog, backend, reranker, rerank_depth, photo_expansion)
        if searcher.reranker is not None:
            console.print(f"re-ranking the top {searcher.reranker.depth} of every words query with "
                          f"{searcher.reranker.path}")
        if api_key is not None and not api_key.strip():
            raise UserError("--api-key / DASHCLIP_API_KEY is empty")
        app_ = create_app(searcher, catalog_dir=catalog, watch_seconds=watch_seconds, api_key=api_key,
                          cors_origins=cors_origins)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    console.print(f"[green]serving[/] {len(searcher.index)} products at [bold]http://{shown}:{port}/[/] "
                  f"(API docs: http://{shown}:{port}/docs); Ctrl+C stops")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"[yellow]warning:[/] listening on {host} without an API key: anyone who can reach it "
                      f"can search (set DASHCLIP_API_KEY, or put a reverse proxy in front)")
    run_app(app_, host, port, log_level, max_concurrency)


def run_app(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
            max_concurrency: int = MAX_CONCURRENCY) -> None:
    """Serve a built app (`service.create_app`) until stopped: the one place that says how dashclip runs
    uvicorn, so a benchmark's server runs exactly as `dashclip serve` does."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=max_concurrency)
