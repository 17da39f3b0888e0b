"""Seed grades as chat-format fine-tuning JSONL (the OpenAI / vLLM / Axolotl "messages" format), the way
the paper fine-tuned GPT as its labeler. Each line is the LLM labeler's own prompt (rubric, then the
query and product) with the seed grade as the assistant's answer, so the fine-tuned model is asked
exactly what it was trained on. Held-out queries are never exported."""
from __future__ import annotations

import pandas as pd

from ..io import write_jsonl
from .grades import split_by_query
from .labelers import pairs_from
from .labelers.llm import answer_json, build_messages


def export_finetune(seed: pd.DataFrame, catalog, out_path, validation_path=None) -> dict:
    """Write training seed grades to `out_path` (and held-out ones to `validation_path`, if given)."""
    train, held = split_by_query(seed)
    counts = {}
    for df, path, name in ((train, out_path, "train"), (held, validation_path, "validation")):
        if path is None:
            continue
        pairs = pairs_from(catalog, df["query"].tolist(), df["product_id"].tolist())
        rows = [{"messages": build_messages(p) + [{"role": "assistant", "content": answer_json(g)}]}
                for p, g in zip(pairs, df["grade"].astype(int))]
        write_jsonl(path, rows)
        counts[name] = len(rows)
    return counts
