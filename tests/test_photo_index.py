"""The photo index (index.catalog_index): built beside the product embeddings, searched by photos alone,
kept in step by `index add | remove`, and left aside when it is out of step."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from test_search_fixtures import NO_IMAGE_ID, shop  # noqa: F401 (fixture)


@pytest.fixture()
def built(shop, tmp_path):
    from dashclip.index.catalog_index import build_catalog_index

    out = tmp_path / "index"
    build_catalog_index(shop.model, shop.model_dir, shop.catalog, out, quiet=True, photo_image_weight=0.5)
    return out


def _photo(shop, pid=100):
    return shop.catalog.image_path(shop.catalog.products.set_index("id").at[pid, "image"]).read_bytes()


def _brute_force(shop, emb_dir, query, k, weight=0.5):
    from dashclip.models.embeddings import load_embeddings

    emb = load_embeddings(emb_dir)
    image = np.where(emb.has_image[:, None], emb.vectors["image"], 0.0)
    scores = (1 - weight) * emb.vectors["fused"] @ query + weight * image @ query
    return [int(emb.ids[i]) for i in np.argsort(-scores, kind="stable")[:k]], emb


def test_build_writes_the_photo_index_and_photos_alone_search_it(shop, built):
    from dashclip.index import open_index
    from dashclip.serving.search import Searcher

    main, photo = open_index(built), open_index(built / "photo")
    assert main.meta["photo_index"] == {"dir": "photo", "image_weight": 0.5}
    assert photo.meta["embedding"] == "photo" and photo.meta["photo_image_weight"] == 0.5
    assert len(photo) == len(main) == len(shop.catalog)
    s = Searcher.open(shop.model_dir, built)
    assert s.photo_index is not None
    raw = _photo(shop)
    q = s.encode_images([Image.open(io.BytesIO(raw)).convert("RGB")])[0]
    want, emb = _brute_force(shop, built.parent / "index-embeddings", q, 8)
    got = s.search_image(raw, k=8)
    assert [h.id for h in got] == want
    # the score is the weighted sum of the two cosines
    row = int(np.flatnonzero(emb.ids == got[0].id)[0])
    assert got[0].score == pytest.approx(0.5 * emb.vectors["fused"][row] @ q + 0.5 * emb.vectors["image"][row] @ q,
                                         abs=1e-4)
    # the product without an image keeps only its fused term: its blank stand-in matches no photo
    blank = Image.new("RGB", (60, 80), (255, 255, 255))
    vec = s.encode_images([blank])[0]
    hit = next(h for h in s.search_image(blank, k=len(shop.catalog)) if h.id == NO_IMAGE_ID)
    nrow = int(np.flatnonzero(emb.ids == NO_IMAGE_ID)[0])
    assert hit.score == pytest.approx(0.5 * float(emb.vectors["fused"][nrow] @ vec), abs=1e-4)
    # a photo with words searches the product embeddings, as before
    mixed = s.encode_images([Image.open(io.BytesIO(raw)).convert("RGB")], ["in red"])
    ids, _ = main.search(mixed, 5)
    assert [h.id for h in s.search_image(raw, k=5, text="in red")] == list(ids[0])
    # expanded, a photo alone moves toward the photo index's own stored vectors (the mixes), not the main index's
    from dashclip.ranking import expand_query

    expanding = Searcher.open(shop.model_dir, built, photo_expansion=3)
    first, scores = photo.search(q, expanding.photo_expansion)
    moved = expand_query(q[None], photo.vectors(first[0])[None], scores)
    assert [h.id for h in expanding.search_image(raw, k=8)] == photo.search(moved, 8)[0][0]


def test_add_and_remove_keep_the_photo_index_in_step(shop, built):
    from dashclip.index import open_index
    from dashclip.index.catalog_index import add_products, open_photo_index, remove_products
    from dashclip.serving.search import Searcher

    raw = _photo(shop)
    before = [h.id for h in Searcher.open(shop.model_dir, built).search_image(raw, k=10)]
    remove_products(built, [before[0], before[3]])
    main, photo = open_index(built), open_index(built / "photo")
    assert len(main) == len(photo) == len(shop.catalog) - 2
    assert not photo.has(before[0]) and not photo.has(before[3])
    assert open_photo_index(main) is not None
    with pytest.raises(ValueError, match="not in the index"):
        remove_products(built, [before[1], 424242])
    assert len(open_index(built / "photo")) == len(shop.catalog) - 2      # nothing removed
    added = add_products(built, shop.model, shop.catalog)
    assert sorted(added) == sorted([before[0], before[3]])
    assert len(open_index(built)) == len(open_index(built / "photo")) == len(shop.catalog)
    # the added products get the vectors a rebuild gives them
    assert [h.id for h in Searcher.open(shop.model_dir, built).search_image(raw, k=10)] == before


def test_an_out_of_step_photo_index_is_left_aside(shop, built):
    from dashclip.index import updating
    from dashclip.serving.search import Searcher

    with updating(built) as index:          # the main index changed alone (e.g. a killed update)
        index.remove([101])
        index.save()
    s = Searcher.open(shop.model_dir, built)
    assert s.photo_index is None
    raw = _photo(shop)
    q = s.encode_images([Image.open(io.BytesIO(raw)).convert("RGB")])
    ids, _ = s.index.search(q, 5)
    assert [h.id for h in s.search_image(raw, k=5)] == list(ids[0])


def test_no_photo_index_for_a_weight_of_none_and_a_stale_one_is_removed(shop, built):
    from dashclip.index import open_index
    from dashclip.index.catalog_index import build_catalog_index

    build_catalog_index(shop.model, shop.model_dir, shop.catalog, built, quiet=True, photo_image_weight=None)
    assert "photo_index" not in open_index(built).meta and not (built / "photo").exists()


def test_photo_vectors_weight_is_checked():
    from dashclip.ranking import photo_vectors

    f, i = np.eye(2, dtype=np.float32), np.ones((2, 2), dtype=np.float32)
    assert np.allclose(photo_vectors(f, i, 0.25), 0.75 * f + 0.25 * i)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        photo_vectors(f, i, 1.5)


def test_photo_and_words_mix_in_units_of_each_sides_spread():
    """A product's score under the mixed vector is the two sides' cosines, each divided by its spread over the
    sample, mixed by the text weight: a side whose cosines spread twice as wide does not count twice."""
    from dashclip.ranking import mix_photo_and_words, spread_sample_rows

    rng = np.random.default_rng(0)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    # products vary widely along the first 8 dimensions and little along the last 8
    products = unit(rng.normal(size=(300, 16)) * np.r_[np.ones(8), np.full(8, 0.2)]).astype(np.float32)
    sample = products[spread_sample_rows(len(products))]
    assert len(sample) == 256 and len(np.unique(spread_sample_rows(300))) == 256
    # the photo lies along the wide dimensions, the words along the narrow ones
    photo = unit(np.r_[rng.normal(size=8), np.zeros(8)][None])
    words = unit(np.r_[np.zeros(8), rng.normal(size=8)][None])
    sp, sw = (photo @ sample.T).std(), (words @ sample.T).std()
    assert sp > 1.5 * sw
    mixed = mix_photo_and_words(photo, words, sample, 0.5)
    assert np.isclose(np.linalg.norm(mixed), 1.0)
    want = 0.5 * (photo @ products.T) / sp + 0.5 * (words @ products.T) / sw
    got = mixed @ products.T
    assert np.allclose(got / got[0, 0], want / want[0, 0], atol=1e-4)   # the same scores up to one scale
    plain = unit(0.5 * photo + 0.5 * words)
    # the words' best product ranks higher than under the plain sum of the two vectors
    best = int(np.argmax(words @ products.T))
    rank = lambda scores: int((scores[0] > scores[0, best]).sum())  # noqa: E731
    assert rank(got) < rank(plain @ products.T)
    # no spread to measure with one product: the plain sum
    assert np.allclose(mix_photo_and_words(photo, words, products[:1], 0.5), plain, atol=1e-6)
    with pytest.raises(ValueError, match="text weight"):
        mix_photo_and_words(photo, words, sample, 1.5)


def test_query_expansion_exactly_and_by_hand():
    from dashclip.ranking import expand_exactly, expand_query

    products = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    q = np.array([[0.6, 0.8, 0]], dtype=np.float32)
    # first 2 hits: product 1 (0.96) and product 2 (0.8); product 0 (0.6) is third
    want = q[0] + 0.96 * products[1] + 0.8 * products[2]
    assert np.allclose(expand_exactly(q, products, 2)[0], want / np.linalg.norm(want), atol=1e-6)
    # a query's own product left out: product 1 may not be used, so products 2 and 0 are
    want = q[0] + 0.8 * products[2] + 0.6 * products[0]
    assert np.allclose(expand_exactly(q, products, 2, exclude=np.array([1]))[0], want / np.linalg.norm(want),
                       atol=1e-6)
    assert np.array_equal(expand_exactly(q, products, 0), q)
    # a negative score, or none (-inf: fewer hits than asked), adds nothing
    hits = products[None, [1, 3]]
    assert np.allclose(expand_query(q, hits, np.array([[0.0, -0.5]], np.float32)), q)
    assert np.allclose(expand_query(q, hits, np.array([[-np.inf, -np.inf]], np.float32)), q)
