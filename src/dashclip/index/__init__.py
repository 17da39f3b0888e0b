"""Vector indexes of product embeddings: FAISS (embedded, the default) and Milvus (distributed).

    from dashclip.index import build_index, open_index
    index = build_index(vectors, ids, "runs/index", meta={"model_id": model.model_id}, attributes=attrs)
    ids, scores = open_index("runs/index", model_id=model.model_id).search(queries, k=10,
                                                                           filters={"gender": ["Women"]})
"""
from .backends import build_index, open_index, search_defaults, set_search_defaults, updating
from .base import VectorIndex, is_index_dir, read_meta
from .faiss_index import single_thread_searches

__all__ = ["VectorIndex", "build_index", "is_index_dir", "open_index", "read_meta", "search_defaults",
           "set_search_defaults", "single_thread_searches", "updating"]
