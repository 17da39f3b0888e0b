"""The batch contract (`dashclip search --queries FILE --output FILE`): its query file, read strictly, and
the search of every line (words, a photo, or a photo refined by words) with one searcher."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..clihelp import UserError


def read_batch_queries(path: Path) -> list[dict]:
    """The batch contract's input: one {"qid": ..., "query": ...} object per line; a line may instead (or
    as well) carry "image": a photo's path, relative to the queries file (search by photo, + words).

    A bad line (not UTF-8, not JSON) is an error naming the file and the line; so is a repeated qid, "1"
    and 1 being the same qid (its results would clash), which names both lines."""
    from ..io import check_unique_qids, iter_jsonl
    from .search import normalise_query

    rows, lines = [], []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object like {{\"qid\": \"q1\", \"query\": \"red dress\"}}")
        missing = [key for key in ("qid", "query") if key not in row and not (key == "query" and "image" in row)]
        if missing:
            raise UserError(f"{where}: missing field {missing[0]!r}")
        if "image" in row:
            if not isinstance(row["image"], str) or not row["image"].strip():
                raise UserError(f"{where}: field 'image' must be the path of a photo")
            lines.append(lineno)
            rows.append({"qid": row["qid"], "query": query_words(row.get("query"), where),
                         "image": path.parent / row["image"], "where": where})
            continue
        if not isinstance(row["qid"], (str, int)) or isinstance(row["qid"], bool):
            raise UserError(f"{where}: field 'qid' must be a string or a number, got {row['qid']!r}")
        try:
            query = normalise_query(row["query"])
        except ValueError as e:
            raise UserError(f"{where}: field 'query': {e}") from None
        lines.append(lineno)
        rows.append({"qid": row["qid"], "query": query})
    check_unique_qids(zip(lines, (r["qid"] for r in rows)), path)
    if not rows:
        raise UserError(f"{path}: no queries (expected lines like {{\"qid\": \"q1\", \"query\": \"red dress\"}})")
    return rows


def query_words(query, where: str) -> str | None:
    """Words given with a photo: None when blank, else the normalised query; a bad one names `where`."""
    from .search import normalise_query

    if query is None or (isinstance(query, str) and not query.strip()):
        return None
    try:
        return normalise_query(query)
    except ValueError as e:
        raise UserError(f"{where}: field 'query': {e}") from None


def photo_from_file(path: Path, where: str):
    """A photo query from a file the user named: read with the query limits, decoded safely."""
    from ..data.images import QUERY_MAX_BYTES, ImageError, read_image_bytes
    from .search import as_image

    try:
        return as_image(read_image_bytes(path, max_bytes=QUERY_MAX_BYTES), str(path))
    except ImageError as e:
        raise UserError(f"{where}: {e}") from None


def search_batch_queries(searcher, batch: list[dict], k: int, filters: dict | None = None,
                         hybrid: bool | None = None, rerank: bool | None = None,
                         progress: Callable[[int], None] | None = None) -> list[list]:
    """The hits of every line of `batch` (as read by `read_batch_queries`), in its order. Words queries
    are searched together; photos are decoded a few at a time, never all at once."""
    photos = [i for i, row in enumerate(batch) if "image" in row]
    texts = [i for i, row in enumerate(batch) if "image" not in row]
    results: list = [None] * len(batch)
    found = searcher.search_batch([batch[i]["query"] for i in texts], k=k, filters=filters, hybrid=hybrid,
                                  rerank=rerank, progress=progress) if texts else []
    for i, hits in zip(texts, found):
        results[i] = hits
    for start in range(0, len(photos), 16):
        chunk = photos[start:start + 16]
        found = searcher.search_image_batch([photo_from_file(batch[i]["image"], batch[i]["where"]) for i in chunk],
                                            k=k, filters=filters, texts=[batch[i]["query"] for i in chunk])
        for i, hits in zip(chunk, found):
            results[i] = hits
        if progress is not None:
            progress(len(chunk))
    return results
