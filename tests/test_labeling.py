"""Labeling core: query pool, candidates, seed grades, the grade table, sharded grading, agreement, export."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.data.catalog import Catalog
from dashclip.labeling import load_grades
from dashclip.labeling.candidates import DenseRetriever, pick_candidates
from dashclip.labeling.evaluate import agreement
from dashclip.labeling.finetune_export import export_finetune
from dashclip.labeling.grades import split_by_query
from dashclip.labeling.grading import grade_pairs
from dashclip.labeling.labelers import Grade
from dashclip.labeling.queries import GENDER_PHRASES, make_typo, read_queries, synthesize_queries
from dashclip.labeling.seed import seed_from_qrels
from dashclip.settings import is_heldout_qid
from test_labeling_support import toy_qrels, toy_queries, write_catalog


@pytest.fixture(scope="module")
def cat_dir(tmp_path_factory):
    return write_catalog(tmp_path_factory.mktemp("labeling") / "cat")


@pytest.fixture(scope="module")
def cat(cat_dir):
    return Catalog.open(cat_dir)


def test_synthesized_queries_are_distinct_real_combinations(cat):
    q = synthesize_queries(cat, n=60, seed=0, typo_rate=0.0)
    assert len(q) == 60 and q["query"].is_unique
    assert (q["query"] == q["query"].str.lower()).all()
    assert not q["qid"].map(is_heldout_qid).any()  # synthesized qids are never mistaken for held-out ones
    assert q["template"].nunique() >= 6
    for r in q.itertuples():
        p = cat.product(r.product_id)
        if r.template in ("colour type", "colour type gender"):
            assert p["baseColour"].lower() in r.query  # the colour is the source product's own
        if r.template == "gender type":     # a word for the source product's own gender
            assert r.query.split()[0] in GENDER_PHRASES[p["gender"].lower()][0]
    # singular and plural forms of a type both occur
    assert q["query"].str.contains(r"\bjean\b").any() and q["query"].str.contains(r"\bjeans\b").any()
    assert q["query"].str.contains(r"for (?:him|her|men|women|my wife|my husband|ladies|boyfriend)").any()


def test_synthesis_excludes_given_queries_and_is_deterministic(cat):
    first = synthesize_queries(cat, n=30, seed=1)
    banned = first["query"].head(5).tolist()
    again = synthesize_queries(cat, n=30, seed=1, exclude=[b.upper() for b in banned])
    assert not set(banned) & set(again["query"])
    assert synthesize_queries(cat, n=30, seed=1)["query"].tolist() == first["query"].tolist()


def test_typo_changes_one_long_word():
    """Exactly one word of 5+ letters gets one edit (a dropped, doubled or swapped letter); the
    other words are kept; a text without such a word gets no typo."""
    from dashclip.models.speller import edit_distance

    rng = np.random.default_rng(0)
    typos = [make_typo("a black sandals", rng) for _ in range(30)]
    changed = set()
    for t in typos:
        words = t.split()
        assert len(words) == 3 and words[0] == "a"                  # a short word is never touched
        diff = [i for i, (w, orig) in enumerate(zip(words, ["a", "black", "sandals"])) if w != orig]
        assert len(diff) == 1, t                                    # one word changed, never none, never two
        i = diff[0]
        assert edit_distance(words[i], ["a", "black", "sandals"][i]) == 1, t
        changed.add(i)
    assert changed == {1, 2}                                        # either long word can get the typo
    assert len({len(t) for t in typos}) == 3                        # dropped, swapped and doubled letters all occur
    assert make_typo("a red hat", rng) is None


def test_read_queries_names_bad_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"qid": "a1", "query": "red shirt"}\n{"qid": "a2", "query": "  "}\n')
    with pytest.raises(ValueError, match="q.jsonl: line 2"):
        read_queries(f)
    t = tmp_path / "q.txt"
    t.write_text("red shirt\n\nblue jeans\n")
    assert read_queries(t)["query"].tolist() == ["red shirt", "blue jeans"]


def test_candidates_bm25_dense_random_deduplicated(cat):
    ids = cat.products["id"].to_numpy()
    target = ids[7]

    # A fake "current model": every query lands on product `target` first, then the next ones.
    vecs = np.eye(len(ids), dtype=np.float32)
    enc = lambda texts: np.tile(np.linspace(1, 0.5, len(ids), dtype=np.float32)[np.argsort(np.argsort(ids != target))], (len(texts), 1))
    dense = DenseRetriever(enc, ids, vecs, name="fake")
    queries = pd.DataFrame({"qid": ["q1", "q2"], "query": ["red jeans", "zzzz"]})
    df = pick_candidates(cat, queries, k_bm25=5, k_dense=3, n_random=4, dense=dense, seed=0)
    assert not df.duplicated(["qid", "product_id"]).any()
    q1 = df[df["qid"] == "q1"]
    assert (q1["source"] == "bm25").sum() == 5
    top_bm25 = cat.product(q1[q1["source"] == "bm25"]["product_id"].iloc[0])
    assert top_bm25["category"] == "Jeans" and top_bm25["baseColour"] == "Red"
    assert target in q1["product_id"].tolist()
    # a query BM25 knows nothing about still gets dense and random candidates, never zero-score BM25 ones
    q2 = df[df["qid"] == "q2"]
    assert set(q2["source"]) <= {"fake", "random"} and (q2["source"] == "fake").sum() == 3
    assert df["product_id"].dtype == ids.dtype


def test_seed_from_qrels_grades_candidates(cat, cat_dir):
    queries = pd.DataFrame(toy_queries())[["qid", "query"]]
    qrels = toy_qrels(cat_dir)
    seed = seed_from_qrels(cat, queries, qrels, k_bm25=8, n_random=3, k_dense=0)
    assert list(seed.columns) == ["qid", "query", "product_id", "grade", "confidence", "labeler", "labeler_version"]
    assert (seed["confidence"] == 1.0).all() and set(seed["grade"]) == {0, 1, 2}
    lookup = {(r.qid, r.product_id): r.label for r in qrels.itertuples()}
    for r in seed.itertuples():
        assert r.grade == lookup.get((r.qid, r.product_id), 0)


def test_load_grades_checks_and_filters(tmp_path):
    good = pd.DataFrame({"qid": ["a1", "a3"], "query": ["x", "y"], "product_id": [1, 2], "grade": [2, 0],
                         "confidence": [0.9, 0.4], "labeler": "m", "labeler_version": "v"})
    (tmp_path / "g").mkdir()
    good.to_parquet(tmp_path / "g" / "grades-00000.parquet")
    good.assign(qid=["a4", "a5"]).to_parquet(tmp_path / "g" / "grades-00001.parquet")
    seed = good.assign(confidence=1.0)
    seed.to_parquet(tmp_path / "seed.parquet")
    df = load_grades([tmp_path / "g", tmp_path / "seed.parquet"], min_confidence=0.5)
    assert len(df) == 4 and df["confidence"].min() >= 0.5
    train, held = split_by_query(load_grades(tmp_path / "g"))
    assert set(held["qid"]) == {"a3"} and set(train["qid"]) == {"a1", "a4", "a5"}
    good.assign(grade=[2, 5]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: row 1: field 'grade' is 5"):
        load_grades(tmp_path / "bad.parquet")
    good.drop(columns="confidence").to_parquet(tmp_path / "bad2.parquet")
    with pytest.raises(ValueError, match="missing column.*confidence"):
        load_grades(tmp_path / "bad2.parquet")


class FakeLabeler:
    """Grades by a rule; fails (as an LLM would) on queries containing 'broken'; counts every pair seen."""
    name, version = "fake", "1"

    def __init__(self):
        self.seen = []

    def grade(self, pairs):
        self.seen += [(p.query, p.product["id"]) for p in pairs]
        return [Grade(None, 0.0, error="malformed answer", raw="{oops") if "broken" in p.query
                else Grade(2 if p.product["baseColour"].lower() in p.query else 0, 0.75) for p in pairs]


def test_grade_pairs_shards_resume_and_failures(cat, tmp_path):
    ids = cat.products["id"].tolist()
    pairs = pd.DataFrame({"qid": ["q1"] * 24 + ["q2"] * 24 + ["q1"], "query": ["red tshirt"] * 24 + ["broken"] * 24
                          + ["red tshirt"], "product_id": ids[:24] + ids[:24] + [ids[0]]})  # last row repeats
    out = tmp_path / "grades"
    first = FakeLabeler()
    s = grade_pairs(pairs, cat, first, out, shard_size=10, batch_size=4, max_shards=2)
    assert s["shards"] == 5 and s["shards_done"] == 2 and not s["complete"]
    second = FakeLabeler()
    s = grade_pairs(pairs, cat, second, out, shard_size=10, batch_size=4)
    assert s["complete"] and s["failures_total"] == 24
    assert not set(first.seen) & set(second.seen)  # nothing graded twice
    assert len(first.seen) + len(second.seen) == 48
    grades = load_grades(out)
    assert len(grades) == 24 and set(grades["labeler"]) == {"fake"}
    red = grades.merge(cat.products[["id", "baseColour"]], left_on="product_id", right_on="id")
    assert ((red["baseColour"] == "Red") == (red["grade"] == 2)).all()
    fails = pd.concat([pd.read_parquet(f) for f in sorted(out.glob("failures-*.parquet"))])
    assert len(fails) == 24 and (fails["raw"] == "{oops").all() and (fails["query"] == "broken").all()
    third = FakeLabeler()
    grade_pairs(pairs, cat, third, out)  # a finished run re-run grades nothing
    assert third.seen == []
    other = FakeLabeler()
    other.version = "2"
    with pytest.raises(ValueError, match="holds grades from labeler fake 1"):
        grade_pairs(pairs, cat, other, out)


def test_agreement_figures():
    truth = [0, 0, 1, 2, 2, 2]
    pred = [0, 1, 1, 2, 2, 0]
    r = agreement(truth, pred, confidence=[0.9, 0.55, 0.95, 0.9, 0.9, 0.4])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    from sklearn.metrics import cohen_kappa_score
    assert r["kappa_quadratic"] == pytest.approx(cohen_kappa_score(truth, pred, weights="quadratic"))
    top = next(x for x in r["by_confidence"] if x["min_confidence"] == 0.6)
    assert top["coverage"] == pytest.approx(4 / 6) and top["accuracy"] == 1.0
    assert agreement([0, 1, 2], [0, 1, 2])["kappa_quadratic"] == pytest.approx(1.0)


def test_export_finetune_chat_format(cat, cat_dir, tmp_path):
    queries = pd.DataFrame(toy_queries())[["qid", "query"]]
    seed = seed_from_qrels(cat, queries, toy_qrels(cat_dir), k_bm25=4, n_random=1, k_dense=0)
    counts = export_finetune(seed, cat, tmp_path / "train.jsonl", tmp_path / "val.jsonl")
    lines = [json.loads(l) for l in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(lines) == counts["train"] == (~seed["qid"].map(is_heldout_qid)).sum()
    for line in lines:
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert json.loads(line["messages"][2]["content"])["grade"] in (0, 1, 2)
        assert "Title:" in line["messages"][1]["content"]
    held_queries = set(seed.loc[seed["qid"].map(is_heldout_qid), "query"])
    assert not any(l["messages"][1]["content"].split("\n")[0][7:] in held_queries for l in lines)


def test_cli_synthesize_candidates_seed(cat_dir, tmp_path):
    runner = CliRunner()
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps({"qid": q["qid"], "query": q["query"]}) for q in toy_queries()))
    r = runner.invoke(app, ["labels", "synthesize-queries", "--catalog", str(cat_dir), "--out",
                            str(tmp_path / "pool.jsonl"), "--n", "40", "--exclude", str(dev), "--exclude-all"])
    assert r.exit_code == 0, r.output
    pool = read_queries(tmp_path / "pool.jsonl")
    assert len(pool) == 40 and not set(pool["query"]) & {q["query"] for q in toy_queries()}
    r = runner.invoke(app, ["labels", "candidates", "--catalog", str(cat_dir), "--queries",
                            str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "pairs.parquet"),
                            "--k-bm25", "5", "--n-random", "2"])
    assert r.exit_code == 0, r.output
    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    assert set(pairs["qid"]) == set(pool["qid"]) and not pairs.duplicated(["qid", "product_id"]).any()
    qrels = toy_qrels(cat_dir)
    qrels.loc[qrels.index[3], "label"] = 7
    qrels.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    r = runner.invoke(app, ["labels", "seed-from-qrels", "--catalog", str(cat_dir), "--queries", str(dev),
                            "--qrels", str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "seed.parquet")])
    assert r.exit_code == 2 and "bad.tsv: row 5: field 'label' is 7" in " ".join(r.output.split())
    assert not (tmp_path / "seed.parquet").exists()
    r = runner.invoke(app, ["labels", "candidates", "--catalog", str(tmp_path / "nope"), "--queries", str(dev),
                            "--out", str(tmp_path / "x.parquet")])
    assert r.exit_code == 2 and "not a dashclip catalog" in " ".join(r.output.split())


def test_cli_pool_never_holds_a_heldout_query(cat_dir, tmp_path):
    # The evaluation queries are ones the synthesizer would emit itself (taken from its own pool),
    # written in other case and spacing: the held-out ones (qid % 3 == 0) must be dropped, the others kept.
    natural = synthesize_queries(Catalog.open(cat_dir), n=40, seed=0, typo_rate=0.0)["query"].tolist()
    dev_rows = [{"qid": f"q{i:03d}", "query": "  " + q.upper().replace(" ", "   ")} for i, q in enumerate(natural[:12], 1)]
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps(r) for r in dev_rows))
    r = CliRunner().invoke(app, ["labels", "synthesize-queries", "--catalog", str(cat_dir), "--out",
                                 str(tmp_path / "pool.jsonl"), "--n", "40", "--typo-rate", "0", "--exclude", str(dev)])
    assert r.exit_code == 0, r.output
    pool = {" ".join(q.lower().split()) for q in read_queries(tmp_path / "pool.jsonl")["query"]}
    held = {" ".join(d["query"].lower().split()) for d in dev_rows if is_heldout_qid(d["qid"])}
    kept = {" ".join(d["query"].lower().split()) for d in dev_rows if not is_heldout_qid(d["qid"])}
    assert len(held) == 4 and not held & pool
    assert kept <= pool  # only the held-out split is excluded by default


KILLED_RUN = r"""
import sys, time
import pandas as pd
from dashclip.data.catalog import Catalog
from dashclip.labeling.grading import grade_pairs
from dashclip.labeling.labelers import Grade

class SlowLabeler:  # the same rule as FakeLabeler, slow enough to be killed mid-shard; logs what it saw
    name, version = "fake", "1"
    def grade(self, pairs):
        with open(sys.argv[4], "a") as f:
            f.writelines(f"{p.query}\t{p.product['id']}\n" for p in pairs)
        time.sleep(0.05)
        return [Grade(2 if p.product["baseColour"].lower() in p.query else 0, 0.75) for p in pairs]

grade_pairs(pd.read_parquet(sys.argv[2]), Catalog.open(sys.argv[1]), SlowLabeler(), sys.argv[3],
            shard_size=8, batch_size=2)
"""


def test_grading_killed_midway_resumes_without_loss_or_repeats(cat, cat_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    ids = cat.products["id"].tolist()
    queries = ["red tshirt", "blue jeans", "black watch"]
    pairs = pd.DataFrame({"qid": [f"q{i}" for i, q in enumerate(queries) for _ in ids],
                          "query": [q for q in queries for _ in ids], "product_id": ids * len(queries)})
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    out, log = tmp_path / "grades", tmp_path / "seen.tsv"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(cat_dir), str(tmp_path / "pairs.parquet"),
                             str(out), str(log)])
    deadline = time.time() + 60

    def inside_a_shard_after_three():  # >= 3 shards written and the next one begun
        done = len(list(out.glob("grades-*.parquet")))
        seen = len(log.read_text().splitlines()) if log.exists() else 0
        return done >= 3 and seen > 8 * done

    while not inside_a_shard_after_three() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up, no finally: a power cut mid-shard
    proc.wait()
    finished = sorted(out.glob("grades-*.parquet"))
    n_shards = -(-len(pairs) // 8)
    assert 3 <= len(finished) < n_shards, "the run was not killed mid-way"
    seen_before = log.read_text().splitlines()
    assert len(seen_before) > 8 * len(finished)  # it was inside an unfinished shard when killed

    resumed = FakeLabeler()
    s = grade_pairs(pairs, cat, resumed, out, shard_size=8, batch_size=2)
    assert s["complete"] and s["shards_done"] == n_shards
    done_before = pd.concat([pd.read_parquet(f) for f in finished])
    # The resumed run graded exactly the pairs that no finished shard held: none twice, none lost.
    key = lambda q, p: (q, int(p))  # noqa: E731
    again = {key(q, p) for q, p in resumed.seen}
    assert len(again) == len(resumed.seen) and not again & {key(q, p) for q, p in
                                                             zip(done_before["query"], done_before["product_id"])}
    grades = load_grades(out)
    assert len(grades) == len(pairs) and not grades.duplicated(["query", "product_id"]).any()
    assert {key(q, p) for q, p in zip(grades["query"], grades["product_id"])} == \
        {key(q, p) for q, p in zip(pairs["query"], pairs["product_id"])}
    truth = grades.merge(cat.products[["id", "baseColour"]], left_on="product_id", right_on="id")
    assert (truth["grade"] == [2 if c.lower() in q else 0 for c, q in zip(truth["baseColour"], truth["query"])]).all()


def test_report_markdown_confusion_rows_are_seed_grades():
    from dashclip.labeling.evaluate import agreement, report_markdown

    report = {**agreement([0, 1, 2, 2, 0], [0, 2, 2, 1, 0]), "pairs": 5, "labeler": "x", "labeler_version": "1"}
    md = report_markdown(report)
    assert "| seed \\ labeler | 0 | 1 | 2 |" in md
    assert "| 0 | 2 | 0 | 0 |" in md and "| 1 | 0 | 0 | 1 |" in md and "| 2 | 0 | 1 | 1 |" in md
