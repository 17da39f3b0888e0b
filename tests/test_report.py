"""The report: one code path with the evaluators, files written, CLI errors are clean."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from dashclip.data.images import load_image
from dashclip.evaluation import report
from dashclip.evaluation.baselines import model_scorers
from dashclip.evaluation.qrels import load_queries, read_qrels_tsv
from test_evaluators import PRODUCTS, FakeModel, words_vector, write_catalog

QUERY_LINES = [
    {"qid": "dev001", "query": "red formal shirt men", "style": "keyword"},
    {"qid": "dev002", "query": "running shoes", "style": "synonym"},
    {"qid": "dev003", "query": "black jeans", "style": "keyword"},
]
QRELS = "qid\tproduct_id\tlabel\ndev001\t1\t2\ndev001\t4\t2\ndev001\t3\t1\ndev002\t6\t2\ndev002\t11\t1\n" \
        "dev003\t8\t2\ndev003\t7\t1\n"


class FakeSentenceEncoder:
    path = "fake-words"
    max_length = 64

    def encode(self, texts, progress=None):
        return np.stack([words_vector(t) for t in texts])


def fake_embeddings(cat, model):
    texts = cat.product_texts()
    images = [load_image(cat.image_path(r)) for r in cat.products["image"]]
    return SimpleNamespace(ids=cat.products["id"].tolist(), meta={"model_id": model.model_id},
                           vectors={"fused": model.encode_product(texts, images).numpy(),
                                    "image": model.encode_image(images).numpy(),
                                    "text": model.encode_text(texts).numpy()})



@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    """Default caches (runs/cache/...) go to a temporary dir, never into the checkout."""
    monkeypatch.setenv("DASHCLIP_RUNS", str(tmp_path / "runs"))

@pytest.fixture
def setup(tmp_path):
    cat = write_catalog(tmp_path / "fashion")
    groc = write_catalog(tmp_path / "grocery", [p for p in PRODUCTS if p[0] in (1, 2, 6, 8)], photos_per_product=2)
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUERY_LINES))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(QRELS)
    model = FakeModel()
    return SimpleNamespace(tmp=tmp_path, cat=cat, groc=groc, qfile=qfile, qrels=qrels, model=model,
                           emb=fake_embeddings(cat, model))


def test_report_numbers_are_the_evaluators_numbers_and_files_are_written(setup):
    s = setup
    queries, qrels = load_queries(s.qfile), read_qrels_tsv(s.qrels)
    result = report.evaluate(s.model, s.cat, s.emb, queries, qrels, [("zero-shot", s.model, s.groc)],
                             cache_dir=s.tmp / "cache", encoder=FakeSentenceEncoder(), log=lambda m: None)
    paths = report.write_report(result, s.tmp / "out")
    metrics = json.loads(paths["metrics"].read_text())
    systems = list(metrics["retrieval"])
    assert systems == ["BM25 (title + attributes)", "MiniLM (query vs title)",
                       "dashclip text tower (before Stage 2)", "dashclip query encoder",
                       "dashclip query encoder + BM25, RRF (search --hybrid)"]
    assert "dashclip query encoder + BM25, RRF (search --hybrid)" not in metrics["relevance"]  # a ranking only
    # The benchmark path (baseline_scorers + evaluate_queries) gives the same numbers as the report.
    products = report.retrieval_products(s.cat)
    scorers = report.baseline_scorers(s.cat, products, s.tmp / "cache", FakeSentenceEncoder())
    scorers += model_scorers(s.model, s.emb.vectors["fused"], products["id"].tolist(), bm25=scorers[0])
    direct = report.evaluate_queries(queries, qrels, scorers)
    assert direct["retrieval"] == metrics["retrieval"]
    assert direct["relevance"] == metrics["relevance"]
    # BM25 ranks the exact-title product first for "black jeans".
    assert metrics["retrieval"]["BM25 (title + attributes)"]["per_style"]["keyword"]["mrr"] == 1.0
    assert set(metrics["category"]["fused"]) == {"category", "subCategory"}
    assert metrics["grocery"]["zero-shot"]["image"]["fine_top1"] == 1.0
    for name in ("recall_at_k.png", "confusion_aisles.png", "pca_fused.png"):
        assert (s.tmp / "out" / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "| dashclip query encoder |" in md and "](plots/recall_at_k.png)" in md
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page


def test_heldout_only_keeps_qids_divisible_by_three(setup):
    queries = load_queries(setup.qfile, heldout_only=True)
    assert [q["qid"] for q in queries] == ["dev003"]


def _patch_loaders(monkeypatch, s):
    monkeypatch.setattr(report, "load_model", lambda path: s.model)
    monkeypatch.setattr(report, "load_product_embeddings", lambda path, model=None, catalog=None: s.emb)
    monkeypatch.setattr(report, "baseline_scorers",
                        lambda cat, products, cache_dir, encoder=None: [])  # CLI test: no MiniLM download


def test_cli_writes_a_report(setup, monkeypatch):
    from dashclip.cli import app

    s = setup
    _patch_loaders(monkeypatch, s)
    (s.tmp / "model").mkdir()
    out = s.tmp / "report"
    res = CliRunner().invoke(app, ["eval", "--model", str(s.tmp / "model"), "--catalog", str(s.cat.root),
                                   "--queries", str(s.qfile), "--qrels", str(s.qrels),
                                   "--grocery-catalog", str(s.groc.root), "--out", str(out), "--heldout-only"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["heldout_only"] is True
    assert next(iter(metrics["retrieval"].values()))["n_queries"] == 1
    assert (out / "report.html").exists() and (out / "report.md").exists()


def test_cli_bad_input_is_a_clean_error(setup, monkeypatch):
    from dashclip.cli import app

    s = setup
    _patch_loaders(monkeypatch, s)
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(s.tmp), "--catalog", str(s.tmp / "nope"),
                              "--out", str(s.tmp / "r")])
    text = " ".join(res.output.split())  # Rich wraps long lines
    assert res.exit_code == 2 and "not a dashclip catalog" in text and "Traceback" not in text
    bad = s.tmp / "bad.tsv"
    bad.write_text("qid\tproduct_id\tlabel\ndev001\tx\t2\n")
    res = runner.invoke(app, ["eval", "--model", str(s.tmp), "--catalog", str(s.cat.root), "--queries",
                              str(s.qfile), "--qrels", str(bad), "--out", str(s.tmp / "r")])
    compact = "".join(res.output.split())  # Rich may wrap anywhere in a long path
    assert res.exit_code == 2 and "bad.tsv:2:badproduct_id'x'" in compact, res.output
