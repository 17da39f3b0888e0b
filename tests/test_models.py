"""The product encoder: tiny configs of every kind (dashclip, blip, clip) forward and backward,
save/load round trips, the fusion's zero-init cross-attention, the offline default, embed-catalog."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dashclip
from dashclip.models.config import builtin_configs, get_config
from dashclip.models.factory import create_model
from toy_catalog import make_catalog

IMAGES = [Image.new("RGB", (60, 80), c) for c in ((200, 20, 20), (20, 20, 200), (20, 160, 20))]
TEXTS = ["Red cotton shirt", "Blue denim jeans", "Green canvas bag"]


def forward_backward(model):
    """One ITC-style step through every part used in training: all trainable parts get gradients."""
    model.train()
    tok = model.tokenize(TEXTS)
    patches, pooled = model.image_features(model.preprocess(IMAGES))
    tokens, text_pooled = model.text_features(tok["input_ids"], tok["attention_mask"])
    fused = model.fuse(tokens, tok["attention_mask"], patches)
    img, txt, prod = model.project_image(pooled), model.project_text(text_pooled), model.project_fused(fused)
    assert img.shape == txt.shape == prod.shape == (3, model.embed_dim)
    assert torch.allclose(prod.norm(dim=-1), torch.ones(3), atol=1e-5)
    loss = -(img * txt).sum() - (prod * txt).sum() + model.itm_logits(fused).logsumexp(-1).sum()
    loss.backward()
    for part in ("image_proj", "text_proj", "fused_proj", "itm_head"):
        assert all(p.grad is not None for p in getattr(model, part).parameters()), part
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_tower.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_tower.parameters())


def assert_round_trip(model, path):
    model.add_query_encoder()
    model.save(path)
    loaded = dashclip.load(path)
    assert loaded.model_id == model.model_id and loaded.has_query_encoder
    assert json.loads((path / "config.json").read_text())["model_id"] == model.model_id
    for name in ("encode_text", "encode_query"):
        assert torch.allclose(getattr(loaded, name)(TEXTS), getattr(model, name)(TEXTS), atol=1e-5), name
    assert torch.allclose(loaded.encode_image(IMAGES), model.encode_image(IMAGES), atol=1e-5)
    assert torch.allclose(loaded.encode_product(TEXTS, IMAGES), model.encode_product(TEXTS, IMAGES), atol=1e-5)
    return loaded


def test_tiny_forward_backward_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False)
    forward_backward(model)
    assert_round_trip(model, tmp_path / "m")
    # the query encoder is a copy, not a view, of the text tower
    with torch.no_grad():
        next(model.query_tower.parameters()).add_(1.0)
    assert not torch.allclose(model.encode_query(TEXTS), model.encode_text(TEXTS))


def test_model_id_changes_with_any_weight():
    model = create_model("tiny", pretrained=False)
    before = model.model_id
    with torch.no_grad():
        model.fused_proj.bias.add_(1e-3)
    assert model.model_id != before
    # the query encoder is not part of the product embedding space the id names
    changed = model.model_id
    model.add_query_encoder()
    with torch.no_grad():
        next(model.query_tower.parameters()).add_(1.0)
    assert model.model_id == changed


def test_new_fusion_layer_computes_the_text_layer_it_was_copied_from():
    """Zero-init cross-attention: before training, a fusion layer copied from the last BERT layer
    gives that layer's output whatever the image."""
    model = create_model("tiny", pretrained=False).eval()
    bert = model.text_tower.bert
    tok = model.tokenize(TEXTS)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    with torch.no_grad():
        out = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden, expected = out.hidden_states[-2], out.last_hidden_state
        fusion_layer = model.fusion.layers[0]
        patches = torch.randn(3, 16, model.image_tower.width)
        got = fusion_layer(hidden, mask == 0, model.fusion.image_norm(patches))
    keep = mask.bool()
    assert torch.allclose(got[keep], expected[keep], atol=1e-5)


@pytest.mark.parametrize("fusion_input", ["shared", "last"])
def test_shared_fusion_input_starts_the_product_embedding_at_the_text_embedding(tmp_path, fusion_input):
    """fusion_input "shared": the fusion layers stand in for the text tower's top layers, so before
    Stage 1 (cross-attention at zero, fused projection a copy of the text projection) the product
    embedding is the text embedding, whatever the image (with the default model, "last", stacked on
    top, starts at cosine ~0.55 to it). Both train every part and survive a save/load round trip."""
    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False, fusion_input=fusion_input).eval()
    cos = (model.encode_product(TEXTS, IMAGES) * model.encode_text(TEXTS)).sum(-1)
    if fusion_input == "shared":
        assert torch.allclose(cos, torch.ones(3), atol=1e-5)
    forward_backward(model)
    loaded = assert_round_trip(model, tmp_path / "m")
    assert loaded.config.fusion_input == fusion_input


def test_fusion_weights_text_tower_shares_the_text_layers(tmp_path):
    """fusion_weights "text_tower" (BLIP's sharing): the fusion layers are the text tower's top layers plus
    their own cross-attention. The product embedding starts at the text embedding; a change to the text
    tower's top layer moves the product embedding (it is the same weight, not a copy); ITM's gradient
    reaches that layer, where with "copy" it does not; and the sharing survives a save/load round trip,
    with the shared weights saved once, under the text tower."""
    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False, fusion_input="shared", fusion_weights="text_tower").eval()
    cos = (model.encode_product(TEXTS, IMAGES) * model.encode_text(TEXTS)).sum(-1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-5)
    assert not any(k.startswith("fusion.layers.0.self_attn") for k in model.state_dict())

    def itm_grad_of_top_text_layer(m):
        m.zero_grad()
        tok = m.tokenize(TEXTS)
        patches, _ = m.image_features(m.preprocess(IMAGES))
        tokens, _ = m.text_features(tok["input_ids"], tok["attention_mask"])
        m.itm_logits(m.fuse(tokens, tok["attention_mask"], patches)).logsumexp(-1).sum().backward()
        g = m.text_tower.bert.encoder.layer[-1].intermediate.dense.weight.grad
        return 0.0 if g is None else float(g.abs().sum())

    assert itm_grad_of_top_text_layer(model) > 0
    copied = create_model("tiny", pretrained=False, fusion_input="shared")
    assert itm_grad_of_top_text_layer(copied) == 0.0

    forward_backward(model)
    loaded = assert_round_trip(model, tmp_path / "m")
    assert loaded.config.fusion_weights == "text_tower"
    before = loaded.encode_product(TEXTS, IMAGES)
    with torch.no_grad():
        w = loaded.text_tower.bert.encoder.layer[-1].output.dense.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(loaded.encode_product(TEXTS, IMAGES), before, atol=1e-4)
    with pytest.raises(ValueError, match="needs fusion_input 'shared'"):
        get_config("tiny", fusion_weights="text_tower")


def test_default_config_loads_offline_weights():
    model = create_model("default")
    assert model.embed_dim == 256 and model.config.text_tower["type"] == "minilm"
    assert model.config.fusion_input == "shared" and model.config.fusion_weights == "text_tower"
    # the text tower is all-MiniLM-L6-v2 with mean pooling: the same vectors as the off-the-shelf encoder
    from dashclip.models.sentence import SentenceEncoder, minilm_path
    ref = torch.as_tensor(np.asarray(SentenceEncoder(minilm_path()).encode(TEXTS)))
    tok = model.tokenize(TEXTS)
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model.text_features(tok["input_ids"], tok["attention_mask"])[1], dim=-1)
    assert torch.allclose(pooled, ref.float(), atol=1e-4)
    # batched by length, the vectors come back in the order of the texts, as one at a time
    texts = ["a much longer product title with many words in it", "tee", "Blue denim jeans"]
    enc = SentenceEncoder(minilm_path())
    together = enc.encode(texts, batch_size=2)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    patches, pooled = model.image_features(model.preprocess(IMAGES[:1]))
    assert patches.shape == (1, 49, 1280) and pooled.shape == (1, 1280)
    small = create_model("default", image_size=128)
    assert small.image_features(small.preprocess(IMAGES[:1]))[0].shape == (1, 16, 1280)


def _tiny_tokenizer(path):
    from transformers import AutoTokenizer

    from dashclip.models.sentence import minilm_path
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(str(path))


def test_blip_tiny_from_a_local_dir(tmp_path):
    from transformers import BlipConfig, BlipForImageTextRetrieval
    hf_dir = tmp_path / "blip-hf"
    cfg = BlipConfig(text_config=dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64, encoder_hidden_size=24),
                     vision_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=48, image_size=32, patch_size=8),
                     image_text_hidden_size=16)
    BlipForImageTextRetrieval(cfg).save_pretrained(hf_dir)
    _tiny_tokenizer(hf_dir)
    model = create_model("blip", hf_id=str(hf_dir), image_size=32, max_length=16)
    assert model.embed_dim == 16
    # the HF parts keep their roles: BLIP's own projections and ITM head
    hf = BlipForImageTextRetrieval.from_pretrained(hf_dir)
    assert torch.equal(model.image_proj.weight, hf.vision_proj.weight)
    assert torch.equal(model.itm_head.weight, hf.itm_head.weight)
    forward_backward(model)
    loaded = assert_round_trip(model, tmp_path / "m")
    assert loaded.config.hf_config is not None       # loading needs neither the hub nor hf_dir
    assert loaded.config.kind == "blip"


def test_clip_tiny_from_a_local_dir(tmp_path):
    from transformers import CLIPConfig, CLIPModel
    hf_dir = tmp_path / "clip-hf"
    cfg = CLIPConfig(text_config=dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64, eos_token_id=102),
                     vision_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=48, image_size=32, patch_size=8),
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(hf_dir)
    _tiny_tokenizer(hf_dir)
    model = create_model("clip", hf_id=str(hf_dir), image_size=32, max_length=16, fusion_layers=1)
    assert model.embed_dim == 16
    forward_backward(model)
    assert_round_trip(model, tmp_path / "m")


def test_config_errors_name_the_problem(tmp_path):
    assert {"default", "tiny", "blip", "clip"} <= set(builtin_configs())
    with pytest.raises(ValueError, match="unknown model config 'nope'"):
        get_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "colour": 1}')
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        get_config(bad)
    with pytest.raises(ValueError, match="fusion_input must be"):
        get_config("tiny", fusion_input="middle")
    with pytest.raises(ValueError, match="fusion_layers 9"):
        create_model("tiny", pretrained=False, fusion_layers=9)
    with pytest.raises(FileNotFoundError, match="not a dashclip model directory"):
        dashclip.load(tmp_path)
    model_dir = create_model("tiny", pretrained=False).save(tmp_path / "m")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        dashclip.load(model_dir)


def test_embed_catalog_writes_every_product_and_resumes(tmp_path, monkeypatch):
    from dashclip.models import embeddings as emb_mod
    from dashclip.models.embeddings import embed_catalog, load_embeddings

    catalog = make_catalog(tmp_path / "cat", extra_photos=0)
    (catalog / "images" / "101.png").write_bytes(b"not an image")     # one unreadable image
    model = create_model("tiny", pretrained=False)
    out = tmp_path / "emb"

    calls = {"n": 0}
    real = emb_mod.embed_rows

    def dies_on_third_batch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(emb_mod, "embed_rows", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        embed_catalog(model, catalog, out, batch_size=8, chunk_size=16, progress=False, amp=None)
    assert not out.exists() and len(list((tmp_path / "emb.partial").glob("chunk-*.npz"))) == 1
    calls["n"] = -100
    embed_catalog(model, catalog, out, batch_size=8, chunk_size=16, progress=False, amp=None)
    assert calls["n"] == -100 + 4        # 48 products, 16 done before: 4 batches of 8 re-run, not 6
    assert not (tmp_path / "emb.partial").exists()

    e = load_embeddings(out)
    assert len(e) == 48 and e.meta["model_id"] == model.model_id and e.meta["n_without_image"] == 1
    assert list(e.ids[:2]) == [100, 101] and not e.has_image[1]
    for kind in ("fused", "image", "text"):
        assert e.vectors[kind].shape == (48, model.embed_dim)
        assert np.allclose(np.linalg.norm(e.vectors[kind], axis=1), 1, atol=1e-5)
    from dashclip.data.catalog import Catalog
    cat = Catalog.open(catalog)
    want = model.encode_product(cat.product_texts()[:1], [Image.open(catalog / "images" / "100.png")])
    assert np.allclose(e.vectors["fused"][0], want[0].numpy(), atol=1e-5)   # batched by length: same vectors
    # The default precision ("auto": bf16 where the CPU has it, as Stage 1 trains) gives the same
    # directions to bf16's precision, and says which precision made them.
    monkeypatch.setattr(emb_mod, "embed_rows", real)
    auto = load_embeddings(embed_catalog(model, catalog, tmp_path / "auto", batch_size=8, progress=False))
    assert auto.meta["precision"] in ("bf16", "fp32") and e.meta["precision"] == "fp32"
    cosine = (auto.vectors["fused"] * e.vectors["fused"]).sum(1)
    assert cosine.min() > 0.995 and np.allclose(np.linalg.norm(auto.vectors["fused"], axis=1), 1, atol=1e-5)


def test_embed_catalog_cli(tmp_path):
    from typer.testing import CliRunner

    from dashclip.cli import app
    catalog = make_catalog(tmp_path / "cat", extra_photos=0)
    model_dir = create_model("tiny", pretrained=False).save(tmp_path / "m")
    res = CliRunner().invoke(app, ["embed-catalog", "--model", str(model_dir), "--catalog", str(catalog),
                                   "--out", str(tmp_path / "e"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "fused.npy").exists() and "48 products" in res.output
    res = CliRunner().invoke(app, ["embed-catalog", "--model", str(tmp_path / "nope"), "--catalog", str(catalog),
                                   "--out", str(tmp_path / "e2")])
    assert res.exit_code != 0 and "not a dashclip model directory" in " ".join(res.output.split())


def test_embed_catalog_reads_stage1_image_features_from_the_cache(tmp_path, monkeypatch):
    """With a feature cache for this image tower, embedding skips the tower and gives the same vectors
    (up to the cache's float16); a changed tower has another key, so the cache is not used."""
    from dashclip.models.embeddings import embed_catalog, load_embeddings
    from dashclip.data.catalog import Catalog
    from dashclip.models.feature_cache import build_or_open

    monkeypatch.setenv("DASHCLIP_RUNS", str(tmp_path / "runs"))      # the default cache home, empty
    catalog_dir = make_catalog(tmp_path / "cat", extra_photos=1)
    (catalog_dir / "images" / "101.png").write_bytes(b"not an image")
    catalog = Catalog.open(catalog_dir)
    model = create_model("tiny", pretrained=False).eval()
    build_or_open(model, catalog.image_index().paths, tmp_path / "cache", show_progress=False)

    plain = load_embeddings(embed_catalog(model, catalog, tmp_path / "plain", batch_size=8, progress=False))
    fast = load_embeddings(embed_catalog(model, catalog, tmp_path / "fast", batch_size=8, progress=False,
                                         image_cache_root=tmp_path / "cache"))
    assert fast.meta["image_features"].startswith("cache ") and plain.meta["image_features"] == "image tower"
    assert list(fast.has_image) == list(plain.has_image) and not fast.has_image[1]
    for kind in ("fused", "image"):
        assert np.allclose(fast.vectors[kind], plain.vectors[kind], atol=3e-3)
    with torch.no_grad():
        next(model.image_tower.parameters()).add_(1.0)        # another tower: the cache must not be read
    other = load_embeddings(embed_catalog(model, catalog, tmp_path / "other", batch_size=8, progress=False,
                                          image_cache_root=tmp_path / "cache"))
    assert other.meta["image_features"] == "image tower"
    # With no root given, the default home of caches (where `dashclip pretrain` puts them) is read.
    from dashclip.settings import image_cache_dir

    build_or_open(model, catalog.image_index().paths, image_cache_dir(), show_progress=False)
    default = load_embeddings(embed_catalog(model, catalog, tmp_path / "default", batch_size=8, progress=False))
    assert default.meta["image_features"].startswith("cache ")


TINY_MPNET = {"model_type": "mpnet", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 66}


def tiny_mpnet_config(**changes) -> dict:
    cfg = get_config("tiny").to_dict()
    cfg.update({"name": "tiny-mpnet", "text_tower": {"type": "mpnet", "hf_config": dict(TINY_MPNET)},
                "fusion_input": "shared", "fusion_weights": "copy", **changes})
    return cfg


def test_an_mpnet_text_tower_trains_round_trips_and_seeds_its_fusion_layer(tmp_path):
    """The mpnet config's architecture on a tiny MPNet (no weights): every part trains, a save/load
    round trip gives the same vectors, and the fusion layer is a copy of the MPNet layer it replaces."""
    from transformers import AutoTokenizer

    from dashclip.models.sentence import minilm_path

    torch.manual_seed(0)
    model = create_model(tiny_mpnet_config(), pretrained=False, tokenizer=AutoTokenizer.from_pretrained(minilm_path()))
    assert type(model.text_tower.bert).__name__ == "MPNetModel"
    source = model.text_tower.bert.encoder.layer[-1]
    copy = model.fusion.layers[0]
    q = source.attention.attn.q
    assert torch.equal(copy.self_attn.in_proj_weight[:32], q.weight)
    assert torch.equal(copy.ffn_out.weight, source.output.dense.weight)
    assert copy.norm1.eps == source.attention.LayerNorm.eps
    forward_backward(model)
    loaded = assert_round_trip(model, tmp_path / "m")
    assert type(loaded.text_tower.bert).__name__ == "MPNetModel"


def test_an_mpnet_text_tower_cannot_share_its_layers_with_the_fusion():
    from transformers import AutoTokenizer

    from dashclip.models.sentence import minilm_path

    with pytest.raises(ValueError, match="needs a BERT text tower.*fusion_weights 'copy'"):
        create_model(tiny_mpnet_config(fusion_weights="text_tower"), pretrained=False,
                     tokenizer=AutoTokenizer.from_pretrained(minilm_path()))


def test_split_zip_weights_unpack_once_whole_and_never_outside(tmp_path):
    """all-mpnet-base-v2 ships as one zip split over five packages: the parts are joined and its folder
    unpacked into the cache; members that climb out of it are not written; a missing part is named."""
    import io
    import zipfile

    from dashclip.models.sentence import split_zip_parts, unpack_split_zip

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("w/config.json", '{"model_type": "mpnet"}')
        zf.writestr("w/1_Pooling/config.json", "{}")
        zf.writestr("w/desktop.ini", "x")
        zf.writestr("w/../evil.txt", "x")
        zf.writestr("other/evil.txt", "x")
    data = buf.getvalue()
    parts = []
    for i, chunk in enumerate((data[:50], data[50:200], data[200:]), start=1):
        parts.append(tmp_path / f"w.zip.{i:03d}")
        parts[-1].write_bytes(chunk)
    dest = tmp_path / "cache" / "w"
    assert unpack_split_zip(parts, dest, "w") == dest
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == \
        ["1_Pooling/config.json", "config.json"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "evil.txt").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".lock", "w"]   # no joined zip left
    parts[0].unlink()                                                  # unpacked once: parts no longer read
    assert unpack_split_zip(parts, dest, "w") == dest
    with pytest.raises(ImportError, match="no-such-weights-part-001, no-such-weights-part-002"):
        split_zip_parts(["no-such-weights-part-001", "no-such-weights-part-002"], "w.zip")
