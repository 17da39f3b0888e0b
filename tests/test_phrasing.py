"""The phrasing-held-out protocol's instruments: the vocabulary split, the held-out filter, the reading ->
label-rule conversion, the overlap audit's matching, and the vocabulary check."""
from __future__ import annotations

import numpy as np
import pytest

from dashclip.data.catalog import Catalog
from dashclip.evaluation.qrels import load_labels_module, predicate_qrels
from dashclip.evaluation.vocabulary_check import vocabulary_check
from dashclip.labeling.phrasing import (PhraseMatcher, buildable, content_tokens, phrase_tokens, predicate_to_reading,
                                        reading_to_predicate, remove_phrases, split_sides, split_vocabulary,
                                        taken_from, vocabulary_phrases)
from dashclip.labeling.queries import synthesize_queries
from dashclip.labeling.vocabulary import Vocabulary
from dashclip.settings import data_dir
from test_labeling_support import write_catalog

VOCAB = {
    "name": "toy",
    "roles": {"colour": "baseColour"},
    "category": {"Tshirts": ["tee", "t-shirt", "polo tee", "graphic tee"], "Sandals": ["chappals", "sliders", "slippers"],
                 "Jeans": ["denims", "denim pants"], "Watches": ["wristwatch", "timepiece"], "Shirts": ["button down"]},
    "attributes": {"gender": {"Men": {"words": ["gents", "guys"], "for": ["for my dad", "for him", "for my brother"]},
                              "Women": {"words": ["ladies", "womens"], "for": ["for my mum", "for her"]}},
                   "baseColour": {"Blue": ["navy", "sky blue"], "Red": ["scarlet", "bright red"]},
                   "usage": {"Sports": {"words": ["gym", "workout"], "for": ["for workouts", "for the gym"]}}},
    "adjectives": ["comfortable", "stylish", "trendy", "cheap"],
    "needs": [{"say": ["gym wear", "workout clothes", "activewear"], "category": ["Tshirts"], "usage": ["Sports"]},
              {"say": ["something to tell the time", "a timepiece gift"], "category": ["Watches"]}],
}


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    return Catalog.open(write_catalog(tmp_path_factory.mktemp("phrasing") / "cat", n=60))


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.from_dict(VOCAB, "toy.json")


def test_split_is_deterministic_disjoint_and_covers_every_group_of_two(vocab):
    a_train, a_held = split_vocabulary(vocab, seed=3)
    b_train, b_held = split_vocabulary(vocab, seed=3)
    assert a_train.data == b_train.data and a_held.data == b_held.data
    phrases = lambda v: {p["phrase"] for p in vocabulary_phrases(v.data)}
    assert phrases(a_train).isdisjoint(phrases(a_held))
    assert phrases(a_train) | phrases(a_held) == phrases(vocab)
    groups = {}
    for p in vocabulary_phrases(vocab.data):
        groups.setdefault(p["group"], set()).add(p["phrase"])
    for g, ps in groups.items():
        if len(ps) >= 2:
            assert ps & phrases(a_train) and ps & phrases(a_held), g
    # both halves are usable vocabularies: every category and need keeps a phrase on each side
    for half in (a_train, a_held):
        assert all(half.category[c] for c in vocab.category if len(vocab.category[c]) >= 2)
        assert len(half.needs) == len(vocab.needs)
    # another seed splits differently (a hash of the phrase, not its position)
    assert any(split_sides(vocab.data, s) != split_sides(vocab.data, 3) for s in range(4, 8))


def test_heldout_eval_queries_share_no_phrase_with_the_training_half(cat, vocab):
    train, held = split_vocabulary(vocab, seed=0)
    train_phrases = [p["phrase"] for p in vocabulary_phrases(train.data)]
    matcher = PhraseMatcher(train_phrases)
    pool = synthesize_queries(cat, n=150, seed=1, vocabulary=held, mix={"synonym": 0.5, "intent": 0.5})
    kept = [q for q in pool["query"] if not matcher.find(q)]
    assert kept, "the held-out half makes queries of its own"
    for q in kept:
        tokens = phrase_tokens(q)
        for p in train_phrases:
            piece = phrase_tokens(p)
            assert not piece or not any(tokens[i:i + len(piece)] == piece for i in range(len(tokens)))
    assert matcher.find("scarlet tees for my dad") == sorted(
        p for p in ("scarlet", "tee", "for my dad") if p in train_phrases)


def _labels_py():
    path = data_dir() / "fashion-queries" / "labels.py"
    if not path.exists():
        pytest.skip("the fashion-queries labels.py is not here")
    return load_labels_module(path)


def test_reading_to_predicate_labels_by_the_label_rule(cat):
    labels = _labels_py()
    reading = {"category": ["Tshirts"], "related": ["Jeans", "Tshirts"], "gender": ["Men", "Unisex"],
               "baseColour": ["Blue"]}
    q = reading_to_predicate(reading, "ph-1", "navy tee for my dad", "synonym")
    assert q == {"qid": "ph-1", "query": "navy tee for my dad", "style": "synonym", "types": ["Tshirts"],
                 "related_types": ["Jeans"], "gender": ["Men", "Unisex"], "colour": ["Blue"]}
    assert reading_to_predicate(predicate_to_reading(q), "ph-1", q["query"], q["style"]) == q
    got = predicate_qrels([q], cat.products, labels)["ph-1"]
    # by hand, the fashion-queries rule: 2 = type and every constraint; 1 = type but a constraint fails, or a
    # related type with every constraint; 0 = else
    for p in cat.products.to_dict("records"):
        holds = p["gender"] in ("Men", "Unisex") and p["baseColour"] == "Blue"
        want = 2 if p["category"] == "Tshirts" and holds else \
            1 if (p["category"] == "Tshirts") or (p["category"] == "Jeans" and holds) else 0
        assert got.get(p["id"], 0) == want, p
    assert 2 in got.values() and 1 in got.values()
    with pytest.raises(ValueError, match="no fashion-queries predicate"):
        reading_to_predicate({"category": ["Tshirts"], "fabric": ["Cotton"]}, "x", "x", "keyword")


def test_audit_matching_buildable_taken_and_removal(vocab):
    assert content_tokens("Something warm for my HUSBAND") == ("warm",)
    assert buildable("navy tees for my dad", ["navy", "tee"]) and not buildable("navy polo", ["navy", "tee"])
    assert taken_from("gym wear", "gym wear for him") and taken_from("chappals", "chappals")
    assert not taken_from("tee", "tee for my dad")            # a one-word synonym only when it is the whole query
    assert not taken_from("flip flops", "women flip flops", own={"flip flops"})     # a catalog word never
    out = remove_phrases(vocab.data, ["chappals", "gym wear", "something to tell the time", "a timepiece gift"])
    assert out["category"]["Sandals"] == ["sliders", "slippers"]
    assert [n["say"] for n in out["needs"]] == [["workout clothes", "activewear"]]     # a need with nothing left goes
    Vocabulary.from_dict(out)


class _Encoder:
    """A toy query encoder: one axis per category word, so a word's top products are easy to predict."""

    def __init__(self, axes):
        self.axes = axes

    def __call__(self, texts):
        out = np.zeros((len(texts), 3), np.float32)
        for i, t in enumerate(texts):
            out[i, self.axes.get(t, 0)] = 1.0
        return out


def test_vocabulary_check_share_on_a_toy_index(cat):
    v = Vocabulary.from_dict({"name": "t", "category": {"Tshirts": ["tee"], "Jeans": ["denims"],
                                                        "Watches": ["wristwatch"], "Sandals": ["chappals"]}})
    products = cat.products[cat.products["image"].notna()]
    cats = products["category"].tolist()
    # the product vectors put Tshirts on axis 0, Jeans on axis 1, everything else on axis 2; "chappals" is
    # encoded on axis 0, so it finds T-shirts, and "wristwatch" on axis 2, a mix of three aisles
    axis_of = {"Tshirts": 0, "Jeans": 1}
    vectors = np.zeros((len(products), 3), np.float32)
    for i, c in enumerate(cats):
        vectors[i, axis_of.get(c, 2)] = 1.0
    enc = _Encoder({"tee": 0, "denims": 1, "wristwatch": 2, "chappals": 0})
    out = vocabulary_check(enc, vectors, cat, v)
    assert out["overall"] == {"n": 4, "landed": 2, "share": 0.5}
    assert sorted(out["missed"]["category"]) == ["chappals", "wristwatch"]
    by_word = {w["word"]: w for w in out["words"]}
    assert by_word["tee"]["in_aisle"] == 10 and by_word["chappals"]["in_aisle"] == 0
