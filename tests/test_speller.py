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


# The wrong targets the old speller picked on another shop's real queries, all in the shop list.
WRONG_TARGETS = ["Rice Cooper Pot", "Facebook Case", "Killed Bugs Spray", "Blended Wool Rug", "Kama Brass Bangle",
                 "Nike Running Sneakers", "Cast Iron Pan", "Case for Phone", "Bangle for Him"]


def test_real_words_stay_as_typed_and_typos_are_still_corrected():
    """Queries the old speller broke ("rice cooker" -> "rice cooper", ...) stay as typed with a shop
    list that holds those targets; a real misspelling of a shop word is still corrected."""
    sp = QuerySpeller.build(WRONG_TARGETS)
    for q in ("rice cooker", "macbook case", "cast iron skillet", "blender", "kada for him"):
        assert sp.correct(q) == q
    assert sp.correct("snaekers") == "sneakers"
    assert sp.correct("nike snaekers for him") == "nike sneakers for him"


def test_what_keeps_an_unknown_word_as_typed():
    """With an empty English lexicon, one rule at a time: a word in the lexicon, the first letter, a
    close rival, a short word, a digit, a brand-like capital."""
    words = {"cooper": 10, "facebook": 10, "kama": 10, "blazer": 10, "blazed": 8, "glazer": 1,
             "sneakers": 10, "controller": 10}
    sp = QuerySpeller(words, lexicon=set())
    assert sp.correct("cooker") == "cooper"                    # no lexicon: the old mistake comes back
    assert QuerySpeller(words, lexicon={"cooker"}).correct("cooker") == "cooker"
    assert QuerySpeller(words, lexicon={"cooker"}).correct("cookers") == "cookers"   # its plural too
    assert sp.correct("hooper") == "hooper"                    # "cooper": one edit, but another first letter
    assert sp.correct("ocoper") == "cooper"                    # unless the first two letters are swapped
    assert sp.correct("macbook") == "macbook"                  # "facebook": two edits for 7 letters
    assert sp.correct("blazet") == "blazet"                    # blazer 10 vs blazed 8: unsure
    assert QuerySpeller({**words, "blazed": 1}, lexicon=set()).correct("blazet") == "blazer"   # clear margin
    assert sp.correct("kada") == "kada"                        # under 5 letters
    assert QuerySpeller(words, lexicon=set(), min_length=4).correct("kada") == "kama"
    assert sp.correct("snaekers 2x") == "sneakers 2x" and sp.correct("snaekers2") == "snaekers2"   # a digit
    assert sp.correct("SnaeKers") == "snaekers" and sp.correct("Snaekers") == "sneakers"  # brand-like capitals


def test_a_speller_saved_before_the_lexicon_rules_still_loads(tmp_path):
    """query_speller.json of format 1 ({"words", "min_length": 4}) loads and follows today's rules."""
    import json

    path = tmp_path / "query_speller.json"
    path.write_text(json.dumps({"words": {"jacket": 5, "cooper": 3, "kama": 2}, "min_length": 4}))
    sp = QuerySpeller.load(path)
    assert sp.correct("black jaket") == "black jacket"
    assert sp.correct("rice cooker") == "rice cooker" and sp.correct("kada") == "kada"
    sp.save(tmp_path / "again.json")
    again = QuerySpeller.load(tmp_path / "again.json")
    assert again.words == sp.words and again.min_length == sp.min_length == 5
