"""Stage 2 data side: which grades are trained on, and how a batch and its grade matrix are built."""
import numpy as np
import pandas as pd
import pytest

from dashclip.training.align import AlignConfig
from dashclip.training.align_data import GradeTable, HardNegativeMiner, select_grades


def grades_frame(rows):
    return pd.DataFrame(rows, columns=["qid", "query", "product_id", "grade", "confidence", "labeler"])


ROWS = [
    ("q1", "red dress", 10, 2, 1.0, "seed"),
    ("q1", "red dress", 11, 2, 1.0, "seed"),
    ("q1", "red dress", 12, 0, 1.0, "seed"),
    ("q2", "Party Dress", 10, 2, 1.0, "seed"),
    ("q2", "party dress", 13, 1, 1.0, "seed"),
    ("q4", "blue jeans", 12, 2, 1.0, "seed"),
    ("q4", "blue jeans", 10, 0, 1.0, "seed"),
    ("s1", "red dress", 11, 0, 0.6, "model"),      # conflicts with the seed grade: the seed wins
    ("s2", "denim", 12, 2, 0.3, "model"),          # below the confidence threshold
    ("q3", "office shirt", 13, 2, 1.0, "seed"),    # a held-out query
]


def test_select_grades_filters_and_counts():
    df, stats = select_grades(grades_frame(ROWS), min_confidence=0.5, exclude_queries={"Office Shirt"})
    assert stats == {"rows_in": 10, "dropped_low_confidence": 1, "dropped_heldout_query": 1,
                     "dropped_duplicate_pair": 1, "rows_kept": 7}
    red11 = df[(df["key"] == "red dress") & (df["product_id"] == 11)]
    assert red11["grade"].tolist() == [2]
    assert "office shirt" not in set(df["key"])


@pytest.mark.parametrize("field,value,message", [
    ("grade", 3, "row 0: field 'grade'"),
    ("confidence", 1.5, "row 0: field 'confidence'"),
    ("query", "  ", "row 0: field 'query' is empty"),
])
def test_select_grades_names_bad_rows(field, value, message):
    df = grades_frame(ROWS)
    df.loc[0, field] = value
    with pytest.raises(ValueError, match=message):
        select_grades(df, source="g.parquet")
    with pytest.raises(ValueError, match="missing column"):
        select_grades(df.drop(columns=["confidence"]))


def build_table(positive_grades=(2,)):
    df, _ = select_grades(grades_frame(ROWS), min_confidence=0.5, exclude_queries={"office shirt"})
    return GradeTable.build(df, np.array([10, 11, 12, 13, 99]), positive_grades)


def test_table_indexes_queries_and_products():
    t = build_table()
    assert sorted(text.lower() for text in t.queries) == ["blue jeans", "party dress", "red dress"]
    q = {text.lower(): i for i, text in enumerate(t.queries)}
    assert sorted(t.positives_of_query[q["red dress"]].tolist()) == [0, 1]
    assert t.positives_of_query[q["party dress"]].tolist() == [0]        # grade 1 is not sampled
    assert t.relevant[3] == {q["party dress"]: 1}
    assert t.stats["unknown_product_rows"] == 0
    ex = t.examples(pairs_per_query=1, seed=0)
    assert len(ex) == 3 and sorted(ex[:, 0].tolist()) == [0, 1, 2]
    assert len(build_table(positive_grades=(2, 1)).positives_of_query[q["party dress"]]) == 2


def test_unknown_products_are_counted_not_lost():
    df, _ = select_grades(grades_frame(ROWS))
    t = GradeTable.build(df, np.array([10, 11, 12]))
    assert t.stats["unknown_product_rows"] == 2 and t.stats["unknown_product_example"] == "13"
    with pytest.raises(ValueError, match="nothing to train on"):
        GradeTable.build(df, np.array([99]))


def test_batch_grade_matrix_masks_false_negatives():
    t = build_table()
    q = {text.lower(): i for i, text in enumerate(t.queries)}
    cfg = AlignConfig(positives_per_product=1, graded_negatives=1, hard_negatives=0)
    # Anchors: (red dress, product 10) and (blue jeans, product 12).
    pairs = np.array([[q["red dress"], 0], [q["blue jeans"], 2]])
    b = t.make_batch(pairs, cfg, np.random.default_rng(0))
    assert b.product_rows.tolist() == [0, 2]
    col = {int(j): c for c, j in enumerate(b.query_index)}
    assert set(col) == {q["red dress"], q["blue jeans"]}      # both graded-0 draws are already in the bank
    # product 10: red dress is relevant (2), blue jeans graded 0
    assert b.grades[0, col[q["red dress"]]] == 2 and b.grades[0, col[q["blue jeans"]]] == 0
    # product 12: red dress graded 0, blue jeans relevant
    assert b.grades[1, col[q["red dress"]]] == 0 and b.grades[1, col[q["blue jeans"]]] == 2

    # With a second positive per product, "party dress" joins the bank for product 10; it is
    # relevant to product 10 and unlabeled for product 12.
    cfg2 = AlignConfig(positives_per_product=2, graded_negatives=0, hard_negatives=0)
    b2 = t.make_batch(pairs, cfg2, np.random.default_rng(0), positive_grades=(2,))
    col2 = {int(j): c for c, j in enumerate(b2.query_index)}
    assert q["party dress"] in col2
    assert b2.grades[0, col2[q["party dress"]]] == 2 and b2.grades[1, col2[q["party dress"]]] == -1


def test_duplicate_products_merge_into_one_row():
    t = build_table()
    q = {text.lower(): i for i, text in enumerate(t.queries)}
    cfg = AlignConfig(positives_per_product=1, graded_negatives=0, hard_negatives=0)
    b = t.make_batch(np.array([[q["red dress"], 0], [q["party dress"], 0]]), cfg, np.random.default_rng(0))
    assert b.product_rows.tolist() == [0]
    assert sorted(b.grades[0].tolist()) == [2, 2]


def test_hard_negatives_skip_relevant_queries():
    t = build_table()
    q = {text.lower(): i for i, text in enumerate(t.queries)}
    products = np.eye(5, 3, dtype=np.float32)
    queries = np.zeros((len(t.queries), 3), np.float32)
    queries[q["red dress"]] = [1, 0, 0]     # most similar to product row 0, but relevant to it
    queries[q["blue jeans"]] = [0.9, 0.1, 0]
    queries[q["party dress"]] = [0.5, 0.5, 0]
    miner = HardNegativeMiner(products, queries / np.linalg.norm(queries, axis=1, keepdims=True))
    assert miner.negatives(np.array([0]), t, k=1) == [q["blue jeans"]]
    # product row 1 (id 11): red dress is relevant; the others by similarity
    assert miner.negatives(np.array([1]), t, k=5) == [q["party dress"], q["blue jeans"]]


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        AlignConfig(variant="x")
    with pytest.raises(ValueError, match="pairs_per_query"):
        AlignConfig(pairs_per_query=0)
    with pytest.raises(ValueError, match="min_confidence"):
        AlignConfig(min_confidence=2)
