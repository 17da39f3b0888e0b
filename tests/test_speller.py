"""Query spelling correction: the words a typo is corrected to, what is never touched, and that it
travels inside the model directory."""
from __future__ import annotations

import torch

import dashclip
from dashclip.models.speller import QuerySpeller, edit_distance

CATALOG_TEXTS = ["Acme Men Black Jacket | Jackets", "Zorba Women Blue Sweatshirt | Sweatshirts",
                 "Kiwi Men White Shirt | Shirts", "Acme Women Black Sunglasses | Sunglasses",
                 "Zorba Men Brown Formal Shoes | Formal Shoes", "Kiwi Women Red Kurta | Kurtas"]


def test_edit_distance_counts_a_swap_as_one_edit():
    assert edit_distance("jaket", "jacket") == 1
    assert edit_distance("shrit", "shirt") == 1          # neighbours swapped
    assert edit_distance("sweatshrt", "sweatshirt") == 1
    assert edit_distance("kurta", "kurta") == 0
    assert edit_distance("abc", "xyz") == 3


def test_typos_are_corrected_to_catalog_words():
    sp = QuerySpeller.build(CATALOG_TEXTS)
    assert sp.correct("jaket") == "jacket"
    assert sp.correct("shrit for men") == "shirt for men"
    assert sp.correct("sunglases for women") == "sunglasses for women"
    assert sp.correct("formal shooes") == "formal shoes"
    assert sp.correct("Sweatshrt!") == "sweatshirt!"                # case folded, punctuation kept


def test_known_short_plural_and_far_words_are_left_alone():
    sp = QuerySpeller.build(CATALOG_TEXTS, known={"onesie", "gift"})
    assert sp.correct("onesie") == "onesie"                   # a known word (e.g. the tokenizer's)
    assert sp.correct("gift for dad") == "gift for dad"       # short words are never touched
    assert sp.correct("jackets") == "jackets"                 # a plural of a listed word
    assert sp.correct("xylophone") == "xylophone"             # nothing close: as typed
    # one edit for words up to 6 letters: "jcktt" is two edits from "jacket"
    assert sp.correct("jcktt") == "jcktt"


def test_query_words_count_only_when_several_queries_use_them():
    queries = ["chappals for men", "black chappals", "chappals for my dad", "jaket"]
    sp = QuerySpeller.build(CATALOG_TEXTS, queries, min_queries=3)
    assert "chappals" in sp.words and "jaket" not in sp.words   # a one-off typo never becomes a word
    assert sp.correct("chapals") == "chappals"


def test_the_speller_travels_in_the_model_dir(tmp_path):
    model = dashclip.create_model("tiny", pretrained=False)
    model.add_query_encoder()
    before = model.encode_query(["black jacket"])
    model.query_speller = QuerySpeller.build(CATALOG_TEXTS)
    assert torch.allclose(model.encode_query(["black jaket"]), before, atol=1e-6)   # corrected, then encoded
    model.save(tmp_path / "m")
    loaded = dashclip.load(tmp_path / "m")
    assert loaded.correct_queries(["black jaket"]) == ["black jacket"]
    assert torch.allclose(loaded.encode_query(["black jaket"]), before, atol=1e-5)
    assert loaded.model_id == model.model_id         # the query side is not part of the product space
    assert dashclip.create_model("tiny", pretrained=False).correct_queries(["jaket"]) == ["jaket"]
