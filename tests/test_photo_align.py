"""Photo alignment (issue 20): a photo head trained on catalog photos against the frozen product embeddings.
It starts as the image projection, learns to put photos next to their products, keeps the model id (so the
index still opens), saves and loads with the model, exports to ONNX, and serves photo queries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import dashclip
from dashclip.data.catalog import Catalog
from dashclip.models.embeddings import embed_catalog
from dashclip.training.loop import LoopConfig
from dashclip.training.photo_align import PhotoAlignConfig, align_photos
from toy_catalog import make_catalog


def photo_catalog(tmp, corrupt: bool = False) -> Catalog:
    """The toy catalog with its extra photos in splits, a tiny model at `tmp/model` and its product embeddings at
    `tmp/emb`. `corrupt`: one train photo is not an image."""
    cat_dir = make_catalog(tmp / "toy")
    images = pd.read_parquet(cat_dir / "images.parquet")
    images.loc[images["role"] == "extra", "split"] = ["train", "train", "val", "test", "train", "val"]
    images.to_parquet(cat_dir / "images.parquet")
    if corrupt:
        (cat_dir / "images" / "120_b.png").write_bytes(b"not a png")
    torch.manual_seed(0)
    dashclip.create_model("tiny", pretrained=False).save(tmp / "model")
    catalog = Catalog.open(cat_dir)
    embed_catalog(dashclip.load(tmp / "model"), catalog, tmp / "emb", progress=False)
    return catalog


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("photo-align")
    catalog = photo_catalog(tmp, corrupt=True)     # the corrupt train photo: left out, counted
    # contrastive only: this fixture checks that held-out photos find their own product, which the cosine term
    # trades for landing among products like it (its own test below)
    cfg = PhotoAlignConfig(epochs=30, batch_size=16, lr=3e-3, hidden=64, heldout_frac=0.2, regression_weight=0.0,
                           tower_lr=0.0)     # the head alone (test_photo_tower.py has the tower top)
    loop = LoopConfig(epochs=30, batch_size=16, lr=3e-3, weight_decay=0.01, progress=False, log_every=5)
    summary = align_photos(tmp / "model", catalog, tmp / "emb", tmp / "run", cfg, loop)
    return tmp, catalog, summary


def test_photo_head_starts_as_the_image_projection_and_keeps_the_model_id():
    model = dashclip.create_model("tiny", pretrained=False).eval()
    before = model.model_id
    pixels = torch.rand(3, 3, model.config.image_size, model.config.image_size)
    image = model.encode_image(pixels)
    assert torch.allclose(model.encode_photo(pixels), image)          # no head: photos are image embeddings
    model.add_photo_encoder(hidden=32)
    assert torch.allclose(model.encode_photo(pixels), image, atol=1e-6)   # the MLP's output layer starts at 0
    with torch.no_grad():
        model.photo_proj.mlp[-1].weight.normal_()
    assert not torch.allclose(model.encode_photo(pixels), image, atol=1e-3)
    assert model.model_id == before                                   # the head is outside the product space
    trained = model.lock_for_photos()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == \
        [f"photo_proj.{n}" for n, _ in trained[0].named_parameters()]


def test_alignment_trains_on_train_photos_and_puts_photos_on_their_products(aligned):
    tmp, catalog, s = aligned
    # 48 products, 20% held out by id; extra photos: 3 "train" (trained unless held out), 2 "val"
    # (evaluated), 1 "test" (neither)
    from dashclip.training.data import heldout_mask

    ids = catalog.products["id"].tolist()
    held = dict(zip(ids, heldout_mask(ids, 0.2, 0)))
    extras = dict(zip([100, 105, 110, 115, 120, 125], ["train", "train", "val", "test", "train", "val"]))
    readable = {i: sp for i, sp in extras.items() if i != 120}
    want_train = sum(not held[i] for i in ids) + sum(not held[i] for i, sp in readable.items() if sp == "train")
    want_held = sum(held[i] for i in ids) + sum(held[i] for i, sp in readable.items() if sp == "train")
    assert s["train_photos"] == want_train and s["heldout_photos"] == want_held
    assert s["unreadable_or_not_embedded"] == 1 and "120_b.png" in s["first_unreadable"][0]
    assert s.get("val_photos", 0) == sum(not held[i] for i, sp in extras.items() if sp == "val")
    assert s["heldout_photos"] >= 1
    assert s["steps"] == 30 * (s["train_photos"] // 16)
    last = s["evals"][-1]
    assert last["heldout_recall@1"] == pytest.approx(last["heldout_recall@1"])
    # training photos are where the head learns; the toy products differ in colour and stripe, so held-out
    # photos land on their own product far more often than the untrained image projection puts them there
    assert last["heldout_recall@10"] > s["start"]["heldout_recall@10"]
    assert (tmp / "run" / "photo_align.json").is_file() and (tmp / "run" / "metrics.jsonl").is_file()


def test_aligned_model_loads_with_its_head_and_serves_the_same_index(aligned, tmp_path):
    from dashclip.index.catalog_index import build_catalog_index
    from dashclip.serving.search import Searcher

    tmp, catalog, _ = aligned
    base, model = dashclip.load(tmp / "model"), dashclip.load(tmp / "run" / "model")
    assert model.has_photo_encoder and not base.has_photo_encoder and model.photo_hidden == 64
    assert model.model_id == base.model_id
    # nothing but the photo head moved: text search (query encoder, product side) is the same to the bit
    assert all(torch.equal(t, base.state_dict()[k]) for k, t in model.state_dict().items()
               if not k.startswith("photo_proj."))
    assert model.photo_tower is None                   # no --tower-lr: the head alone
    build_catalog_index(base, tmp / "model", catalog, tmp_path / "index", embeddings=tmp / "emb", quiet=True)
    # the aligned model opens the index built with the model it came from (Searcher.open checks the id)
    s = Searcher.open(tmp / "run" / "model", tmp_path / "index")
    from PIL import Image

    photo = Image.open(catalog.image_path(catalog.product(100)["image"])).convert("RGB")
    want = model.encode_photo([photo]).numpy()
    assert not np.allclose(want, base.encode_image([photo]).numpy(), atol=1e-3)
    assert np.allclose(s.encode_images([photo]), want / np.linalg.norm(want), atol=1e-5)
    # with a photo head a photo alone searches the product embeddings, not the photo index's mix
    assert s.photo_index is not None
    ids, _ = s.index.search(s.encode_images([photo]), 5)
    assert [h.id for h in s.search_image(photo, k=5)] == list(ids[0])
    without = Searcher.open(tmp / "model", tmp_path / "index")
    ids, _ = without.photo_index.search(without.encode_images([photo]), 5)
    assert [h.id for h in without.search_image(photo, k=5)] == list(ids[0])


def test_onnx_export_carries_the_photo_head(aligned, tmp_path):
    pytest.importorskip("onnxruntime")
    from dashclip.models.onnx_model import OnnxModel, export_onnx

    tmp, catalog, _ = aligned
    model = dashclip.load(tmp / "run" / "model")
    export_onnx(tmp / "run" / "model", tmp_path / "onnx")
    onnx = OnnxModel.open(tmp_path / "onnx")
    pixels = torch.rand(4, 3, model.config.image_size, model.config.image_size)
    got, want = onnx.encode_photo(pixels), model.encode_photo(pixels).numpy()
    assert (got * want).sum(1).min() > 0.9999
    assert onnx.manifest["has_photo_encoder"] is True


def test_a_photo_head_reads_photos_at_its_own_size_in_training_serving_and_onnx(aligned, tmp_path):
    """`image_size` on the head: photos are read at that side wherever a photo is encoded (the training
    cache, encode_photo, the ONNX photo graph), while the product side and model id stay the catalog's."""
    from PIL import Image

    from dashclip.io import read_json

    tmp, catalog, _ = aligned
    cfg = PhotoAlignConfig(epochs=2, batch_size=16, hidden=16, heldout_frac=0.2, image_size=48, tower_lr=0.0)
    loop = LoopConfig(epochs=2, batch_size=16, lr=3e-3, weight_decay=0.01, progress=False, log_every=5)
    align_photos(tmp / "model", catalog, tmp / "emb", tmp_path / "run", cfg, loop)
    model, base = dashclip.load(tmp_path / "run" / "model"), dashclip.load(tmp / "model")
    assert (model.photo_size, model.photo_image_size, model.config.image_size) == (48, 48, 32)
    assert model.model_id == base.model_id and "photos at 48 px" in (tmp_path / "run" / "model" / "README.md").read_text()
    # the head trained on features of photos read at 48 px: the cache it built says so
    sizes = [read_json(m)["preprocessing"]["image_size"] for m in (tmp_path / "run" / "cache").glob("*/meta.json")]
    assert sizes == [48]
    photos = [Image.open(catalog.image_path(catalog.product(i)["image"])).convert("RGB") for i in (100, 101, 102)]
    got = model.encode_photo(photos)
    with torch.no_grad():
        at48 = model.project_photo(model.image_features(model.preprocess(photos, 48))[1])
        at32 = model.project_photo(model.image_features(model.preprocess(photos))[1])
    assert torch.allclose(got, at48, atol=1e-6) and not torch.allclose(got, at32, atol=1e-3)
    # the catalog's images are still read at the config's size
    assert model.preprocess(photos).shape[-1] == 32
    # the photo evaluator's feature cache reads its photos at the head's size too: the same answers as without
    from dashclip.evaluation.evaluators import GroceryEvaluator

    direct, _ = GroceryEvaluator(catalog, split="val")._encode_photos(model)
    cached, _ = GroceryEvaluator(catalog, split="val", feature_cache_dir=tmp_path / "eval-cache")._encode_photos(model)
    assert np.allclose(cached, direct, atol=5e-3)          # the cache keeps float16 features
    with pytest.raises(ValueError, match="image_size"):
        model.add_photo_encoder(16, image_size=8)
    model.add_photo_encoder(16, image_size=32)       # the catalog's own size is no separate photo size
    assert model.photo_image_size is None and model.photo_size == 32

    pytest.importorskip("onnxruntime")
    from dashclip.models.onnx_model import OnnxModel, export_onnx

    export_onnx(tmp_path / "run" / "model", tmp_path / "onnx")
    onnx = OnnxModel.open(tmp_path / "onnx")
    assert onnx.manifest["photo_image_size"] == 48 and onnx.photo_size == 48
    assert (onnx.encode_photo(photos) * got.numpy()).sum(1).min() > 0.9999


def test_an_older_onnx_export_whose_photo_graph_reads_pooled_features_still_answers(aligned, tmp_path):
    """Exports made before photo sizes have a photo graph pooled -> embedding, fed by the image graph."""
    import warnings

    pytest.importorskip("onnxruntime")
    from dashclip.io import read_json, write_json
    from dashclip.models.onnx_model import MANIFEST, OnnxModel, export_onnx

    tmp, _, _ = aligned
    model = dashclip.load(tmp / "run" / "model").eval()
    export_onnx(tmp / "run" / "model", tmp_path / "onnx")

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pooled):
            return self.m.project_photo(pooled)
    pooled = torch.rand(2, model.image_tower.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the legacy exporter's deprecation notice
        torch.onnx.export(Pooled(), (pooled,), str(tmp_path / "onnx" / "photo.onnx"), dynamo=False,
                          input_names=["pooled"], output_names=["embedding"],
                          dynamic_axes={"pooled": {0: "batch"}, "embedding": {0: "batch"}})
    manifest = read_json(tmp_path / "onnx" / MANIFEST)
    manifest.pop("photo_image_size")
    write_json(tmp_path / "onnx" / MANIFEST, manifest)
    onnx = OnnxModel.open(tmp_path / "onnx")
    pixels = torch.rand(3, 3, 32, 32)
    assert (onnx.encode_photo(pixels) * model.encode_photo(pixels).numpy()).sum(1).min() > 0.9999


def test_the_regression_term_pulls_photos_onto_their_products():
    """The cosine term beside the contrastive loss: the loss is their weighted sum, and training with it
    leaves photos closer to their own products' embeddings than the contrastive loss alone (which only
    ranks, so it leaves the cosines wherever they rank well)."""
    import torch.nn.functional as F
    from torch import nn

    from dashclip.training.photo_align import PhotoAligner, PhotoAlignTask, PhotoSet

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.photo_proj = nn.Linear(16, 8)

        def embed_photo_features(self, pooled):
            return F.normalize(self.photo_proj(pooled), dim=-1)

    g = torch.Generator().manual_seed(0)
    products = F.normalize(torch.randn(32, 8, generator=g), dim=-1)
    class Features:             # a feature cache's read side, in memory
        table = torch.randn(64, 16, generator=g).half()

        def photo_features(self, rows):
            return self.table[torch.as_tensor(rows)].float()

    photos = PhotoSet(Features(), np.arange(64), np.arange(64) % 32)
    batch = PhotoAlignTask(photos, {}, 0.0).make_batch(list(range(64)))
    own_cos = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        aligner = PhotoAligner(Head(), products, temperature=0.05)
        task = PhotoAlignTask(photos, {}, regression_weight=weight)
        loss, logged = task.loss(aligner, batch)
        assert loss.item() == pytest.approx(logged["contrastive"] + weight * logged["regression"], rel=1e-5)
        opt = torch.optim.Adam(aligner.parameters(), lr=1e-2)
        for _ in range(200):
            opt.zero_grad()
            task.loss(aligner, batch)[0].backward()
            opt.step()
        with torch.no_grad():
            own_cos[weight] = float((aligner.model.embed_photo_features(batch["features"]) * products[batch["rows"]])
                                    .sum(1).mean())
    assert own_cos[10.0] > own_cos[0.0] + 0.03, own_cos     # 0.53 against 0.47 when written
    with pytest.raises(ValueError, match="regression_weight"):
        PhotoAlignConfig(regression_weight=-1.0)


def test_nothing_to_train_on_is_a_clear_error(tmp_path):
    cat_dir = make_catalog(tmp_path / "toy", extra_photos=0)
    dashclip.create_model("tiny", pretrained=False).save(tmp_path / "model")
    catalog = Catalog.open(cat_dir)
    embed_catalog(dashclip.load(tmp_path / "model"), catalog, tmp_path / "emb", progress=False)
    with pytest.raises(ValueError, match="heldout_frac"):
        PhotoAlignConfig(heldout_frac=1.0)
    cfg = PhotoAlignConfig(heldout_frac=0.99)       # every product held out: no photo left to train on
    with pytest.raises(ValueError, match="photos to train on"):
        align_photos(tmp_path / "model", catalog, tmp_path / "emb", tmp_path / "run", cfg,
                     LoopConfig(progress=False))


def assert_the_guard_keeps_the_photo_encoder(base_dir, aligned_dir, tmp_path):
    """The pipeline's guard ships the base encoder (`ship_base`): the photo encoder of `aligned_dir` stays."""
    import shutil
    from types import SimpleNamespace

    from dashclip.pipeline.steps import ship_base

    (tmp_path / "stage1").mkdir()
    shutil.copytree(base_dir, tmp_path / "stage1" / "model")
    shutil.copytree(aligned_dir, tmp_path / "model")
    ship_base(SimpleNamespace(path=lambda *parts: tmp_path.joinpath(*parts)))
    shipped, aligned_model = dashclip.load(tmp_path / "model"), dashclip.load(aligned_dir)
    pixels = torch.rand(2, 3, shipped.config.image_size, shipped.config.image_size)
    assert shipped.has_photo_encoder and shipped.photo_encoder_spec == aligned_model.photo_encoder_spec
    assert torch.allclose(shipped.encode_photo(pixels), aligned_model.encode_photo(pixels), atol=1e-6)


def test_the_pipeline_guard_keeps_the_photo_head_when_it_ships_the_base_encoder(aligned, tmp_path):
    tmp, _, _ = aligned
    assert_the_guard_keeps_the_photo_encoder(tmp / "model", tmp / "run" / "model", tmp_path)


def test_cli_align_photos(aligned, tmp_path):
    from typer.testing import CliRunner

    from dashclip.cli import app

    tmp, catalog, _ = aligned
    res = CliRunner().invoke(app, ["align-photos", "--model", str(tmp / "model"), "--catalog", str(catalog.root),
                                   "--embeddings", str(tmp / "emb"), "--out", str(tmp_path / "run"), "--epochs", "2",
                                   "--hidden", "16", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "photo -> own product, before / after" in res.output and "heldout_recall@10" in res.output
    model = dashclip.load(tmp_path / "run" / "model")
    assert model.has_photo_encoder and model.photo_hidden == 16
    bad = CliRunner().invoke(app, ["align-photos", "--model", str(tmp / "model"), "--catalog", str(catalog.root),
                                   "--embeddings", str(tmp / "emb"), "--out", str(tmp_path / "run2"),
                                   "--heldout-frac", "1.5", "--no-progress"])
    assert bad.exit_code != 0 and "heldout_frac" in bad.output
