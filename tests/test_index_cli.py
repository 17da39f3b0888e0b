"""`dashclip index build | add | remove | info` on a tiny catalog with the tiny random model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.index import open_index

runner = CliRunner()
COLOURS = {"Red": (220, 30, 30), "Blue": (30, 60, 220), "Black": (15, 15, 15), "White": (245, 245, 245)}
KINDS = ["Shirts", "Heels", "Watches"]


def make_catalog(root: Path) -> Path:
    """24 products (colour x kind x gender) with 16x20 images."""
    (root / "images").mkdir(parents=True)
    rows, pid = [], 100
    for colour, rgb in COLOURS.items():
        for kind in KINDS:
            for gender in ("Men", "Women"):
                rel = f"images/{pid}.png"
                Image.fromarray(np.full((20, 16, 3), rgb, dtype=np.uint8)).save(root / rel)
                rows.append({"id": pid, "title": f"{gender} {colour} {kind}", "text": "", "category": kind,
                             "image": rel, "gender": gender, "baseColour": colour})
                pid += 1
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet")
    (root / "manifest.json").write_text(json.dumps({"name": "toy", "attributes": ["gender", "baseColour"],
                                                    "content_hash": "toy-1"}))
    return root


def save_tiny_model(path: Path, seed: int) -> Path:
    import torch

    from dashclip.models.factory import create_model

    torch.manual_seed(seed)
    create_model("tiny", pretrained=False).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_cli")
    return make_catalog(root / "catalog"), save_tiny_model(root / "model", 0), save_tiny_model(root / "other", 1)


def invoke(*args):
    result = runner.invoke(app, ["index", *map(str, args)])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result.exit_code, " ".join(output.split())  # Rich wraps long messages


def test_build_add_remove_info(setup, tmp_path):
    catalog, model, _ = setup
    out = tmp_path / "idx"
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", out, "-q")
    assert code == 0, output
    index = open_index(out)
    assert len(index) == 24 and index.meta["factory"] == "Flat" and index.meta["catalog_hash"] == "toy-1"
    assert index.fields == ["category", "gender", "baseColour"]
    assert index.attribute_values("category") == sorted(KINDS)
    # each product's own embedding finds it first
    from dashclip.models.embeddings import load_embeddings
    emb = load_embeddings(tmp_path / "idx-embeddings")
    got, scores = index.search(np.asarray(emb.vectors["fused"]), 1)
    assert [r[0] for r in got] == emb.ids.tolist() and np.allclose(scores[:, 0], 1, atol=1e-4)

    code, output = invoke("remove", "--index", out, "--ids", "100,101", "--ids", "102")
    assert code == 0, output
    assert len(open_index(out)) == 21 and not open_index(out).has(101)

    code, output = invoke("add", "--index", out, "--model", model, "--catalog", catalog, "--ids", "101", "-q")
    assert code == 0, output
    reopened = open_index(out)
    assert len(reopened) == 22 and reopened.has(101)
    assert reopened.attributes_of(101) == {"category": "Shirts", "gender": "Women", "baseColour": "Red"}
    got, scores = reopened.search(np.asarray(emb.vectors["fused"][1:2]), 1)
    # embedded as `index build` embedded it (same precision, same path): the very vector it had
    assert got == [[101]] and abs(scores[0, 0] - 1) < 1e-6

    code, output = invoke("add", "--index", out, "--model", model, "--catalog", catalog, "-q")  # the rest
    assert code == 0 and len(open_index(out)) == 24, output
    code, output = invoke("add", "--index", out, "--model", model, "--catalog", catalog, "-q")
    assert code == 0 and "nothing to add" in output

    code, output = invoke("info", out)
    assert code == 0 and "24" in output and "filter: gender" in output and "Men, Women" in output


def test_clear_errors(setup, tmp_path):
    catalog, model, other = setup
    out = tmp_path / "idx"
    assert invoke("build", "--model", model, "--catalog", catalog, "--out", out, "-q")[0] == 0

    code, output = invoke("add", "--index", out, "--model", other, "--catalog", catalog, "-q")
    assert code == 2 and "index was built with model" in output and "dashclip index build" in output
    code, output = invoke("add", "--index", out, "--model", model, "--catalog", catalog, "--ids", "100")
    assert code == 2 and "'100' is already in the index" in output
    code, output = invoke("add", "--index", out, "--model", model, "--catalog", catalog, "--ids", "nope")
    assert code == 2 and "'nope' is not in the catalog" in output
    code, output = invoke("remove", "--index", out, "--ids", "99999")
    assert code == 2 and "99999 is not in the index" in output
    code, output = invoke("info", tmp_path / "missing")
    assert code == 2 and "missing" in output and "Traceback" not in output
    code, output = invoke("build", "--model", other, "--catalog", catalog, "--out", tmp_path / "x",
                          "--embeddings", tmp_path / "idx-embeddings", "-q")
    assert code == 2 and "embeddings were made with model" in output
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "x",
                          "--factory", "Bogus7", "-q")
    assert code == 2 and "not a valid FAISS index factory string" in output
    assert len(open_index(out)) == 24  # nothing above touched the index


def test_build_milvus_backend(setup, tmp_path):
    pytest.importorskip("milvus_lite")
    catalog, model, _ = setup
    out = tmp_path / "idx"
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", out, "--backend", "milvus", "-q")
    assert code == 0, output
    assert (out / "milvus.db").exists()
    code, output = invoke("remove", "--index", out, "--ids", "100")
    assert code == 0, output
    index = open_index(out)
    assert index.meta["backend"] == "milvus" and len(index) == 23 and not index.has(100)
    ids, _ = index.search(np.ones((1, index.dim), np.float32), 30, filters={"gender": ["Women"]})
    assert len(ids[0]) == 12 and all(index.attributes_of(i)["gender"] == "Women" for i in ids[0])
    code, output = invoke("info", out)
    assert code == 0 and "milvus" in output


def test_build_reads_the_image_features_stage1_cached(setup, tmp_path, monkeypatch):
    """`index build` embeds the catalog from the image-feature cache `pretrain --freeze-image` left
    (given by --image-cache, or in its default home) instead of running the image tower again."""
    import dashclip
    from dashclip.data.catalog import Catalog
    from dashclip.models.feature_cache import build_or_open

    monkeypatch.setenv("DASHCLIP_RUNS", str(tmp_path / "runs"))      # the default cache home, empty
    catalog, model, _ = setup
    net = dashclip.load(model)
    build_or_open(net, Catalog.open(catalog).image_index().paths, tmp_path / "cache",
                  show_progress=False)
    code, out = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "idx",
                       "--image-cache", tmp_path / "cache", "--quiet")
    assert code == 0, out
    meta = json.loads((tmp_path / "idx-embeddings" / "meta.json").read_text())
    assert meta["image_features"].startswith("cache ")
    code, out = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "idx2", "--quiet")
    assert code == 0, out
    assert json.loads((tmp_path / "idx2-embeddings" / "meta.json").read_text())["image_features"] == "image tower"


def test_build_writes_a_photo_index_and_add_remove_keep_it_in_step(setup, tmp_path):
    catalog, model, _ = setup
    code, out = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "idx", "-q",
                       "--photo-image-weight", "0.25")
    assert code == 0, out
    assert "with its photo index (image weight 0.25)" in out
    photo = open_index(tmp_path / "idx" / "photo")
    assert photo.meta["photo_image_weight"] == 0.25 and len(photo) == 24
    assert invoke("remove", "--index", tmp_path / "idx", "--ids", "101,102")[0] == 0
    assert len(open_index(tmp_path / "idx" / "photo")) == len(open_index(tmp_path / "idx")) == 22
    code, out = invoke("add", "--index", tmp_path / "idx", "--model", model, "--catalog", catalog, "-q")
    assert code == 0 and "added 2 products" in out, out
    assert len(open_index(tmp_path / "idx" / "photo")) == 24
    # --no-photo-index: none built, and the earlier one is removed with the rebuild
    code, out = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "idx", "-q",
                       "--no-photo-index")
    assert code == 0 and "photo index" not in out, out
    assert not (tmp_path / "idx" / "photo").exists()


def test_build_tunes_hnsw_on_the_queries_given(setup, tmp_path):
    catalog, model, _ = setup
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"qid": f"q{i % 3}", "query": q}) + "\n"   # a log: q0 again
                               for i, q in enumerate(["red shirt", "black heels for women", "watch", "red shirt"])))
    out = tmp_path / "idx"
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", out, "--factory", "HNSW4,Flat",
                          "--tune-queries", queries, "--no-photo-index", "-q")
    assert code == 0, output
    meta = open_index(out).meta
    assert meta["ef_search_tuned_on"] == "3 queries" and meta["ef_search_tuned_recall_at_10"] >= 0.95  # distinct
    assert "recall@10" in output and "on 3 queries" in output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "q1", "query": "shirt"}\n{"qid": "q2"}\n')
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "x",
                          "--tune-queries", bad, "-q")
    assert code == 2 and "bad.jsonl: line 2: no 'query' field" in output and not (tmp_path / "x").exists()
    code, output = invoke("build", "--model", model, "--catalog", catalog, "--out", tmp_path / "x",
                          "--backend", "milvus", "--tune-queries", queries, "-q")
    assert code == 2 and "--tune-queries" in output and not (tmp_path / "x").exists()
