"""`dashclip train shop.toml`: the config is checked (unknown keys named with a suggestion, wrong types,
missing columns, bad grades, an empty query log), and a tiny text-only shop runs end to end."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from dashclip.pipeline.config import ConfigError, load_config, parse_config

COLORS = ["red", "blue", "green", "black", "white"]
KINDS = ["drill", "hammer", "faucet", "lamp", "rug", "shovel", "ladder", "mailbox"]


def tiny_shop(root, eval_grades: bool = True):
    """A text-only shop: 40 products, 16 graded queries (12 train, 4 eval), a query log."""
    root.mkdir(parents=True, exist_ok=True)
    products = [{"sku": 1000 + i, "name": f"{c} {k} model {i}"}
                for i, (c, k) in enumerate((c, k) for k in KINDS for c in COLORS)]
    pd.DataFrame(products).to_csv(root / "products.csv", index=False)
    rows = []
    for qi, (c, k) in enumerate([(c, k) for k in KINDS for c in COLORS[:2]]):
        q = f"{c} {k}"
        for p in products:
            if k in p["name"]:
                rows.append({"qid": f"q{qi}", "query": q, "product_id": p["sku"],
                             "grade": 2 if c in p["name"] else 1})
        rows.append({"qid": f"q{qi}", "query": q, "product_id": products[(qi * 7) % 40]["sku"], "grade": 0})
    rows.append({"qid": "q99", "query": "ghost product", "product_id": 424242, "grade": 2})  # not in the catalog
    grades = pd.DataFrame(rows).drop_duplicates(["qid", "product_id"])
    is_eval = grades["qid"].isin(["q1", "q6", "q11", "q14"])
    grades[~is_eval].to_csv(root / "train.csv", index=False)
    grades[is_eval].to_csv(root / "dev.csv", index=False)
    pd.DataFrame({"query": ["red drill", "cheap rug", "blue lamp", "red drill", "green ladder"],
                  "n": [5, 2, 3, 1, 1]}).to_csv(root / "log.csv", index=False)
    toml = f'''name = "tiny-shop"
out = "{(root / 'out').as_posix()}"
model = "tiny"

[catalog]
source = "products.csv"
id = "sku"
title = "name"

[queries]
log = "log.csv"
count_column = "n"

[grades]
train = "train.csv"
{'eval = "dev.csv"' if eval_grades else 'eval_fraction = 0.25'}

[labeler]
epochs = 1
max_length = 32
heldout_check = false

[labels]
k_bm25 = 4
k_dense = 3
n_random = 2
min_ratio = 5.0

[stage2]
epochs = 1
max_steps = 3
batch_size = 8
spelling = false
'''
    (root / "shop.toml").write_text(toml)
    return root / "shop.toml"


def test_config_typo_is_named_with_a_suggestion(tmp_path):
    path = tiny_shop(tmp_path)
    path.write_text(path.read_text().replace("max_steps = 3", "max_step = 3"))
    with pytest.raises(ConfigError, match=r"\[stage2\].*unknown key 'max_step' \(did you mean 'max_steps'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'catalogue' \(did you mean 'catalog'\?\)"):
        parse_config({"catalogue": {"source": "x.csv"}})


def test_config_wrong_type_names_the_key(tmp_path):
    path = tiny_shop(tmp_path)
    path.write_text(path.read_text().replace("max_steps = 3", 'max_steps = "three"'))
    with pytest.raises(ConfigError, match=r"\[stage2\]: max_steps: expected an integer, got str 'three'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\[labeler\] kind = 'gpt'; expected one of cross-encoder, llm"):
        parse_config({"catalog": {"source": "p.csv"}, "grades": {"train": "t.csv"}, "labeler": {"kind": "gpt"}})
    with pytest.raises(ConfigError, match=r"\[catalog\] source is required"):
        parse_config({"grades": {"train": "t.csv"}})
    base = {"catalog": {"source": "p.csv"}, "grades": {"train": "t.csv"}}
    with pytest.raises(ConfigError, match=r"\[photos\] image_size = 8; must be >= 16"):
        parse_config({**base, "photos": {"image_size": 8}})
    assert parse_config({**base, "photos": {"image_size": 224}}).photos.image_size == 224
    with pytest.raises(ConfigError, match=r"\[photos\] regression_weight must be >= 0, not -1.0"):
        parse_config({**base, "photos": {"regression_weight": -1.0}})
    assert parse_config({**base, "photos": {"regression_weight": 0.0}}).photos.regression_weight == 0.0


def test_stage2_loss_settings_reach_the_aligner(tmp_path):
    """[stage2] variant and grade1_weight are what Stage 2's loss is built with; an unset grade1_weight leaves the
    variant's own default (grade 1 masked out for symmetric)."""
    from dashclip.losses.qcc import QCCLoss
    from dashclip.pipeline.steps import stage2_settings

    base = {"catalog": {"source": "p.csv"}, "grades": {"train": "t.csv"}}
    weighted = parse_config({**base, "stage2": {"variant": "symmetric", "grade1_weight": 0.25}})
    config, _ = stage2_settings(weighted, tmp_path / "a")
    assert (config.variant, config.grade1_weight) == ("symmetric", 0.25)
    assert QCCLoss(variant=config.variant, grade1_weight=config.grade1_weight).grade1_weight == 0.25
    plain, _ = stage2_settings(parse_config({**base, "stage2": {"variant": "symmetric"}}), tmp_path / "b")
    assert plain.grade1_weight is None
    assert QCCLoss(variant=plain.variant, grade1_weight=plain.grade1_weight).grade1_weight == 0.0


def test_relative_paths_resolve_next_to_the_toml_then_in_the_data_dir(tmp_path, monkeypatch):
    path = tiny_shop(tmp_path / "shop")
    cfg = load_config(path)
    assert cfg.resolve("products.csv") == tmp_path / "shop" / "products.csv"
    (tmp_path / "data" / "ds").mkdir(parents=True)
    (tmp_path / "data" / "ds" / "g.csv").write_text("query,product_id,grade\n")
    monkeypatch.setenv("DASHCLIP_DATA", str(tmp_path / "data"))
    assert cfg.resolve("ds/g.csv") == tmp_path / "data" / "ds" / "g.csv"


def _run(path, *extra):
    from dashclip.cli import app

    return CliRunner().invoke(app, ["train", str(path), *extra])


def test_missing_grade_column_is_an_error_naming_file_and_column(tmp_path):
    path = tiny_shop(tmp_path)
    pd.read_csv(tmp_path / "train.csv").rename(columns={"grade": "score"}).to_csv(tmp_path / "train.csv", index=False)
    res = _run(path)
    assert res.exit_code != 0
    assert "train.csv: missing column(s) grade" in " ".join(res.output.split())


def test_grade_outside_0_to_2_names_the_row(tmp_path):
    path = tiny_shop(tmp_path)
    df = pd.read_csv(tmp_path / "train.csv")
    df.loc[3, "grade"] = 3
    df.to_csv(tmp_path / "train.csv", index=False)
    res = _run(path)
    assert res.exit_code != 0
    assert "train.csv: row 5: field 'grade' is '3', expected 0, 1 or 2" in " ".join(res.output.split())


def test_missing_catalog_column_is_an_error(tmp_path):
    path = tiny_shop(tmp_path)
    path.write_text(path.read_text().replace('title = "name"', 'title = "product_name"'))
    res = _run(path)
    assert res.exit_code != 0
    assert "product_name" in res.output


def test_empty_query_log_is_an_error(tmp_path):
    path = tiny_shop(tmp_path)
    (tmp_path / "log.csv").write_text("query,n\n")
    res = _run(path)
    assert res.exit_code != 0
    assert "no training queries" in " ".join(res.output.split())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    path = tiny_shop(tmp_path / "shop")
    return tmp_path, path, _run(path)


def test_tiny_text_only_shop_end_to_end(tiny_run):
    import dashclip

    tmp_path, path, res = tiny_run
    assert res.exit_code == 0, res.output
    out = tmp_path / "shop" / "out"
    record = json.loads((out / "pipeline.json").read_text())
    assert list(record["steps"]) == ["import", "stage1", "embed", "labels", "stage2", "photos", "index", "eval"]
    assert record["steps"]["stage1"]["skipped"] is True
    assert record["steps"]["photos"]["skipped"] is True     # no images: no photo head
    # the import facts are data a reader can use: problem counts by code, not a repr
    assert record["steps"]["import"]["problems"] == {} and record["steps"]["import"]["products"] == 40
    labels = record["steps"]["labels"]
    # the grade naming a product not in the catalog is reported, not fatal
    assert labels["human"]["train"]["unknown_product_rows"] == 1
    assert labels["human"]["train"]["unknown_product_examples"] == ["424242"]
    assert labels["graded_pairs"] > 0 and labels["log"]["queries"] == 4    # "red drill" twice is one query
    ev = record["steps"]["eval"]
    assert set(ev["headline"]) >= {"BM25 (titles)", "base encoder (before Stage 2)", "trained query encoder (Stage 2)"}
    report = (out / "report" / "report.md").read_text()
    assert "Shipped in `model/`" in report and "424242" in report
    model = dashclip.load(out / "model")
    assert model.has_query_encoder

    queries = tmp_path / "q.jsonl"
    queries.write_text('{"qid": "a", "query": "red drill"}\n{"qid": "b", "query": "green lamp"}\n')
    from dashclip.cli import app
    res = CliRunner().invoke(app, ["search", "--model", str(out / "model"), "--index", str(out / "index"),
                                   "--queries", str(queries), "--k", "5", "--output", str(tmp_path / "runs.jsonl")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    catalog_ids = set(pd.read_csv(tmp_path / "shop" / "products.csv")["sku"])
    assert [r["qid"] for r in rows] == ["a", "b"]
    assert all(len(r["product_ids"]) == 5 and set(r["product_ids"]) <= catalog_ids for r in rows)

    # the service over a text-only catalog: search, a product without an image, and its image endpoint
    from fastapi.testclient import TestClient

    from dashclip.serving.service import create_app
    with TestClient(create_app(model_dir=out / "model", index_dir=out / "index", catalog_dir=out / "catalog",
                               watch_seconds=0)) as client:
        hits = client.get("/search", params={"q": "blue faucet", "k": 3})
        assert hits.status_code == 200, hits.text
        first = hits.json()["results"][0]
        assert first["image_url"] is None
        product = client.get(f"/products/{first['id']}")
        assert product.status_code == 200 and product.json()["image_url"] is None
        image = client.get(f"/products/{first['id']}/image")
        assert image.status_code == 404 and "has no image" in image.text
        assert client.get("/").status_code == 200          # the web page

    again = _run(path)
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 8


def test_guard_ships_the_base_encoder_when_training_made_things_worse(tiny_run, monkeypatch):
    """The eval step compares the trained query encoder with the base encoder; a worse one is not shipped."""
    import numpy as np
    import torch

    import dashclip
    from dashclip.pipeline import steps

    tmp_path, path, res = tiny_run
    assert res.exit_code == 0, res.output
    out = tmp_path / "shop" / "out"
    record = json.loads((out / "pipeline.json").read_text())
    del record["steps"]["eval"]
    (out / "pipeline.json").write_text(json.dumps(record))
    real = steps.shop_systems

    class Worse:     # the trained system, made to rank at random
        def __init__(self, scorer):
            self.name, self.product_ids = scorer.name, scorer.product_ids

        def scores(self, queries):
            return np.random.default_rng(0).random((len(queries), len(self.product_ids))).astype(np.float32)

    def rigged(r, catalog):
        systems = real(r, catalog)
        return [Worse(s) if s.name == steps.TRAINED else s for s in systems]
    monkeypatch.setattr(steps, "shop_systems", rigged)
    again = _run(path)
    assert again.exit_code == 0, again.output
    ev = json.loads((out / "pipeline.json").read_text())["steps"]["eval"]
    assert ev["headline"][steps.TRAINED]["ndcg@10"] < ev["headline"][steps.BASE]["ndcg@10"]
    assert ev["shipped"].startswith("base encoder") and "worse" in ev["warning"]
    assert "warning" in " ".join(again.output.split())
    assert "**Warning:**" in (out / "report" / "report.md").read_text()
    shipped, base = dashclip.load(out / "model"), dashclip.load(out / "stage1" / "model")
    assert shipped.model_id == base.model_id        # the index still fits
    with torch.no_grad():
        q = ["red drill", "green ladder"]
        assert torch.allclose(shipped.encode_query(q), base.encode_text(q), atol=1e-6)


def test_a_changed_config_section_redoes_that_step_and_the_ones_after_it(tiny_run):
    tmp_path, path, res = tiny_run
    assert res.exit_code == 0, res.output
    before = json.loads((tmp_path / "shop" / "out" / "pipeline.json").read_text())["steps"]
    path.write_text(path.read_text().replace("max_steps = 3", "max_steps = 2"))
    again = _run(path)
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "redoing stage2, photos, index, eval" in text
    assert again.output.count("reused") == 4          # import, stage1, embed, labels
    record = json.loads((tmp_path / "shop" / "out" / "pipeline.json").read_text())
    assert record["steps"]["stage2"]["config_hash"] != before["stage2"]["config_hash"]
    assert record["steps"]["labels"] == before["labels"]


def test_the_eval_step_measures_re_ranking_and_ships_the_re_ranker_only_when_told(tiny_run):
    """[eval] rerank: "report" (default) scores the shipped first stage re-ranked by the fine-tuned labeler
    and ships nothing; "on" ships the labeler as model/reranker/ with its depth, and `dashclip search` then
    re-ranks by default (--no-rerank: the first stage's order); "off" takes it away again."""
    from dashclip.cli import app
    from dashclip.labeling.rerank import RERANKER_DIR

    tmp_path, path, res = tiny_run
    assert res.exit_code == 0, res.output
    out, original = tmp_path / "shop" / "out", path.read_text()
    ev = json.loads((out / "pipeline.json").read_text())["steps"]["eval"]
    rows = [name for name in ev["headline"] if "re-ranked top 20" in name]
    assert len(rows) == 1 and ev["rerank"]["shipped"] is False and "report" in ev["rerank"]["why"]
    assert not (out / "model" / RERANKER_DIR).exists()

    def search(*flags):
        res = CliRunner().invoke(app, ["search", "red drill", "--model", str(out / "model"), "--index",
                                       str(out / "index"), "--k", "5", *flags])
        assert res.exit_code == 0, res.output
        return res.output
    plain = search()
    try:
        path.write_text(original + '\n[eval]\nrerank = "on"\nrerank_depth = 3\n')
        again = _run(path)
        assert again.exit_code == 0, again.output
        ev = json.loads((out / "pipeline.json").read_text())["steps"]["eval"]
        assert ev["rerank"]["shipped"] is True and ev["rerank"]["depth"] == 3
        assert json.loads((out / "model" / RERANKER_DIR / "rerank.json").read_text())["depth"] == 3
        assert "re-ranker (0-2)" in search() and search("--no-rerank") == plain
        assert "re-ranked top 3" in (out / "report" / "report.md").read_text()

        path.write_text(original + '\n[eval]\nrerank = "off"\n')
        again = _run(path)
        assert again.exit_code == 0, again.output
        assert not (out / "model" / RERANKER_DIR).exists() and search() == plain
    finally:
        path.write_text(original)


def test_the_eval_step_records_how_the_index_is_searched_by_default(tiny_run):
    """[eval] default_search: "auto" makes the index hybrid exactly when the fused row beat the vectors alone on
    the evaluation grades (both measured, recorded with the reason); "hybrid" / "dense" are followed as said,
    and `dashclip search` without a flag then ranks as with --hybrid."""
    from dashclip.index import open_index, search_defaults
    from dashclip.pipeline import steps

    tmp_path, path, res = tiny_run
    assert res.exit_code == 0, res.output
    out = tmp_path / "shop" / "out"
    original = path.read_text()
    try:  # the shop file is shared by this module's tests: leave it as found
        path.write_text(path.read_text() + '\n[eval]\nhybrid = true\n')
        again = _run(path)
        assert again.exit_code == 0, again.output
        ev = json.loads((out / "pipeline.json").read_text())["steps"]["eval"]
        fused, alone = ev["headline"][steps.HYBRID]["ndcg@10"], ev["headline"][steps.TRAINED]["ndcg@10"]
        assert ev["default_search"]["hybrid"] == (fused > alone) and f"{fused:.4f}" in ev["default_search"]["why"]
        assert search_defaults(open_index(out / "index").meta)["hybrid"] == (fused > alone)

        path.write_text(path.read_text().replace("hybrid = true\n", 'hybrid = true\ndefault_search = "hybrid"\n'))
        again = _run(path)
        assert again.exit_code == 0, again.output
        assert search_defaults(open_index(out / "index").meta) == {"hybrid": True, "why": '[eval] default_search = "hybrid"'}
        assert "searched **hybrid" in (out / "report" / "report.md").read_text()
        from dashclip.cli import app

        def search(*flags):
            res = CliRunner().invoke(app, ["search", "red drill", "--model", str(out / "model"), "--index",
                                           str(out / "index"), "--k", "10", *flags])
            assert res.exit_code == 0, res.output
            return res.output
        assert search() == search("--hybrid") and "hybrid: RRF scores" in search()

        path.write_text(path.read_text().replace('default_search = "hybrid"', 'default_search = "sometimes"'))
        bad = _run(path)
        assert bad.exit_code != 0 and "default_search" in bad.output and "sometimes" in bad.output
    finally:
        path.write_text(original)


def test_an_approximate_index_tunes_on_the_shops_training_queries(tiny_run, monkeypatch, tmp_path):
    """The index step hands its training queries (labels/pool_pairs.parquet: the log's and the pool's, never the
    eval's) to the build, so an HNSW index (above EXACT_MAX products; 1 here) tunes efSearch on them."""
    from dashclip.index import faiss_index, open_index
    from dashclip.pipeline import steps

    run_dir, path, res = tiny_run
    assert res.exit_code == 0, res.output
    out = run_dir / "shop" / "out"
    monkeypatch.setattr(faiss_index, "EXACT_MAX", 1)
    work = tmp_path / "copy"
    import shutil
    shutil.copytree(out, work, ignore=shutil.ignore_patterns("index"))
    # the config as the run read it: other tests edit the shop file in place
    data = json.loads((out / "pipeline.json").read_text())["config"]
    cfg = parse_config(data, str(path), base_dir=data.pop("base_dir"))
    facts = steps.step_index(steps.Run(work, cfg, "tiny-shop", log=lambda *_: None))
    trained = pd.read_parquet(out / "labels" / "pool_pairs.parquet")["query"].str.strip().nunique()
    meta = open_index(work / "index").meta
    assert meta["factory"] == "HNSW32,Flat" and meta["ef_search_tuned_on"] == f"{trained} queries"
    assert facts["ef_search"] == meta["ef_search"] and facts["ef_search_tuned_on"] == f"{trained} queries"
    evaluated = set(pd.read_csv(run_dir / "shop" / "dev.csv")["query"])
    assert not evaluated & set(pd.read_parquet(out / "labels" / "pool_pairs.parquet")["query"])


def wands_shaped(root):
    """The tiny shop in the shape of Wayfair's WANDS files: tab-separated files named .csv, grades written as
    Exact / Partial / Irrelevant, and a label file that names queries by id (their texts in query.csv)."""
    path = tiny_shop(root)
    products = pd.read_csv(root / "products.csv")
    products.rename(columns={"sku": "product_id", "name": "product_name"}).to_csv(
        root / "product.csv", sep="\t", index=False)
    grades = pd.concat([pd.read_csv(root / "train.csv"), pd.read_csv(root / "dev.csv")])
    queries = grades[["query"]].drop_duplicates().reset_index(drop=True)
    queries["query_id"] = queries.index + 100
    queries[["query_id", "query"]].to_csv(root / "query.csv", sep="\t", index=False)
    labels = grades.merge(queries, on="query")
    labels["label"] = labels["grade"].map({2: "Exact", 1: "partial", 0: "Irrelevant"})   # any case
    labels[["query_id", "product_id", "label"]].to_csv(root / "label.csv", sep="\t", index=False)
    toml = path.read_text()
    toml = toml.replace('source = "products.csv"\nid = "sku"\ntitle = "name"',
                        'source = "product.csv"\nid = "product_id"\ntitle = "product_name"')
    toml = toml.replace('log = "log.csv"\ncount_column = "n"', 'log = "query.csv"')
    toml = toml.replace('train = "train.csv"\neval = "dev.csv"',
                        'train = "label.csv"\neval_fraction = 0.25\nqueries = "query.csv"\ngrade_column = "label"\n'
                        'grade_map = { Exact = 2, Partial = 1, Irrelevant = 0 }')
    path.write_text(toml)
    return path, grades


def test_a_wands_shaped_shop_reads_tabs_in_csv_a_grade_map_and_query_ids(tmp_path):
    from dashclip.pipeline.steps import check_inputs, read_grade_table, read_query_log

    path, grades = wands_shaped(tmp_path)
    cfg = load_config(path)
    check_inputs(cfg)
    df, grade, query, first_row = read_grade_table(tmp_path / "label.csv", cfg, "train")
    assert first_row == 2
    got = sorted(zip(query, df["product_id"].astype(int), grade.astype(int)))
    assert got == sorted(zip(grades["query"], grades["product_id"], grades["grade"]))
    assert sorted(read_query_log(tmp_path / "query.csv", cfg)["query"]) == sorted(grades["query"].unique())


def test_a_wands_shaped_shop_trains_end_to_end(tmp_path):
    path, grades = wands_shaped(tmp_path)
    res = _run(path)
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert record["steps"]["import"]["products"] == 40
    human = record["steps"]["labels"]["human"]
    assert human["train"]["rows"] == len(grades)                # every label row, its query found by id
    assert human["train"]["unknown_product_rows"] == 1          # the ghost product
    assert human["eval"]["rows_kept"] > 0 and human["train_pairs"] > 0


def test_a_grade_the_map_lacks_names_the_row_and_the_map(tmp_path):
    path, _ = wands_shaped(tmp_path)
    labels = pd.read_csv(tmp_path / "label.csv", sep="\t")
    labels.loc[4, "label"] = "Exactish"
    labels.to_csv(tmp_path / "label.csv", sep="\t", index=False)
    res = _run(path)
    assert res.exit_code != 0
    out = " ".join(res.output.split())
    assert "label.csv: row 6: field 'label' is 'Exactish', expected one of 'Exact', 'Partial', 'Irrelevant'" in out


def test_a_query_id_the_queries_table_lacks_names_the_row(tmp_path):
    path, _ = wands_shaped(tmp_path)
    labels = pd.read_csv(tmp_path / "label.csv", sep="\t")
    labels.loc[2, "query_id"] = 999
    labels.to_csv(tmp_path / "label.csv", sep="\t", index=False)
    res = _run(path)
    assert res.exit_code != 0
    out = " ".join(res.output.split())
    assert "label.csv: row 4: field 'query_id' is '999', a query id that [grades] queries" in out


def test_grade_map_values_must_be_grades():
    with pytest.raises(ConfigError, match=r"grade_map: 'Exact' = 3; grades are 0, 1 or 2"):
        parse_config({"catalog": {"source": "p.csv"}, "grades": {"train": "g.csv", "grade_map": {"Exact": 3}}})
    with pytest.raises(ConfigError, match="expected a table"):
        parse_config({"catalog": {"source": "p.csv"}, "grades": {"train": "g.csv", "grade_map": "Exact=2"}})


def test_a_sample_of_a_jsonl_catalog_keeps_its_columns(tmp_path):
    from dashclip.data.catalog import Catalog

    path = tiny_shop(tmp_path)
    products = pd.read_csv(tmp_path / "products.csv")
    products.to_json(tmp_path / "products.jsonl", orient="records", lines=True)
    path.write_text(path.read_text().replace('source = "products.csv"', 'source = "products.jsonl"\nsample = 12'))
    from dashclip.pipeline.steps import Run, step_import

    run = Run(tmp_path / "out", load_config(path), "train")
    facts = step_import(run)
    assert facts["products"] == 12 and facts["rows_dropped"] == 0
    catalog = Catalog.open(tmp_path / "out" / "catalog")
    names = dict(zip(products["sku"], products["name"]))
    assert all(names[int(pid)] == title for pid, title in zip(catalog.products["id"], catalog.products["title"]))


def test_every_example_config_is_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
    assert {p.name for p in examples} >= {"homedepot.toml", "wands.toml"}
    for p in examples:
        load_config(p)       # unknown keys, wrong types and impossible values are errors
    wands = load_config(examples[[p.name for p in examples].index("wands.toml")])
    assert wands.grades.grade_map == {"Exact": 2, "Partial": 1, "Irrelevant": 0}


def test_the_labeler_learns_from_a_capped_sample_by_default():
    # a shop with hundreds of thousands of grades must not train the labeler for hours on a laptop by default
    from dashclip.pipeline.config import LabelerConfig

    assert 0 < LabelerConfig().max_pairs <= 50_000
    assert parse_config({"catalog": {"source": "p.csv"}, "grades": {"train": "g.csv"},
                         "labeler": {"max_pairs": 0}}).labeler.max_pairs == 0     # 0: every pair, when asked


def test_unreadable_grade_files_are_named_with_what_to_do(tmp_path):
    path = tiny_shop(tmp_path)
    (tmp_path / "train.csv").write_bytes("query,product_id,grade\nred drill,1000,2\nbl\xe5 lamp,1001,1\n".encode("latin-1"))
    out = " ".join(_run(path).output.split())
    assert "train.csv: line 3: not valid utf-8 text" in out and "save it as UTF-8" in out
    (tmp_path / "grades.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    path.write_text(path.read_text().replace('train = "train.csv"', 'train = "grades.xlsx"'))
    out = " ".join(_run(path).output.split())
    assert "grades.xlsx: spreadsheet files are not read; save it as CSV" in out
    (tmp_path / "log.txt").write_bytes("red drill\nbl\xe5 lamp\n".encode("latin-1"))
    path.write_text(path.read_text().replace('train = "grades.xlsx"', 'train = "dev.csv"')
                    .replace('log = "log.csv"', 'log = "log.txt"'))
    out = " ".join(_run(path).output.split())
    assert "log.txt: line 2: not valid UTF-8 text" in out


def test_a_sample_reports_the_source_rows_it_could_not_parse(tmp_path):
    path = tiny_shop(tmp_path)
    lines = (tmp_path / "products.csv").read_text().splitlines()
    width = lines[0].count(",")
    lines.insert(3, "oops" + "," * (width + 2))             # line 4: more fields than the header
    (tmp_path / "products.csv").write_text("\n".join(lines) + "\n")
    path.write_text(path.read_text().replace('source = "products.csv"', 'source = "products.csv"\nsample = 12'))
    from dashclip.pipeline.steps import Run, step_import

    run = Run(tmp_path / "out", load_config(path), "train")
    logged = []
    run.log = logged.append
    facts = step_import(run)
    assert facts["products"] == 12 and facts["sample_source_rows_malformed"] == 1
    assert any("1 row(s)" in m and "line 4:" in m and "products.csv" in m for m in logged), logged
