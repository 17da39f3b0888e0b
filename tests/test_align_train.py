"""Stage 2 training on a tiny fixture: the loss goes down, the query encoder is saved inside the
model dir, and an interrupted run resumed from its checkpoint ends exactly like an uninterrupted one."""
import numpy as np
import pandas as pd
import pytest
import torch

import dashclip
from dashclip.training.align import AlignConfig, AlignTask, align
from dashclip.training.loop import LoopConfig

WORDS = ["red", "blue", "black", "dress", "shirt", "jeans", "shoes", "bag", "watch", "men", "women",
         "party", "formal", "casual", "sports", "summer"]


def fixture(n_products=96, n_queries=24, seed=0):
    """Random unit product vectors and queries, each relevant to the 6 products nearest a random point:
    learnable, because a query's relevant products share a direction."""
    torch.manual_seed(seed)
    model = dashclip.create_model("tiny")
    dim = model.embed_dim
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_products, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = []
    for q in range(n_queries):
        text = " ".join(rng.choice(WORDS, 3, replace=False)) + f" {q}"
        centre = rng.normal(size=dim)
        order = np.argsort(-(vectors @ centre))
        rows += [(f"q{q}", text, int(p) + 1000, 2, 1.0) for p in order[:6]]
        rows += [(f"q{q}", text, int(p) + 1000, 1, 1.0) for p in order[6:8]]
        rows += [(f"q{q}", text, int(p) + 1000, 0, 0.9) for p in order[-4:]]
    grades = pd.DataFrame(rows, columns=["qid", "query", "product_id", "grade", "confidence"])
    return model, (np.arange(n_products) + 1000, vectors), grades


def loop_config(**kw):
    base = dict(epochs=3, batch_size=16, lr=3e-3, warmup_steps=0, log_every=1, progress=False,
                eval_every_epoch=False, seed=0, device="cpu")
    base.update(kw)
    return LoopConfig(**base)


def test_training_lowers_the_loss_and_saves_both_encoders(tmp_path):
    model, table, grades = fixture()
    before = model.encode_text(["red dress 3"])
    summary = align(None, grades, tmp_path, AlignConfig(hard_negatives=2),
                    loop_config(), model=model, product_table=table)
    from dashclip.io import read_jsonl
    losses = [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == summary["steps"] >= 9
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.8 * first, (first, last)
    assert summary["table"]["trainable_queries"] == 24

    loaded = dashclip.load(tmp_path / "model")
    q = loaded.encode_query(["red dress 3"])
    assert torch.allclose(q, model.encode_query(["red dress 3"]), atol=1e-5)
    # The query encoder moved; the text tower (the product side) did not.
    assert not torch.allclose(q, before, atol=1e-3)
    assert torch.allclose(loaded.encode_text(["red dress 3"]), before, atol=1e-5)


class Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = AlignConfig(hard_negatives=1)
    model, table, grades = fixture(seed=1)
    align(None, grades, tmp_path / "full", cfg, loop_config(epochs=2, batch_size=8, ckpt_every=3),
          model=model, product_table=table)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    # The same run, stopped by an error after 8 batches (checkpoints at steps 3 and 6) ...
    real_make_batch = AlignTask.make_batch
    calls = {"n": 0}

    def failing(self, indices):
        calls["n"] += 1
        if calls["n"] > 8:
            raise Interrupted
        return real_make_batch(self, indices)

    monkeypatch.setattr(AlignTask, "make_batch", failing)
    model2, _, _ = fixture(seed=1)
    with pytest.raises(Interrupted):
        align(None, grades, tmp_path / "cut", cfg, loop_config(epochs=2, batch_size=8, ckpt_every=3),
              model=model2, product_table=table)
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 6
    monkeypatch.setattr(AlignTask, "make_batch", real_make_batch)

    # ... then resumed from a fresh copy of the starting model.
    model3, _, _ = fixture(seed=1)
    summary = align(None, grades, tmp_path / "cut", cfg,
                    loop_config(epochs=2, batch_size=8, ckpt_every=3, resume=True),
                    model=model3, product_table=table)
    assert summary["steps"] > 6
    for k, v in model3.state_dict().items():
        assert torch.allclose(v, reference[k], atol=1e-6), k


def test_wise_interpolation_of_the_query_encoder():
    import torch

    from dashclip.models.factory import create_model
    from dashclip.training.align import AlignConfig, interpolate_query_encoder, query_encoder_state

    model = create_model("tiny", pretrained=False)
    model.add_query_encoder()
    start = query_encoder_state(model)
    trained = {k: v + 1.0 for k, v in start.items()}
    for part in ("query_tower", "query_proj"):
        getattr(model, part).load_state_dict({k[len(part) + 1:]: v for k, v in trained.items()
                                              if k.startswith(part + ".") and v.is_floating_point()}, strict=False)
    interpolate_query_encoder(model, start, 0.25)
    now = query_encoder_state(model)
    key = next(k for k, v in start.items() if v.is_floating_point() and v.numel() > 1)
    assert torch.allclose(now[key], start[key] + 0.25)
    text = dict(model.text_tower.state_dict())                 # the product side is never touched
    assert all(torch.equal(text[k[len("query_tower."):]], v) for k, v in start.items()
               if k.startswith("query_tower."))
    with pytest.raises(ValueError, match="wise_alpha"):
        AlignConfig(wise_alpha=1.5)


@pytest.mark.parametrize("fusion_weights", ["copy", "text_tower"])
def test_unfreeze_product_trains_every_fusion_weight(fusion_weights):
    """--unfreeze-product trains the whole image-grounded encoder: with fusion_weights "text_tower" its
    self-attention and feed-forward weights are registered under the text tower, and must be included."""
    from dashclip.models.factory import create_model

    model = create_model("tiny", pretrained=False, fusion_input="shared", fusion_weights=fusion_weights)
    model.add_query_encoder()
    frozen = {id(p) for m in model.stage2_trainable(False) for p in m.parameters()}
    trained = {id(p) for m in model.stage2_trainable(True) for p in m.parameters()}
    fusion_path = {id(p) for layer in model.fusion.layers for p in layer.parameters()}
    if fusion_weights == "text_tower":
        fusion_path |= {id(p) for layer in model.fusion.layers for p in layer.text_layer.parameters()}
        assert fusion_path & {id(p) for p in model.text_tower.parameters()}   # shared, really
    assert fusion_path <= trained and not fusion_path & frozen
    assert {id(p) for p in model.fused_proj.parameters()} <= trained


def test_align_cli_never_trains_on_the_excluded_queries(tmp_path, monkeypatch):
    """`dashclip align --exclude-queries FILE`: the queries in FILE (case and spacing aside) reach no
    training batch (not as positives, graded negatives or mined hard negatives); the others do. A
    line without a query is a user error naming the line."""
    import json

    from typer.testing import CliRunner

    from dashclip.cli import app
    from dashclip.data.catalog import Catalog
    from dashclip.models.embeddings import embed_catalog
    from dashclip.training.align_data import GradeTable
    from toy_catalog import COLORS, KINDS, make_catalog

    monkeypatch.setenv("DASHCLIP_RUNS", str(tmp_path / "runs"))
    cat_dir = make_catalog(tmp_path / "toy")
    torch.manual_seed(0)
    dashclip.create_model("tiny", pretrained=False).save(tmp_path / "model")
    embed_catalog(dashclip.load(tmp_path / "model"), Catalog.open(cat_dir), tmp_path / "emb", progress=False)
    # Toy ids: 100 + 6 * colour index + kind index. Query "<colour> <kind>" is relevant to its product.
    rows = []
    for c, colour in enumerate(list(COLORS)[:4]):
        for k, kind in enumerate(KINDS[:4]):
            pid, qid = 100 + 6 * c + k, f"q{c}{k}"
            rows += [(qid, f"{colour} {kind}", pid, 2, 1.0), (qid, f"{colour} {kind}", (pid + 7) % 48 + 100, 0, 1.0)]
    grades = pd.DataFrame(rows, columns=["qid", "query", "product_id", "grade", "confidence"])
    grades.assign(labeler="seed", labeler_version="1").to_parquet(tmp_path / "g.parquet")
    excluded = {"red shirt", "blue bag", "yellow watch"}
    (tmp_path / "ex.jsonl").write_text('{"qid": "h1", "query": "Red  Shirt"}\n{"qid": "h2", "query": "blue bag"}\n'
                                       '{"qid": "h3", "query": "yellow watch ", "style": "keyword"}\n')

    seen: set[str] = set()
    real_make_batch = GradeTable.make_batch

    def recording(self, *args, **kwargs):
        b = real_make_batch(self, *args, **kwargs)
        seen.update(self.queries[j] for j in b.query_index)
        return b
    monkeypatch.setattr(GradeTable, "make_batch", recording)

    def run(out, *extra):
        seen.clear()
        return CliRunner().invoke(app, ["align", "--model", str(tmp_path / "model"), "--grades",
                                        str(tmp_path / "g.parquet"), "--embeddings", str(tmp_path / "emb"),
                                        "--out", str(out), "--epochs", "2", "--batch-size", "8",
                                        "--pairs-per-query", "2", "--amp", "none", "--device", "cpu",
                                        "--no-progress", *extra])

    res = run(tmp_path / "all")
    assert res.exit_code == 0, res.output
    assert excluded <= seen                                  # without the file, they are trained on
    res = run(tmp_path / "held", "--exclude-queries", str(tmp_path / "ex.jsonl"))
    assert res.exit_code == 0, res.output
    assert seen and not seen & excluded, seen & excluded
    assert {"red bag", "blue shirt"} <= seen                 # the other queries still are
    summary = json.loads((tmp_path / "held" / "align.json").read_text())
    assert summary["grades"]["dropped_heldout_query"] == 6   # 3 queries x 2 graded products
    assert summary["table"]["trainable_queries"] == 16 - 3

    (tmp_path / "bad.jsonl").write_text('{"query": "red shirt"}\n{"qid": "h2"}\n')
    res = run(tmp_path / "bad", "--exclude-queries", str(tmp_path / "bad.jsonl"))
    assert res.exit_code == 2 and "bad.jsonl: line 2: no 'query' field" in " ".join(res.output.split())


def test_model_surgery_locks_what_each_stage_keeps():
    """The model owns its surgery: Stage 2 trains only the query encoder (less its locked lowest
    parts); Stage 1 on a CPU locks the image tower."""
    from dashclip.models.factory import create_model

    model = create_model("tiny", pretrained=False)
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    assert not model.image_tower.training
    model.lock_for_stage2(locked_query_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("query_tower.", "query_proj.")) for n in trainable)
    assert not any("embeddings" in n for n in trainable)          # the token embeddings are locked
    assert any(n.startswith("query_tower.") for n in trainable)   # its layers still train


def test_l2sp_holds_the_query_encoder_near_its_start(tmp_path):
    from dashclip.io import read_jsonl
    from dashclip.losses import L2SP
    from dashclip.training.align import query_encoder_state

    def moved(weight, out):
        model, table, grades = fixture()
        model.add_query_encoder()
        start = query_encoder_state(model)
        align(None, grades, out, AlignConfig(l2sp_weight=weight, wise_alpha=1.0, spelling=False),
              loop_config(), model=model, product_table=table)
        end = query_encoder_state(model)
        return sum(float(((end[k].float() - start[k].float()) ** 2).sum()) for k in start), out

    free, _ = moved(0.0, tmp_path / "free")
    held, out = moved(10.0, tmp_path / "held")
    assert held < 0.5 * free, (held, free)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert rows[0]["l2sp"] == pytest.approx(0.0, abs=1e-9) and rows[-1]["l2sp"] > 0
    # the penalty itself: zero at the start, weight * squared distance after a move, gradient pulls back
    p = torch.nn.Parameter(torch.ones(3))
    pen = L2SP({"p": p}, 2.0)
    assert float(pen()) == 0.0
    with torch.no_grad():
        p += 0.5
    value = pen()
    assert float(value) == pytest.approx(2.0 * 3 * 0.25)
    value.backward()
    assert torch.all(p.grad > 0)
    assert list(pen.state_dict()) == []                   # start values stay out of checkpoints
    with pytest.raises(ValueError, match=">= 0"):
        AlignConfig(l2sp_weight=-1.0)


def test_similarity_distillation_keeps_the_start_encoders_similarities(tmp_path):
    """With the term, the trained query encoder relates words and training queries to one another more like the
    encoder it started from than without it; the term is logged."""
    from dashclip.io import read_jsonl
    from dashclip.losses import SimilarityDistillation
    from dashclip.training.align import distillation_words

    probe = ["jacket", "coat", "sneakers", "trainers", "necklace", "earrings", "wallet", "purse", *WORDS]

    def similarities(model):
        with torch.no_grad():
            v = torch.nn.functional.normalize(model.encode_query(probe).float(), dim=-1)
        return v @ v.T

    def drift(weight, out):
        model, table, grades = fixture()
        model.add_query_encoder()
        start = similarities(model)
        align(None, grades, out, AlignConfig(distill_weight=weight, distill_words=32, wise_alpha=1.0,
                                             spelling=False, hard_negatives=0), loop_config(), model=model,
              product_table=table)
        return float((similarities(model) - start).abs().mean()), out

    free, _ = drift(0.0, tmp_path / "free")
    held, out = drift(20.0, tmp_path / "held")
    assert held < 0.7 * free, (held, free)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert all(r["distill"] > 0 for r in rows)            # dropout alone makes the student differ a little
    model, _, _ = fixture()
    words = distillation_words(model)
    assert words == sorted(words) and "jacket" in words and all(len(w) >= 3 and w.isalpha() for w in words)
    # the term itself: 0 for the same similarities (whatever the scale), > 0 and a gradient otherwise
    d = SimilarityDistillation(1.0)
    t = torch.randn(6, 4)
    assert float(d(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(6, 4, requires_grad=True)
    value = d(s, t)
    assert float(value) > 0
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=">= 0"):
        AlignConfig(distill_weight=-1.0)
