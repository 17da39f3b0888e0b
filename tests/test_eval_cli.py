"""`dashclip eval` end to end with a real (tiny, random) model: model dir, product embeddings from
`embed_catalog`, the toy catalog, a query file with labels, grocery transfer with Stage 1 on the
train photos. Checks that the report's numbers are the benchmark path's numbers."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import dashclip
from dashclip.cli import app
from dashclip.data.catalog import Catalog
from dashclip.evaluation import report
from dashclip.evaluation.baselines import bm25_rankings, model_rankings, retrieval_products
from dashclip.evaluation.metrics import evaluate_rankings
from dashclip.evaluation.qrels import load_queries, read_qrels_tsv
from dashclip.models.embeddings import embed_catalog, load_embeddings
from toy_catalog import make_catalog

QUERIES = [{"qid": "t001", "query": "red shirt", "style": "keyword"},
           {"qid": "t002", "query": "something blue for my feet", "style": "intent"},
           {"qid": "t003", "query": "black watch", "style": "keyword"}]
# Toy ids: 100 + 6 * colour index + kind index (colours red, green, blue, yellow, purple, orange,
# black, white; kinds shirt, shoe, bag, watch, cap, sock).
QRELS = {"t001": {100: 2, 106: 1, 112: 1}, "t002": {113: 2, 117: 2, 101: 1}, "t003": {139: 2, 103: 1}}



@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    """Default caches (runs/cache/...) go to a temporary dir, never into the checkout."""
    monkeypatch.setenv("DASHCLIP_RUNS", str(tmp_path / "runs"))

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cat_dir = make_catalog(tmp / "toy")
    grocery = make_catalog(tmp / "grocery")
    images = pd.read_parquet(grocery / "images.parquet")  # the extra photos become train/test photos
    extra = images.index[images["role"] == "extra"]
    images.loc[extra, "split"] = ["train", "test"] * (len(extra) // 2)
    images.to_parquet(grocery / "images.parquet")
    model_dir = tmp / "model"
    torch.manual_seed(0)  # a fixed random model: the same numbers every run
    model = dashclip.create_model("tiny", pretrained=False)
    model.save(model_dir)
    model = dashclip.load(model_dir)
    embed_catalog(model, Catalog.open(cat_dir), model_dir / "embeddings", progress=False)
    qfile = tmp / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    qrels = tmp / "qrels.tsv"
    qrels.write_text("qid\tproduct_id\tlabel\n" + "".join(
        f"{qid}\t{pid}\t{lab}\n" for qid, labs in QRELS.items() for pid, lab in labs.items()))
    return dict(tmp=tmp, cat=cat_dir, grocery=grocery, model_dir=model_dir, model=model, qfile=qfile, qrels=qrels)


def test_dashclip_eval_end_to_end(setup):
    s = setup
    out = s["tmp"] / "report"
    res = CliRunner().invoke(app, ["eval", "--model", str(s["model_dir"]), "--catalog", str(s["cat"]),
                                   "--queries", str(s["qfile"]), "--qrels", str(s["qrels"]),
                                   "--grocery-catalog", str(s["grocery"]), "--grocery-stage1-epochs", "1",
                                   "--cache-dir", str(s["tmp"] / "cache"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "NDCG@10" in res.output  # the headline table
    metrics = json.loads((out / "metrics.json").read_text())
    # The tiny model has no Stage 2 query encoder yet: BM25, MiniLM and the model before Stage 2 (alone
    # and fused with BM25, as search --hybrid ranks).
    assert list(metrics["retrieval"]) == ["BM25 (title + attributes)", "MiniLM (query vs title)",
                                          "dashclip text tower (before Stage 2)",
                                          "dashclip text tower (before Stage 2) + BM25, RRF (search --hybrid)"]
    assert set(metrics["headline"]) == set(metrics["retrieval"])
    bm25 = metrics["retrieval"]["BM25 (title + attributes)"]
    assert bm25["n_queries"] == 3 and set(bm25["per_style"]) == {"keyword", "intent"}
    # "red shirt" and "black watch" are exact toy titles: BM25 ranks them first.
    assert bm25["per_style"]["keyword"]["mrr"] == 1.0
    for name, m in metrics["relevance"].items():
        assert 0.0 <= m["mean_auc_2_vs_0"] <= 1.0, name
    # Aisle prediction for the toy catalog's category, three embedding kinds, two classifiers.
    assert set(metrics["category"]) >= {"fused", "image", "text"}
    assert set(metrics["category"]["fused"]["category"]) >= {"logreg", "knn", "n_test"}
    # Grocery transfer: zero-shot and after Stage 1 on the train photos (trained here, 1 epoch).
    assert set(metrics["grocery"]) == {"zero-shot", "after Stage 1 on grocery train"}
    assert metrics["grocery"]["zero-shot"]["n_photos"] == 3
    assert (out / "grocery-stage1" / "model" / "config.json").is_file()
    for name in ("recall_at_k.png", "confusion_aisles.png", "pca_fused.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert "| dashclip text tower (before Stage 2) |" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3

    # One code path: the benchmark scripts' functions give the report's numbers.
    catalog = Catalog.open(s["cat"])
    queries, qrels = load_queries(s["qfile"]), read_qrels_tsv(s["qrels"])
    texts, styles = [q["query"] for q in queries], {q["qid"]: q["style"] for q in queries}
    qids = [q["qid"] for q in queries]
    direct = evaluate_rankings(dict(zip(qids, bm25_rankings(catalog, texts))), qrels, styles)
    assert direct["overall"]["ndcg@10"] == pytest.approx(bm25["overall"]["ndcg@10"])
    assert direct["per_style"] == {k: {kk: v[kk] for kk in direct["per_style"][k]} for k, v in bm25["per_style"].items()}
    emb = load_embeddings(s["model_dir"] / "embeddings")
    ids = retrieval_products(catalog, emb.ids)["id"].tolist()
    vectors = np.asarray(emb.vectors["fused"])[report.align(emb, ids)]
    ranked = model_rankings(s["model"], vectors, ids, texts, method="encode_text")
    direct = evaluate_rankings(dict(zip(qids, ranked)), qrels, styles)
    before = metrics["retrieval"]["dashclip text tower (before Stage 2)"]["overall"]
    assert {k: direct["overall"][k] for k in ("ndcg@10", "recall@100", "mrr")} == \
        pytest.approx({k: before[k] for k in ("ndcg@10", "recall@100", "mrr")})


@pytest.fixture(scope="module")
def stage1(setup):
    """The grocery Stage 1 run dir: the end-to-end test's (1 epoch, reused here), or made now when that
    test was not run."""
    from dashclip.evaluation.grocery import pretrain_on_split

    s = setup
    stage1 = s["tmp"] / "report" / "grocery-stage1"
    pretrain_on_split(s["grocery"], stage1, config="tiny", image_size=32, epochs=1,
                      cache_dir=str(s["tmp"] / "cache" / "image-features"))
    return stage1


def _no_training(monkeypatch):
    """Stage 1 must not run: calling it fails the test."""
    import dashclip.training.pretrain as pretrain_module

    def refuse(*args, **kwargs):
        raise AssertionError("Stage 1 was trained again instead of reused")
    monkeypatch.setattr(pretrain_module, "pretrain", refuse)


def _stamps(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_run_eval_returns_the_headline_and_reuses_grocery_stage1(setup, stage1, monkeypatch):
    s = setup
    out = s["tmp"] / "report2"
    shutil.copytree(stage1, out / "grocery-stage1")        # a finished Stage 1 run in the report dir
    before = _stamps(out / "grocery-stage1")
    _no_training(monkeypatch)
    lines = []
    paths = report.run_eval(s["model_dir"], s["cat"], out, queries_path=s["qfile"], qrels_path=s["qrels"],
                            heldout_only=True, baselines=False, log=lines.append,
                            grocery_catalog_dir=s["grocery"], grocery_stage1_epochs=1,
                            cache_dir=s["tmp"] / "cache")
    assert _stamps(out / "grocery-stage1") == before      # reused: not a file rewritten
    metrics = json.loads(paths["metrics"].read_text())
    assert set(metrics["grocery"]) == {"zero-shot", "after Stage 1 on grocery train"}
    assert metrics["meta"]["grocery_model_dir"] == str(out / "grocery-stage1" / "model")
    assert list(paths["headline"]) == ["dashclip text tower (before Stage 2)"]
    row = paths["headline"]["dashclip text tower (before Stage 2)"]
    assert set(row) == {"ndcg@10", "recall@100", "mrr"} and all(0.0 <= v <= 1.0 for v in row.values())
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["headline"] == paths["headline"] and metrics["meta"]["heldout_only"] is True
    assert metrics["retrieval"]["dashclip text tower (before Stage 2)"]["n_queries"] == 1  # t003 only


def test_embeddings_of_another_model_are_a_clear_error(setup, tmp_path):
    s = setup
    other = dashclip.create_model("tiny", pretrained=False, embed_dim=16)
    other.save(tmp_path / "other")
    res = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "other"), "--catalog", str(s["cat"]),
                                   "--embeddings", str(s["model_dir"] / "embeddings"), "--out", str(tmp_path / "r")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "embeddings were made with model" in text and "Traceback" not in text


def test_grocery_only_eval_reuses_the_stage1_run_and_refuses_other_settings(setup, stage1, monkeypatch):
    from dashclip.evaluation.grocery import pretrain_on_split

    s = setup
    before = _stamps(stage1)
    _no_training(monkeypatch)
    assert pretrain_on_split(s["grocery"], stage1, config="tiny", image_size=32, epochs=1) == stage1 / "model"
    assert _stamps(stage1) == before
    with pytest.raises(ValueError, match="other settings"):
        pretrain_on_split(s["grocery"], stage1, config="tiny", image_size=32, epochs=2)
    out = s["tmp"] / "grocery-only"
    res = CliRunner().invoke(app, ["eval", "--model", str(s["model_dir"]), "--grocery-catalog", str(s["grocery"]),
                                   "--grocery-model", str(stage1 / "model"), "--cache-dir", str(s["tmp"] / "cache"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["grocery"]) == {"zero-shot", "after Stage 1 on grocery train"}
    assert "retrieval" not in metrics and "category" not in metrics
    res = CliRunner().invoke(app, ["eval", "--model", str(s["model_dir"]), "--out", str(out)])
    assert res.exit_code == 2 and "give --catalog, --grocery-catalog, or both" in " ".join(res.output.split())


def test_grocery_photos_through_the_feature_cache_match_encode_image(setup):
    from dashclip.evaluation.evaluators import GroceryEvaluator

    s = setup
    grocery = Catalog.open(s["grocery"])
    direct = GroceryEvaluator(grocery)(s["model"])
    cached = GroceryEvaluator(grocery, feature_cache_dir=s["tmp"] / "features")(s["model"])
    assert list((s["tmp"] / "features").iterdir())  # the photos' features were cached
    for kind in ("fused", "text", "image"):  # float16 features: the same rankings on this tiny set
        assert cached[kind] == pytest.approx(direct[kind]), kind
    assert cached["n_photos"] == direct["n_photos"] == 3 and cached["n_photos_unreadable"] == 0
