"""Ray Data for the two batch jobs (`embed-catalog --ray`, `labels grade --ray`) on a local Ray with 2 CPUs:
the same shard files as the single-process path (vectors within 1e-6, identical grades), a rerun skips
finished shards whichever path wrote them, and without Ray installed --ray is a clear error."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dashclip.cli import app
from dashclip.models.factory import create_model
from test_labeling_support import write_catalog, write_tiny_bert
from toy_catalog import make_catalog

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_embed_catalog_on_ray_writes_the_single_process_chunks_and_resumes(local_ray, tmp_path):
    from dashclip.models.embeddings import RayEmbedding, embed_catalog, load_embeddings

    catalog = make_catalog(tmp_path / "cat", extra_photos=0)
    (catalog / "images" / "101.png").write_bytes(b"not an image")     # one unreadable image, flagged on Ray too
    model = create_model("tiny", pretrained=False)
    model_dir = model.save(tmp_path / "m")
    opts = dict(batch_size=8, chunk_size=16, progress=False, amp=None, image_cache_root=tmp_path / "cache")
    one = load_embeddings(embed_catalog(model, catalog, tmp_path / "one", **opts))
    out = embed_catalog(model, catalog, tmp_path / "ray", ray=RayEmbedding(str(model_dir), workers=2), **opts)
    two = load_embeddings(out)
    assert two.meta["ray"] == {"workers": 2, "address": "local"} and not (tmp_path / "ray.partial").exists()
    assert list(two.ids) == list(one.ids) and list(two.has_image) == list(one.has_image) and not two.has_image[1]
    for kind in ("fused", "image", "text"):
        assert np.abs(np.asarray(two.vectors[kind]) - np.asarray(one.vectors[kind])).max() <= 1e-6


def test_a_ray_rerun_skips_the_chunks_a_killed_run_finished(local_ray, tmp_path, monkeypatch):
    from dashclip.models import embeddings as emb_mod
    from dashclip.models.embeddings import RayEmbedding, embed_catalog, load_embeddings

    catalog = make_catalog(tmp_path / "cat", extra_photos=0)
    model = create_model("tiny", pretrained=False)
    model_dir = model.save(tmp_path / "m")
    opts = dict(batch_size=8, chunk_size=16, progress=False, amp=None, image_cache_root=tmp_path / "cache")
    real, calls = emb_mod.ChunkJob.embed_chunk, []

    def dies_on_second_chunk(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **kw)
    monkeypatch.setattr(emb_mod.ChunkJob, "embed_chunk", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed_catalog(model, catalog, tmp_path / "e", **opts)
    monkeypatch.setattr(emb_mod.ChunkJob, "embed_chunk", real)
    assert [p.name for p in (tmp_path / "e.partial").glob("chunk-*.npz")] == ["chunk-00000.npz"]

    from dashclip import parallel
    seen, orig = [], parallel.map_shards

    def spy(shards, *a, **kw):
        seen.extend(shards)
        return orig(shards, *a, **kw)
    monkeypatch.setattr(parallel, "map_shards", spy)
    e = load_embeddings(embed_catalog(model, catalog, tmp_path / "e", ray=RayEmbedding(str(model_dir)), **opts))
    assert seen == [1, 2] and len(e) == 48        # chunk 0 was kept; the actors computed the other two
    whole = load_embeddings(embed_catalog(model, catalog, tmp_path / "whole", **opts))
    assert np.abs(np.asarray(e.vectors["fused"]) - np.asarray(whole.vectors["fused"])).max() <= 1e-6


def test_labels_grade_on_ray_gives_the_single_process_shards(local_ray, tmp_path):
    from dashclip.data.catalog import Catalog
    from dashclip.labeling.grading import RayGrading, grade_pairs, shard_name
    from dashclip.labeling.labelers import LabelerSpec
    from dashclip.labeling.labelers.cross_encoder import CrossEncoderConfig, train_cross_encoder

    cat = Catalog.open(write_catalog(tmp_path / "cat"))
    base = write_tiny_bert(tmp_path / "base")
    ids = cat.products["id"].tolist()
    titles = cat.product_texts()
    rng = np.random.default_rng(0)
    labeler_dir = tmp_path / "labeler"
    train_cross_encoder(["shirt"] * 24, titles[:24], rng.integers(0, 3, 24).tolist(), labeler_dir, base=str(base),
                        config=CrossEncoderConfig(max_length=24, epochs=1, batch_size=8))
    pairs = pd.DataFrame({"qid": [f"q{i % 7}" for i in range(45)],
                          "query": [["red shirt", "blue jeans", "shoes", "a gift", "black", "polo", "warm"][i % 7]
                                    for i in range(45)],
                          "product_id": [ids[i % len(ids)] for i in range(45)]})
    spec = LabelerSpec("cross-encoder", {"path": labeler_dir, "batch_size": 8})
    single = grade_pairs(pairs, cat, spec.build(), tmp_path / "one", shard_size=10, batch_size=16)
    on_ray = grade_pairs(pairs, cat, spec.build(), tmp_path / "ray", shard_size=10, batch_size=16,
                         ray=RayGrading(spec, workers=2))
    assert single["complete"] and on_ray["complete"] and on_ray["shards"] == single["shards"] == 5
    assert on_ray["this_run"]["graded"] == single["this_run"]["graded"]
    for i in range(5):
        a = pd.read_parquet(tmp_path / "one" / shard_name(i))
        b = pd.read_parquet(tmp_path / "ray" / shard_name(i))
        pd.testing.assert_frame_equal(a.drop(columns="confidence"), b.drop(columns="confidence"))
        assert np.abs(a["confidence"].to_numpy() - b["confidence"].to_numpy()).max() <= 1e-5
    again = grade_pairs(pairs, cat, spec.build(), tmp_path / "ray", ray=RayGrading(spec, workers=2))
    assert again["this_run"]["shards"] == 0          # a rerun grades nothing


def test_the_cli_takes_ray_and_without_ray_installed_says_what_to_install(tmp_path, monkeypatch):
    catalog = make_catalog(tmp_path / "cat", extra_photos=0)
    model_dir = create_model("tiny", pretrained=False).save(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "ray", None)        # as if Ray were not installed
    res = CliRunner().invoke(app, ["embed-catalog", "--model", str(model_dir), "--catalog", str(catalog),
                                   "--out", str(tmp_path / "e"), "--no-progress", "--ray", "local"])
    assert res.exit_code != 0 and "pip install 'dashclip[ray]'" in " ".join(res.output.split())
