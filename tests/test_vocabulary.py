"""The shop vocabulary and the query styles it makes possible: synonym, intent, long, misspelling."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from dashclip.data.catalog import Catalog
from dashclip.labeling.candidates import ReadingSampler, pick_candidates
from dashclip.labeling.queries import make_misspelling, reading_of, style_mix, synthesize_queries
from dashclip.labeling.vocabulary import Vocabulary, vocabulary_for
from test_labeling_support import write_catalog

TOY_VOCAB = {
    "name": "toy",
    "roles": {"colour": "baseColour"},
    "category": {"Tshirts": ["tee", "t-shirt"], "Sandals": ["chappals", "sliders"], "Jeans": ["denims"],
                 "Watches": ["wristwatch", "timepiece"], "Shirts": ["button down"]},
    "attributes": {"gender": {"Men": {"words": ["gents"], "for": ["for my dad"]},
                              "Women": {"words": ["ladies"], "for": ["for my mum"]}},
                   "baseColour": {"Blue": ["navy"], "Red": ["scarlet"]},
                   "usage": {"Sports": {"words": ["gym"], "for": ["for workouts"]}}},
    "adjectives": ["comfortable", "stylish"],
    "needs": [{"say": ["gym wear", "workout clothes"], "category": ["Tshirts"], "usage": ["Sports"],
               "related": ["Sandals"]},
              {"say": ["something to tell the time"], "category": ["Watches"]}],
}


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return Catalog.open(write_catalog(tmp_path_factory.mktemp("vocab") / "cat"))


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.from_dict(TOY_VOCAB, "toy.json")


def test_vocabulary_reads_roles_words_and_needs(vocab, cat):
    assert vocab.category["Sandals"] == ["chappals", "sliders"]
    assert vocab.words["colour"]["Blue"] == ["navy"]             # the column is mapped to its role
    assert vocab.phrases["gender"]["Women"] == ["for my mum"]
    need = vocab.needs[0]
    assert need.category == ["Tshirts"] and need.constraints == {"usage": ["Sports"]} and need.related == ["Sandals"]
    assert vocab.categories_called("TEE") == ["Tshirts"]
    assert vocab.check(cat) == []


def test_vocabulary_errors_name_the_key(tmp_path, cat):
    with pytest.raises(ValueError, match="toy.json: unknown key"):
        Vocabulary.from_dict({**TOY_VOCAB, "synonyms": {}}, "toy.json")
    with pytest.raises(ValueError, match="category 'Tshirts': expected a list"):
        Vocabulary.from_dict({**TOY_VOCAB, "category": {"Tshirts": "tee"}}, "toy.json")
    with pytest.raises(ValueError, match=r"needs\[0\]: a need needs 'say' and 'category'"):
        Vocabulary.from_dict({**TOY_VOCAB, "needs": [{"say": ["x"]}]}, "toy.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        Vocabulary.load(bad)
    with pytest.raises(ValueError, match="unknown vocabulary 'nope'"):
        Vocabulary.load("nope")
    typo = Vocabulary.from_dict({**TOY_VOCAB, "category": {"Tshirt": ["tee"]},
                                 "attributes": {"baseColour": {"Navy": ["navy"]}}}, "toy.json")
    problems = typo.check(cat)
    assert "category 'Tshirt' is not a category of the catalog" in problems
    assert "baseColour value 'Navy' is not in the catalog" in problems


def test_builtin_fashion_vocabulary_fits_the_fashion_catalog():
    """Every category and attribute value the shipped vocabulary names exists in the fashion dataset."""
    from dashclip.settings import data_dir

    csv = data_dir() / "fashion-product-images-small" / "catalog.csv"
    if not csv.exists():
        pytest.skip("shared fashion data not present")
    raw = pd.read_csv(csv, usecols=["id", "articleType", "gender", "baseColour", "usage"])
    products = raw.rename(columns={"articleType": "category"}).assign(title="x")

    class Fashion:                      # the columns Vocabulary.check reads
        attributes = ["gender", "baseColour", "usage"]

    Fashion.products = products
    v = Vocabulary.load("fashion")
    assert v.check(Fashion) == []
    assert len(v.category) >= 100 and len(v.needs) >= 40
    # the preset names it, so a catalog imported from the preset finds it with no flag
    assert vocabulary_for(type("C", (), {"manifest": {"preset": "fashion-product-images-small"}})()).name == "fashion"


def test_styles_without_a_vocabulary_are_the_catalogs_own_words(cat):
    mix = style_mix(Vocabulary.empty())
    assert set(mix) == {"keyword", "long", "misspelling"} and abs(sum(mix.values()) - 1) < 1e-9
    assert style_mix(Vocabulary.empty(), typo_rate=0.0).get("misspelling", 0) == 0
    with pytest.raises(ValueError, match="unknown query style"):
        style_mix(Vocabulary.empty(), mix={"slang": 1.0})


def test_synonym_intent_long_and_misspelled_queries_say_what_they_mean(cat, vocab):
    q = synthesize_queries(cat, n=150, seed=0, vocabulary=vocab)
    assert q["query"].is_unique and set(q["style"]) == {"keyword", "synonym", "intent", "long", "misspelling"}
    by_id = cat.products.set_index("id")
    for r in q.itertuples():
        reading = reading_of(r.reading)
        product = by_id.loc[r.product_id]
        assert product["category"] in reading["category"] + reading.get("related", [])
        if r.style == "synonym":
            words = [w for ws in TOY_VOCAB["category"].values() for w in ws]
            assert any(w in r.query for w in words)
        if r.style == "intent":
            need = next(n for n in TOY_VOCAB["needs"] if any(r.query.startswith(s) for s in n["say"]))
            assert reading["category"] == need["category"]
            if "usage" in need:
                assert reading["usage"] == need["usage"] and product["usage"] in need["usage"]
        for col in ("gender", "baseColour", "usage"):     # a named value is the source product's own
            if col in reading and r.style != "intent":
                assert product[col] in reading[col]
        if r.style == "long":
            assert len(r.query.split()) >= 4
    # shopper words from the vocabulary reach the queries
    text = " ".join(q["query"])
    assert "for my mum" in text or "for my dad" in text
    assert "chappals" in text or "sliders" in text


def test_misspellings_join_split_drop_or_swap():
    rng = np.random.default_rng(0)
    seen = {make_misspelling("black sunglasses women", rng) for _ in range(200)} - {None}
    assert "black sunglasses women" not in seen and len(seen) > 20
    assert "blacksunglasses women" in seen and "black sunglasseswomen" in seen    # joined
    assert any(len(s.split()) == 4 and s.replace(" ", "") == "blacksunglasseswomen" for s in seen)   # split
    assert "black snglasses women" in seen or "black sunglsses women" in seen    # a vowel dropped
    assert make_misspelling("hat", rng) is None                                  # nothing to change


def test_reading_candidates_fit_the_reading(cat, vocab):
    pool = pd.DataFrame([{"qid": "syn-a", "query": "gym wear for my dad",
                          "reading": json.dumps({"category": ["Tshirts"], "related": ["Sandals"],
                                                 "gender": ["Men"], "usage": ["Sports"]})},
                         {"qid": "syn-b", "query": "plain query"}])
    pairs = pick_candidates(cat, pool, k_bm25=0, k_dense=0, n_random=0, k_reading=50, k_near=50, seed=0)
    by_id = cat.products.set_index("id")
    fit = pairs[pairs["source"] == "reading"]["product_id"]
    assert len(fit) and all((by_id.loc[p, "category"], by_id.loc[p, "gender"], by_id.loc[p, "usage"])
                            == ("Tshirts", "Men", "Sports") for p in fit)
    # every product that fits is there (k is larger than their number), none twice
    want = by_id[(by_id["category"] == "Tshirts") & (by_id["gender"] == "Men") & (by_id["usage"] == "Sports")]
    assert set(fit) == set(want.index) and pairs["product_id"].is_unique
    near = pairs[pairs["source"] == "near"]["product_id"]
    for p in near:
        row = by_id.loc[p]
        fits_all = row["gender"] == "Men" and row["usage"] == "Sports"
        assert (row["category"] == "Tshirts" and not fits_all) or (row["category"] == "Sandals" and fits_all)
    assert (pairs["qid"] == "syn-b").sum() == 0      # a query without a reading gets no reading candidates
    fits, near_mask = ReadingSampler(cat).masks({"category": ["Watches"]})
    assert fits.sum() == (cat.products["category"] == "Watches").sum() and not near_mask.any()


def test_consistency_keeps_the_grades_that_agree_with_the_reading(cat):
    from dashclip.labeling.consistency import NO_READING, keep_consistent, reading_grades

    pool = pd.DataFrame([{"qid": "syn-a", "query": "tee for men", "style": "synonym",
                          "reading": json.dumps({"category": ["Tshirts"], "gender": ["Men"]})},
                         {"qid": "log-1", "query": "a search-log query", "style": "keyword", "reading": ""}])
    by_id = cat.products.set_index("id")
    fits = by_id[(by_id["category"] == "Tshirts") & (by_id["gender"] == "Men")].index
    near = by_id[(by_id["category"] == "Tshirts") & (by_id["gender"] == "Women")].index
    other = by_id[by_id["category"] == "Watches"].index
    rows = [("syn-a", "tee for men", fits[0], 2), ("syn-a", "tee for men", fits[1], 0),   # 1 agrees, 1 not
            ("syn-a", "tee for men", near[0], 1), ("syn-a", "tee for men", other[0], 0),
            ("syn-a", "tee for men", other[1], 2),
            ("log-1", "a search-log query", other[2], 2)]                # no reading: kept as graded
    grades = pd.DataFrame(rows, columns=["qid", "query", "product_id", "grade"]).assign(confidence=0.9)
    said = reading_grades(grades, pool, cat)
    assert said.tolist() == [2, 2, 1, 0, 0, NO_READING]
    kept, report = keep_consistent(grades, pool, cat)
    assert kept["product_id"].tolist() == [fits[0], near[0], other[0], other[2]]
    assert report["pairs"] == 6 and report["checked"] == 5 and report["kept"] == 4
    assert report["agreement"] == 0.6 and report["per_style"]["synonym"]["kept_grade2"] == 1


def test_reading_examples_are_graded_by_their_readings(cat, vocab):
    """The labeler's reading-graded lessons: synthesized queries (never an excluded one), their
    candidates, each grade what the query's reading says of the product."""
    from dashclip.labeling.consistency import reading_examples
    from dashclip.labeling.queries import synthesize_queries

    avoid = synthesize_queries(cat, n=10, seed=3, vocabulary=vocab)["query"].tolist()
    # 100 queries from seed 5 include both bare synonyms of Sandals checked below (seed 3 would not).
    ex = reading_examples(cat, vocab, 100, seed=5, exclude=avoid)
    assert len(ex) > 100 and set(ex["grade"]) <= {0, 1, 2} and {0, 2} <= set(ex["grade"])
    assert ex["qid"].str.startswith("reading-").all() and not set(ex["query"]) & set(avoid)
    by_id = cat.products.set_index("id")
    for q in ("chappals", "sliders"):           # a synonym query: grade 2 exactly on the category it names
        sub = ex[ex["query"] == q]
        assert len(sub) >= 3, f"the inputs no longer make the query {q!r}: pick another seed"
        is_sandal = by_id.loc[sub["product_id"], "category"].to_numpy() == "Sandals"
        assert is_sandal.any() and not is_sandal.all()          # candidates on both sides of the reading
        assert (is_sandal == (sub["grade"] == 2).to_numpy()).all()
    assert reading_examples(cat, vocab, 0).empty


def test_unisex_serves_men_and_women_in_readings(cat):
    v = Vocabulary.from_dict({**TOY_VOCAB, "attributes": {**TOY_VOCAB["attributes"], "gender": {
        **TOY_VOCAB["attributes"]["gender"], "Unisex": {"words": ["unisex"], "serves": ["Men", "Women"]}}}}, "toy")
    assert v.widen("gender", ["Men"]) == ["Men", "Unisex"] and v.widen("gender", ["Boys"]) == ["Boys"]


def test_the_labeler_reads_the_shopper_words_and_keeps_its_vocabulary(tmp_path, cat, vocab):
    """Trained with a vocabulary, the labeler's product text carries the shopper words, it saves the
    vocabulary beside its weights, and grading reads products the same way."""
    from dashclip.labeling.labelers import pairs_from
    from dashclip.labeling.labelers.cross_encoder import (CrossEncoderConfig, CrossEncoderLabeler, labeler_text,
                                                          train_from_seed)
    from test_labeling_support import write_tiny_bert

    sandal = int(cat.products.loc[cat.products["category"] == "Sandals", "id"].iloc[0])
    pair = pairs_from(cat, ["chappals"], [sandal])[0]
    text = labeler_text(pair, vocab)
    assert text.startswith(pair.product_text) and "called: chappals, sliders" in text
    assert labeler_text(pair, None) == pair.product_text
    words = vocab.shopper_words(pair.product, cat.attributes)
    assert "good for" not in words                     # the need names Sandals as related only
    tee = cat.products[(cat.products["category"] == "Tshirts") & (cat.products["usage"] == "Sports")].iloc[0]
    assert "good for: gym wear" in vocab.shopper_words(tee.to_dict(), cat.attributes)

    seed = pd.DataFrame({"qid": [f"q{i}" for i in (1, 1, 2, 2, 3)], "query": ["chappals"] * 2 + ["tee"] * 2 + ["x"],
                         "product_id": cat.products["id"].iloc[:5].tolist(), "grade": [2, 0, 2, 0, 1],
                         "confidence": 1.0})
    base = write_tiny_bert(tmp_path / "base")
    out = tmp_path / "labeler"
    lessons = pd.DataFrame({"query": ["sliders", "sliders"], "product_id": [sandal, int(tee["id"])], "grade": [2, 0]})
    summary = train_from_seed(seed, cat, out, vocabulary=vocab, base=str(base), extra=lessons,
                              config=CrossEncoderConfig(max_length=48, epochs=1, batch_size=4))
    assert summary["vocabulary"] == "toy" and (out / "vocabulary.json").exists()
    assert summary["train_pairs"] == 4 + 2            # seed's training split (q3 is held out) + the lessons
    lab = CrossEncoderLabeler(out)
    assert lab.vocabulary is not None and lab.vocabulary.category == vocab.category
    graded = lab.grade([pair])
    assert graded[0].ok and graded[0].grade in (0, 1, 2)


def test_cli_synthesize_candidates_and_check(tmp_path, cat):
    """The CLI chain for a vocabulary pool: synthesize (with a vocabulary file), candidates (reading
    sources), check (grades that agree with the readings), with errors that name the file."""
    from typer.testing import CliRunner

    from dashclip.cli import app

    vocab_file = tmp_path / "toy.json"
    vocab_file.write_text(json.dumps(TOY_VOCAB))
    runner = CliRunner()
    pool = tmp_path / "pool.jsonl"
    r = runner.invoke(app, ["labels", "synthesize-queries", "--catalog", str(cat.root), "--out", str(pool),
                            "--n", "40", "--vocabulary", str(vocab_file)])
    assert r.exit_code == 0, r.output
    assert "vocabulary toy" in r.output and "synonym" in r.output
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    assert all("reading" in row and "style" in row for row in rows)
    pairs = tmp_path / "pairs.parquet"
    r = runner.invoke(app, ["labels", "candidates", "--catalog", str(cat.root), "--queries", str(pool),
                            "--out", str(pairs), "--k-bm25", "2", "--k-dense", "0", "--n-random", "1",
                            "--k-reading", "3", "--k-near", "1"])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(pairs)
    assert {"reading", "bm25", "random"} <= set(df["source"])
    # grade every pair 2, then keep the ones the readings agree with
    grades = df.assign(grade=2, confidence=0.9, labeler="fake", labeler_version="1")
    grades.to_parquet(tmp_path / "grades.parquet")
    r = runner.invoke(app, ["labels", "check", "--catalog", str(cat.root), "--grades", str(tmp_path / "grades.parquet"),
                            "--queries", str(pool), "--out", str(tmp_path / "checked.parquet")])
    assert r.exit_code == 0, r.output
    kept = pd.read_parquet(tmp_path / "checked.parquet")
    report = json.loads((tmp_path / "checked.json").read_text())
    from dashclip.labeling.consistency import reading_grades

    said = reading_grades(grades, pd.DataFrame(rows), cat)
    assert report["kept"] == len(kept) == int((said == 2).sum())      # a grade 2 agrees where the reading says 2
    assert (df["source"] == "reading").sum() <= len(kept) < len(df)    # every reading fit, and some others
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "colours": {}}')
    r = runner.invoke(app, ["labels", "synthesize-queries", "--catalog", str(cat.root), "--out", str(pool),
                            "--vocabulary", str(bad)])
    assert r.exit_code == 2 and "bad.json: unknown key(s) ['colours']" in " ".join(r.output.split())


def test_cli_train_with_reading_lessons(tmp_path, cat):
    """`labels train --reading-queries N` adds reading-graded synthesized queries (none of the
    excluded ones) to the seed grades; without a vocabulary it is a clear error."""
    from typer.testing import CliRunner

    from dashclip.cli import app
    from test_labeling_support import write_tiny_bert

    vocab_file = tmp_path / "toy.json"
    vocab_file.write_text(json.dumps(TOY_VOCAB))
    seed = pd.DataFrame({"qid": ["q1", "q1", "q2", "q2"], "query": ["chappals", "chappals", "tee", "tee"],
                         "product_id": cat.products["id"].iloc[:4].tolist(), "grade": [2, 0, 2, 0],
                         "confidence": 1.0, "labeler": "human", "labeler_version": "1"})
    seed.to_parquet(tmp_path / "seed.parquet")
    (tmp_path / "avoid.txt").write_text("sliders\ngym wear\n")
    base = write_tiny_bert(tmp_path / "base")
    runner = CliRunner()
    args = ["labels", "train", "--catalog", str(cat.root), "--seed", str(tmp_path / "seed.parquet"),
            "--base", str(base), "--epochs", "1", "--max-length", "48"]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "lab"), "--vocabulary", str(vocab_file),
                                   "--reading-queries", "12", "--exclude", str(tmp_path / "avoid.txt")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "lab" / "labeler.json").read_text())
    assert summary["train_pairs"] > 4 + 12           # the seed's 4 pairs and several per reading query
    assert re.search(r"\d+ reading-graded pairs of \d+ synthesized queries", " ".join(r.output.split()))
    r = runner.invoke(app, args + ["--out", str(tmp_path / "lab2"), "--vocabulary", "none", "--reading-queries", "5"])
    assert r.exit_code == 2 and "--reading-queries needs a vocabulary" in " ".join(r.output.split())
