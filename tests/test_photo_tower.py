"""A photo side with its own tower top (issue 20): `add_photo_encoder(tower_top=True)` copies the image tower's
last stage for photo queries, `align-photos --tower-lr` trains it with the head on cached trunk features, and
everything that encodes a photo (encode_photo, the feature-cache evaluators, ONNX, save/load, the pipeline's
guard) runs it, while the image tower, the product side and the model id stay as the index has them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import dashclip
from dashclip.data.catalog import Catalog
from dashclip.models.towers import EfficientNetLiteTower, TinyConvTower, TowerTop
from dashclip.training.loop import LoopConfig
from dashclip.training.photo_align import PhotoAlignConfig, align_photos
from toy_catalog import make_catalog

TOWER_LR = 3e-2


@pytest.mark.parametrize("tower", [lambda: TinyConvTower(16), lambda: EfficientNetLiteTower(pretrained=False)],
                         ids=["tiny", "efficientnet-lite0"])
def test_a_tower_top_copy_finishes_the_trunk_as_the_tower_does(tower):
    torch.manual_seed(0)
    t = tower().eval()
    pixels = torch.rand(2, 3, 64, 64)
    top = t.top_copy().eval()
    with torch.no_grad():
        want, got = t(pixels), top(t.trunk(pixels))
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
    # a copy: training it moves nothing of the tower
    top_params = {id(p) for p in top.parameters()}
    assert top_params and not top_params & {id(p) for p in t.parameters()}


def test_a_tower_top_keeps_its_batchnorm_statistics_in_training():
    top = TowerTop(nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)))
    before = top.layers[1].running_mean.clone()
    top.train()
    assert top.training and top.layers[0].training and not top.layers[1].training
    top(torch.randn(4, 4, 3, 3) * 5 + 3)
    assert torch.equal(top.layers[1].running_mean, before)


def test_a_photo_tower_top_starts_as_the_tower_and_stays_outside_the_model_id():
    torch.manual_seed(0)
    model = dashclip.create_model("tiny", pretrained=False).eval()
    before = model.model_id
    pixels = torch.rand(3, 3, model.config.image_size, model.config.image_size)
    image = model.encode_image(pixels)
    model.add_photo_encoder(hidden=32, tower_top=True)
    assert model.photo_feature_part == "trunk"
    assert model.photo_encoder_spec == {"hidden": 32, "image_size": None, "tower_top": True}
    assert torch.allclose(model.encode_photo(pixels), image, atol=1e-6)
    with torch.no_grad():
        for p in model.photo_tower.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert not torch.allclose(model.encode_photo(pixels), image, atol=1e-3)
    assert torch.allclose(model.encode_image(pixels), image)          # the image tower did not move
    assert model.model_id == before
    model.lock_for_photos()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"photo_proj", "photo_tower"}
    model.remove_photo_encoder()
    assert not model.has_photo_encoder and model.photo_tower is None and model.photo_encoder_spec is None
    assert torch.allclose(model.encode_photo(pixels), image)

    class NoStages(nn.Module):          # a tower with no last stage to copy (a ViT, say)
        width = model.image_tower.width

    model.image_tower = NoStages()
    with pytest.raises(ValueError, match="no last stage to copy"):
        model.add_photo_encoder(hidden=32, tower_top=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from test_photo_align import photo_catalog

    tmp = tmp_path_factory.mktemp("photo-tower")
    catalog = photo_catalog(tmp)
    cfg = PhotoAlignConfig(epochs=3, batch_size=16, lr=3e-3, hidden=32, heldout_frac=0.2, tower_lr=TOWER_LR)
    summary = align_photos(tmp / "model", catalog, tmp / "emb", tmp / "run", cfg, cfg.loop(progress=False))
    return tmp, catalog, summary


def test_align_photos_trains_the_tower_top_and_nothing_of_the_product_side(trained):
    from dashclip.io import read_json

    tmp, catalog, s = trained
    base, model = dashclip.load(tmp / "model"), dashclip.load(tmp / "run" / "model")
    assert model.photo_encoder_spec == {"hidden": 32, "image_size": None, "tower_top": True}
    assert model.model_id == base.model_id and s["config"]["tower_lr"] == TOWER_LR and s["tower_top"] is True
    assert s["loop"]["lr_scales"] == {"model.photo_tower.": pytest.approx(TOWER_LR / 3e-3)}
    assert "its own tower top" in (tmp / "run" / "model" / "README.md").read_text()
    state, base_state = model.state_dict(), base.state_dict()
    assert all(torch.equal(t, base_state[k]) for k, t in state.items() if not k.startswith(("photo_proj.", "photo_tower.")))
    # the top started as the tower's last conv and moved
    assert not torch.equal(state["photo_tower.layers.0.weight"], base_state["image_tower.net.6.weight"])
    # it trained on the trunk's features, cached once (a cache of its own key beside any tower cache)
    metas = [read_json(m) for m in (tmp / "run" / "cache").glob("*/meta.json")]
    assert [m.get("part") for m in metas] == ["trunk"]
    assert np.load(next((tmp / "run" / "cache").glob("*/trunk.npy"))).shape[1:] == (32, 8, 8)
    assert s["steps"] == 3 * (s["train_photos"] // 16) and s["evals"]


def test_a_tower_with_no_last_stage_to_copy_trains_the_head_alone_and_says_so(trained, tmp_path, monkeypatch):
    tmp, catalog, _ = trained
    monkeypatch.delattr(TinyConvTower, "top_copy")       # as a ViT tower (clip, blip): nothing to copy
    cfg = PhotoAlignConfig(epochs=1, batch_size=16, hidden=8, heldout_frac=0.2)      # tower_lr: the default
    s = align_photos(tmp / "model", catalog, tmp / "emb", tmp_path / "run", cfg, cfg.loop(progress=False))
    assert s["tower_top"] is False and "no last stage to copy" in s["tower_top_skipped"]
    assert dashclip.load(tmp_path / "run" / "model").photo_encoder_spec["tower_top"] is False
    assert s["loop"]["lr_scales"] is None


def test_the_tower_top_trains_at_its_own_lr():
    from dashclip.optim import param_groups
    from dashclip.training.photo_align import PhotoAligner

    model = dashclip.create_model("tiny", pretrained=False)
    model.add_photo_encoder(hidden=8, tower_top=True)
    model.lock_for_photos()
    cfg = PhotoAlignConfig(lr=1e-3, tower_lr=2e-4)
    loop = cfg.tower_lr_on(cfg.loop())
    aligner = PhotoAligner(model, torch.zeros(4, model.embed_dim), cfg.temperature)
    lrs = {id(p): g.get("lr", loop.lr) for g in param_groups(aligner, loop.weight_decay, loop.lr, loop.lr_scales)
           for p in g["params"]}
    assert [lrs[id(p)] for p in model.photo_tower.parameters()] == pytest.approx([2e-4] * 2)   # conv weight, bias
    assert {lrs[id(p)] for p in model.photo_proj.parameters()} == {1e-3}
    no_top = PhotoAlignConfig(tower_lr=0.0)
    assert no_top.tower_lr_on(no_top.loop()).lr_scales is None        # no tower top: one lr, as before
    # a loop of the caller's own still trains the top at tower_lr
    assert cfg.tower_lr_on(LoopConfig(lr=4e-3)).lr_scales == {"model.photo_tower.": pytest.approx(0.05)}
    with pytest.raises(ValueError, match="tower_lr"):
        PhotoAlignConfig(tower_lr=-1.0)


def test_every_photo_path_runs_the_tower_top(trained, tmp_path):
    from PIL import Image

    from dashclip.evaluation.evaluators import GroceryEvaluator
    from dashclip.serving.search import Searcher
    from dashclip.index.catalog_index import build_catalog_index

    tmp, catalog, _ = trained
    model, base = dashclip.load(tmp / "run" / "model"), dashclip.load(tmp / "model")
    photos = [Image.open(catalog.image_path(catalog.product(i)["image"])).convert("RGB") for i in (100, 101, 102)]
    got = model.encode_photo(photos)
    with torch.no_grad():
        pixels = model.preprocess(photos)
        want = model.project_photo(model.photo_tower(model.image_tower.trunk(pixels))[1])
        head_only = model.project_photo(model.image_features(pixels)[1])
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, head_only, atol=1e-3)
    # the evaluators' feature cache (trunk features, float16) gives the answers encode_photo gives
    direct, _ = GroceryEvaluator(catalog, split="val")._encode_photos(model)
    cached, _ = GroceryEvaluator(catalog, split="val", feature_cache_dir=tmp_path / "cache")._encode_photos(model)
    assert np.allclose(cached, direct, atol=5e-3)
    # serving: the aligned model opens the index of the model it came from and answers photos with the top
    build_catalog_index(base, tmp / "model", catalog, tmp_path / "index", embeddings=tmp / "emb", quiet=True)
    s = Searcher.open(tmp / "run" / "model", tmp_path / "index")
    assert np.allclose(s.encode_images(photos), got.numpy(), atol=1e-5)

    pytest.importorskip("onnxruntime")
    from dashclip.models.onnx_model import OnnxModel, export_onnx

    export_onnx(tmp / "run" / "model", tmp_path / "onnx")
    onnx = OnnxModel.open(tmp_path / "onnx")
    assert (onnx.encode_photo(photos) * got.numpy()).sum(1).min() > 0.9999


def test_the_pipeline_guard_keeps_the_tower_top_when_it_ships_the_base_encoder(trained, tmp_path):
    from test_photo_align import assert_the_guard_keeps_the_photo_encoder

    tmp, _, _ = trained
    assert_the_guard_keeps_the_photo_encoder(tmp / "model", tmp / "run" / "model", tmp_path)


def test_a_trunk_feature_cache_has_its_own_key_and_reads_back(tmp_path):
    from dashclip.models import feature_cache
    from dashclip.models.feature_cache import build_or_open, load_images

    cat_dir = make_catalog(tmp_path / "toy", extra_photos=0)
    paths = Catalog.open(cat_dir).image_index().paths[:10]
    torch.manual_seed(0)
    model = dashclip.create_model("tiny", pretrained=False).eval()
    tower = build_or_open(model, paths, tmp_path / "c", show_progress=False)
    trunk = build_or_open(model, paths, tmp_path / "c", show_progress=False, part="trunk", batch_size=4, save_every=4)
    assert tower.path != trunk.path and (tower.part, trunk.part) == ("tower", "trunk")
    assert feature_cache.find(model, paths, tmp_path / "c").path == tower.path   # find() means the tower's
    with torch.no_grad():
        want = model.image_tower.trunk(model.preprocess(load_images(paths)[0]))
    assert torch.allclose(trunk.photo_features(range(10)), want, atol=2e-2, rtol=1e-2)
    assert torch.allclose(tower.photo_features([3, 1]), tower.pooled_features([3, 1]))
    with pytest.raises(KeyError, match="no 'pooled'"):
        trunk.pooled_features([0])
    with pytest.raises(ValueError, match="part"):
        build_or_open(model, paths, tmp_path / "c", show_progress=False, part="head")


def test_pipeline_photos_tower_lr_is_checked():
    from dashclip.pipeline.config import ConfigError, parse_config

    base = {"catalog": {"source": "p.csv"}, "grades": {"train": "t.csv"}}
    assert parse_config({**base, "photos": {"tower_lr": 3e-4}}).photos.tower_lr == 3e-4
    with pytest.raises(ConfigError, match=r"\[photos\] tower_lr must be >= 0"):
        parse_config({**base, "photos": {"tower_lr": -1.0}})


def test_the_cli_and_the_pipeline_default_to_align_photos_own_recipe():
    import inspect

    from dashclip.pipeline.config import PhotosConfig
    from dashclip.training import cli

    want = PhotoAlignConfig()
    shared = ("epochs", "batch_size", "lr", "hidden", "regression_weight", "tower_lr")
    assert {k: getattr(PhotosConfig(), k) for k in shared} == {k: getattr(want, k) for k in shared}
    import typer

    app = typer.Typer()
    cli.register(app)
    command = next(c for c in app.registered_commands if c.name == "align-photos")
    options = inspect.signature(command.callback).parameters
    assert {k: options[k].default.default for k in shared} == {k: getattr(want, k) for k in shared}
