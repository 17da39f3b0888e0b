"""Search and serving: the one search path (`Searcher`), the HTTP service and its web page.

    from dashclip.serving import Searcher, create_app
    searcher = Searcher.open("runs/model", "runs/index")
    searcher.search("red summer dress", k=10, filters={"gender": ["Women"]}, hybrid=True)
    app = create_app(searcher)          # FastAPI; `dashclip serve` runs it with uvicorn
"""
from .search import Hit, Searcher, normalise_query, parse_filter_args

__all__ = ["Hit", "Searcher", "create_app", "normalise_query", "parse_filter_args"]


def __getattr__(name):  # FastAPI is imported only when the service is wanted
    if name == "create_app":
        from .service import create_app
        return create_app
    raise AttributeError(name)
