"""CLI for search and the HTTP service: `dashclip search` and `dashclip serve`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..clihelp import UserError, console, user_errors
from ..ranking import PHOTO_EXPANSION as DEFAULT_PHOTO_EXPANSION
from .batch import photo_from_file, query_words, read_batch_queries, search_batch_queries
from .server import MAX_CONCURRENCY, open_searcher, serve_app

MODEL = typer.Option(..., "--model", help="Model dir (`dashclip pretrain` / `dashclip align` output).")
INDEX = typer.Option(..., "--index", help="Index dir built with that model (`dashclip index build`).")
BACKEND = typer.Option("auto", "--backend", help="Model runtime: torch, onnx (an export: `dashclip export "
                       "onnx`; needs onnxruntime) or auto (onnx when --model is an export).")
RERANKER = typer.Option(None, "--reranker", help="A cross-encoder labeler dir (`dashclip labels train`, or a "
                        "pipeline's labels/labeler) that re-ranks the top of every words query; default: the "
                        "model dir's reranker/ when it has one.")
RERANK_DEPTH = typer.Option(None, "--rerank-depth", min=1, help="How many first-stage products the re-ranker "
                            "re-orders per query (default: as recorded with it, else 20).")
PHOTO_EXPANSION = typer.Option(None, "--photo-expansion", min=0, help="Photo queries: search again from the "
                               "photo moved toward its first N hits (finds more of the photo's kind, less often "
                               f"the exact product); default {DEFAULT_PHOTO_EXPANSION} (0: off).")
CATALOG = typer.Option(None, "--catalog", help="Catalog dir for titles and images; default: the one the "
                                               "index was built from (catalog_dir in its meta.json).")


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search(
        query: Optional[str] = typer.Argument(None, help="What to search for (or use --queries)."),
        model: Path = MODEL,
        index: Path = INDEX,
        catalog: Optional[Path] = CATALOG,
        k: int = typer.Option(10, "--k", "-k", min=1, help="How many products per query."),
        filters: list[str] = typer.Option([], "--filter", help="field=value, repeatable (e.g. --filter gender=Women "
                                          "--filter articleType=Heels); values of one field are ORed."),
        hybrid: Optional[bool] = typer.Option(None, "--hybrid/--dense", help="--hybrid: fuse BM25 keyword ranking "
                                              "with the vector ranking (reciprocal-rank fusion, k=60; scores are "
                                              "then RRF scores); --dense: vectors only. Default: what the index "
                                              "records (`dashclip train` chooses it on its evaluation grades), "
                                              "else dense."),
        queries: Optional[Path] = typer.Option(None, "--queries", help="JSONL of {\"qid\", \"query\"} lines "
                                               "(batch mode; needs --output); a line may carry \"image\": "
                                               "a photo's path (relative to the file)."),
        image: Optional[Path] = typer.Option(None, "--image", help="Search by photo (JPEG, PNG, ...; at most "
                                             "10 MB, 40 MP); with --query TEXT, the photo refined by words."),
        query_text: Optional[str] = typer.Option(None, "--query", help="With --image: words that refine the "
                                                 "photo (\"in red\")."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Batch mode: JSONL of "
                                              "{\"qid\", \"product_ids\"} lines, best first (written atomically)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        backend: str = BACKEND,
        rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="Re-order the top products of "
                                              "each words query with the cross-encoder (default: when there "
                                              "is one, see --reranker)."),
        reranker: Optional[Path] = RERANKER,
        rerank_depth: Optional[int] = RERANK_DEPTH,
        photo_expansion: Optional[int] = PHOTO_EXPANSION,
    ):
        """Search an index with a query (prints a table), or a file of queries (writes runs JSONL)."""
        from .search import parse_filter_args

        with user_errors():
            if image is not None:
                if queries is not None or query is not None:
                    raise UserError("--image goes alone or with --query TEXT (not with a QUERY or --queries)")
                if hybrid:
                    raise UserError("--hybrid ranks words; it does not apply to --image")
                photo = photo_from_file(image, "--image")
                words = query_words(query_text, "--query")
                searcher = open_searcher(model, index, catalog, backend, photo_expansion=photo_expansion)
                hits = searcher.search_image(photo, k=k, filters=searcher.check_filters(
                    parse_filter_args(filters, separators="=")), text=words)
                _print_table(f"photo {image.name}" + (f" + {words!r}" if words else ""), hits, False)
                return
            if query_text is not None:
                raise UserError("--query goes with --image (give a text query as the QUERY argument)")
            if (query is None) == (queries is None):
                raise UserError("give either a QUERY or --queries FILE (not both)")
            if queries is not None and output is None:
                raise UserError("--queries needs --output FILE for the results")
            if queries is None and output is not None:
                raise UserError("--output goes with --queries (batch mode)")
            if output is not None:  # a bad output fails now, not after every query was searched
                from ..io import check_output_file

                check_output_file(output, "--output")
            filter_dict = parse_filter_args(filters, separators="=")
            batch = read_batch_queries(queries) if queries is not None else None
            searcher = open_searcher(model, index, catalog, backend, reranker, rerank_depth, photo_expansion)
            if rerank and searcher.reranker is None:
                raise UserError(f"--rerank: {model} has no reranker/; give a cross-encoder dir with --reranker")
            filter_dict = searcher.check_filters(filter_dict)
            if batch is None:
                hybrid = searcher.default_hybrid if hybrid is None else hybrid
                hits = searcher.search(query, k=k, filters=filter_dict, hybrid=hybrid, rerank=rerank)
                _print_table(query, hits, hybrid)
                return
            from ..clihelp import progress
            from ..io import write_jsonl

            with progress(disable=quiet) as bar:
                task = bar.add_task("searching", total=len(batch))
                results = search_batch_queries(searcher, batch, k=k, filters=filter_dict, hybrid=hybrid,
                                               rerank=rerank, progress=lambda n: bar.advance(task, n))
            write_jsonl(output, ({"qid": row["qid"], "product_ids": [h.id for h in hits]}
                                 for row, hits in zip(batch, results)))
            console.print(f"[green]wrote[/] {len(batch)} result lists (k={k}) to {output}")

    @app.command("serve")
    def serve(
        model: Path = MODEL,
        index: Path = INDEX,
        catalog: Optional[Path] = CATALOG,
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
        watch_seconds: float = typer.Option(2.0, "--watch-seconds", help="How often to check the index dir for "
                                            "a rebuild to swap in (0: never)."),
        log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DASHCLIP_API_KEY", show_envvar=True,
                                              help="Require this key in header X-API-Key for /search, /filters "
                                              "and /products (the page: open /#key=KEY); /healthz stays open. "
                                              "Prefer the environment variable: a flag shows in `ps`."),
        cors_origins: list[str] = typer.Option([], "--cors-origin", help="A browser origin allowed to call the "
                                               "API from another site (repeatable, e.g. https://shop.example); "
                                               "none by default."),
        max_concurrency: int = typer.Option(MAX_CONCURRENCY, "--max-concurrency", min=1, help="Connections and "
                                            "requests served at once; more get HTTP 503."),
        backend: str = BACKEND,
        reranker: Optional[Path] = RERANKER,
        rerank_depth: Optional[int] = RERANK_DEPTH,
        photo_expansion: Optional[int] = PHOTO_EXPANSION,
    ):
        """Serve search over HTTP, with a web page at / and the API schema at /docs."""
        serve_app(model, index, catalog, host=host, port=port, watch_seconds=watch_seconds, log_level=log_level,
                  api_key=api_key, cors_origins=cors_origins, max_concurrency=max_concurrency,
                  backend=backend, reranker=reranker, rerank_depth=rerank_depth, photo_expansion=photo_expansion)


def _print_table(query: str, hits, hybrid: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(hits)} results for {query!r}" + (" (hybrid: RRF scores)" if hybrid else ""))
    table.add_column("rank", justify="right")
    table.add_column("id")
    table.add_column("title")
    table.add_column("category")
    table.add_column("score", justify="right")
    reranked = any(h.rerank_score is not None for h in hits)
    if reranked:
        table.add_column("re-ranker (0-2)", justify="right")
    for h in hits:
        table.add_row(str(h.rank), str(h.id), h.title, h.category or "", f"{h.score:.4f}",
                      *([f"{h.rerank_score:.3f}" if h.rerank_score is not None else ""] if reranked else []))
    Console().print(table)  # stdout; logs and warnings go to stderr
