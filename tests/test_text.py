from dashclip.text import BM25, stem_plural, tokenize


def test_tokenize_lowercases_drops_stopwords_and_stems_plurals():
    assert tokenize("Shirts for the Men, Watches & Dresses!") == ["shirt", "men", "watch", "dress"]
    assert stem_plural("accessories") == "accessory" and stem_plural("dress") == "dress"


def test_bm25_ranks_matching_document_first_and_breaks_ties_by_fixed_permutation():
    docs = ["blue jeans men", "red dress women", "blue shirt men", "black watch"]
    bm = BM25(docs)
    idx, scores = bm.search("blue jeans", k=4)
    assert idx[0] == 0 and scores[0] > scores[1]
    # a query with no known words scores every document 0; the order is the same every time
    a, _ = bm.search("zzz", k=4)
    b, _ = BM25(docs).search("zzz", k=4)
    assert list(a) == list(b) and sorted(a) == [0, 1, 2, 3]
