"""Shared fixtures for the labeling tests: a tiny catalog dir and a tiny random BERT cross-encoder base."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TYPES = {"Tshirts": "Topwear", "Shirts": "Topwear", "Jeans": "Bottomwear", "Watches": "Watches",
         "Sandals": "Sandal"}
COLOURS = ["Black", "Blue", "Red", "White"]
GENDERS = ["Men", "Women"]
USAGES = ["Casual", "Formal", "Sports"]


def write_catalog(root: Path, n: int = 48) -> Path:
    """A catalog dir per data/catalog.py's schema: catalog.parquet + manifest.json (no images needed)."""
    rows = []
    types = list(TYPES)
    for i in range(n):
        t, c, g, u = types[i % 5], COLOURS[(i // 5) % 4], GENDERS[(i // 20) % 2], USAGES[i % 3]
        brand = ["Acme", "Zorba", "Kiwi"][i % 3]
        rows.append({"id": 1000 + i, "title": f"{brand} {g} {c} {t.rstrip('s')} {i}", "text": "", "category": t,
                     "image": f"images/{1000 + i}.jpg", "subCategory": TYPES[t], "gender": g, "baseColour": c,
                     "usage": u})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet", index=False)
    (root / "manifest.json").write_text(json.dumps({"name": "tiny", "attributes": ["subCategory", "gender",
                                                                                    "baseColour", "usage"],
                                                    "content_hash": "tiny"}))
    return root


def rule_grade(query: dict, product: dict) -> int:
    """A toy label rule (like fashion-queries' labels.py): type and colour."""
    if product["category"] != query["type"]:
        return 0
    return 2 if product["baseColour"] == query["colour"] else 1


def toy_queries() -> list[dict]:
    out = []
    for i, (t, c) in enumerate([(t, c) for t in TYPES for c in COLOURS][:18], 1):
        out.append({"qid": f"t{i:03d}", "query": f"{c.lower()} {t.lower()}", "type": t, "colour": c})
    return out


def toy_qrels(catalog_dir: Path) -> pd.DataFrame:
    products = pd.read_parquet(catalog_dir / "catalog.parquet").to_dict("records")
    rows = [{"qid": q["qid"], "product_id": p["id"], "label": rule_grade(q, p)}
            for q in toy_queries() for p in products]
    df = pd.DataFrame(rows)
    return df[df["label"] > 0]


def write_tiny_bert(root: Path) -> Path:
    """A randomly initialised 2-layer, 32-wide BERT with MiniLM's tokenizer: a fast cross-encoder base."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dashclip.models.sentence import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_toy_catalog_opens(tmp_path):
    from dashclip.data.catalog import Catalog

    cat = Catalog.open(write_catalog(tmp_path / "cat"))
    assert len(cat) == 48 and cat.attributes == ["subCategory", "gender", "baseColour", "usage"]
