"""Relevance labels at scale (paper §3.2): a labeler fine-tuned on a few human grades grades many more
(query, product) pairs, and those grades train Stage 2.

The steps, each a function here and a `dashclip labels ...` command:

    synthesize_queries   a query pool from catalog attributes (for a catalog without search logs)
    pick_candidates      which (query, product) pairs to grade: BM25 top K, embedding top K, a few random
    seed_from_qrels      seed ("human") grades from a graded query file
    train_cross_encoder  fine-tune the default labeler on seed grades
    grade_pairs          grade many pairs with any labeler: batched, Parquet shards, resumable
    evaluate_labeler     accuracy, quadratic-weighted kappa and confusion on held-out seed pairs
    export_finetune      seed grades as chat-format JSONL, to fine-tune an LLM labeler
    load_grades          read grade Parquet files / shard dirs (what Stage 2 consumes)

Grade schema (docs/architecture.md §4): qid, query, product_id, grade (0/1/2), confidence,
labeler, labeler_version.
"""
from .grades import GRADE_COLUMNS, load_grades

__all__ = ["GRADE_COLUMNS", "load_grades", "synthesize_queries", "pick_candidates", "seed_from_qrels",
           "train_cross_encoder", "grade_pairs", "evaluate_labeler", "export_finetune", "get_labeler"]


def __getattr__(name):
    # Lazy: `import dashclip.labeling` stays light (no torch, no transformers) for the CLI and Stage 2.
    lazy = {"synthesize_queries": "queries", "pick_candidates": "candidates", "seed_from_qrels": "seed",
            "train_cross_encoder": "labelers.cross_encoder", "grade_pairs": "grading",
            "evaluate_labeler": "evaluate", "export_finetune": "finetune_export", "get_labeler": "labelers"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(name)
