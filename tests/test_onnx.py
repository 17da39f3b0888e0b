"""The ONNX backend (`dashclip export onnx`, `--backend onnx`): parity with the torch model (per-query cosine,
the same top-10 up to ties, product embeddings), the model_id check, the saved speller index, the CLI and
its errors. On the tiny shop of test_search_fixtures and a tiny model with a Stage 2 query encoder and a
speller, exported once per module (fp32 and int8)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from dashclip.cli import app  # noqa: E402
from dashclip.models.onnx_model import OnnxModel, OnnxRuntimeMissing, export_onnx, is_ffn_out  # noqa: E402
from dashclip.models.runtime import load_model  # noqa: E402
from dashclip.serving.search import Searcher  # noqa: E402
from test_search_fixtures import build_shop_index, shared_shop  # noqa: E402

runner = CliRunner()

# A fixed query set: shop words, a misspelling the speller fixes, casing, long and one-word queries.
QUERIES = ["red dress", "black heels for women", "blue tshirt men", "green watch", "white summer dress",
           "snekers", "Black Winter Heels", "a long query about a red summer dress for women with pockets",
           "watch", "tshirt for men in blue or green", "gift card", "wintr dress"]


def _model_with_query_encoder(seed: int = 1, query_seed: int = 0):
    """The tiny model after a pretend Stage 2: its own query encoder (weights moved off the text tower's)
    and a speller, so the query graph is not the text graph and spelling is part of the path."""
    import torch

    from dashclip.models.factory import create_model
    from dashclip.models.speller import QuerySpeller

    torch.manual_seed(seed)
    model = create_model("tiny", pretrained=False)
    model.add_query_encoder()
    torch.manual_seed(query_seed)
    with torch.no_grad():
        for p in model.query_tower.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.query_speller = QuerySpeller.build(["Red Summer Dress for Women", "black sneakers", "winter heels"],
                                             lexicon=["red", "for", "women", "summer", "black", "dress"])
    return model.eval()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return shared_shop(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(shop, tmp_path_factory):
    """(torch model, its dir, its index, fp32 export, int8 export)."""
    root = tmp_path_factory.mktemp("onnx")
    model = _model_with_query_encoder()
    model.save(root / "model")
    index = build_shop_index(model, shop.catalog, root / "index", model_dir=str(root / "model"))
    fp32 = export_onnx(root / "model", root / "onnx-fp32")
    int8 = export_onnx(root / "model", root / "onnx-int8", int8=True)
    return model, root / "model", root / "index", fp32, int8


def _cosines(a, b) -> np.ndarray:
    return (np.asarray(a) * np.asarray(b)).sum(1)


def test_export_layout_and_model_id(exported):
    model, _, _, fp32, int8 = exported
    for path, precision in ((fp32, "fp32"), (int8, "int8")):
        manifest = json.loads((path / "onnx.json").read_text())
        assert manifest["model_id"] == model.model_id
        assert manifest["precision"] == precision
        assert {p.name for p in path.glob("*.onnx")} == {"query.onnx", "text.onnx", "image.onnx", "product.onnx",
                                                      "photo.onnx"}
        onnx_model = load_model(path)           # auto: an export runs on ONNX Runtime
        assert isinstance(onnx_model, OnnxModel) and onnx_model.model_id == model.model_id
    # int8: the text graphs' weight matmuls run on int8 weights, but the feed-forward outputs (a float weight read
    # through an Identity node counts as float: test_int8_quantizes_weights_shared_through_identity); the image
    # tower stays fp32
    import onnx

    def ops(path):
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    def float_weight_matmuls(path):
        graph = onnx.load(str(path)).graph
        weights = {i.name for i in graph.initializer}
        made = {o: n for n in graph.node for o in n.output}
        return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                and (n.input[1] in weights or getattr(made.get(n.input[1]), "op_type", None) == "Identity")]
    for graph in ("query", "text", "product"):
        assert "MatMulInteger" not in ops(fp32 / f"{graph}.onnx")
        int8_ops = ops(int8 / f"{graph}.onnx")
        assert int8_ops.count("MatMulInteger") + int8_ops.count("QAttention") >= 6, graph
        kept = float_weight_matmuls(int8 / f"{graph}.onnx")
        assert kept and all(is_ffn_out(n) for n in kept), (graph, kept)
    # the text graphs' BERT layers run as ONNX Runtime's fused kernels (the product graph's stay unfused)
    for graph in ("query", "text"):
        assert {"Attention", "SkipLayerNormalization"} <= set(ops(fp32 / f"{graph}.onnx")), graph
        assert "QAttention" in ops(int8 / f"{graph}.onnx"), graph
        assert manifest["fused_ops"][graph]["Attention"] >= 1
    assert (int8 / "image.onnx").read_bytes() == (fp32 / "image.onnx").read_bytes()


def test_tokenizer_matches_torch(exported):
    model, _, _, fp32, _ = exported
    ours, theirs = OnnxModel.open(fp32).tokenize(QUERIES), model.tokenize(QUERIES)
    assert np.array_equal(ours["input_ids"], theirs["input_ids"].numpy())
    assert np.array_equal(ours["attention_mask"], theirs["attention_mask"].numpy())


@pytest.mark.parametrize("precision,floor", [("fp32", 0.9999), ("int8", 0.99)])
def test_query_parity(exported, precision, floor):
    model, _, _, fp32, int8 = exported
    onnx_model = OnnxModel.open(fp32 if precision == "fp32" else int8)
    assert onnx_model.correct_queries(QUERIES) == model.correct_queries(QUERIES)
    assert "sneakers" in onnx_model.correct_queries(["snekers"])[0]      # the speller is on the path
    ours, theirs = onnx_model.encode_query(QUERIES), model.encode_query(QUERIES).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    cos = _cosines(ours, theirs)
    assert cos.min() >= floor, dict(zip(QUERIES, cos.round(5)))
    # the query graph is the Stage 2 encoder, not the text tower
    assert _cosines(model.encode_text(QUERIES).numpy(), theirs).min() < 0.999
    assert _cosines(onnx_model.encode_text(QUERIES), model.encode_text(QUERIES).numpy()).min() >= floor


def test_product_and_image_parity(exported, shop):
    from dashclip.data.images import load_image

    model, _, _, fp32, _ = exported
    onnx_model = OnnxModel.open(fp32)
    rows = shop.catalog.products.dropna(subset=["image"]).head(6)
    images = [load_image(shop.catalog.image_path(p)) for p in rows["image"]]
    texts = rows["title"].tolist()
    assert _cosines(onnx_model.encode_product(texts, images), model.encode_product(texts, images).numpy()).min() \
        >= 0.9999
    assert _cosines(onnx_model.encode_image(images), model.encode_image(images).numpy()).min() >= 0.9999


def _same_top10_up_to_ties(torch_searcher, onnx_searcher, tol: float) -> list[str]:
    """Problems: an ONNX top-10 product outside torch's top 10 (by more than `tol` below its 10th score), or
    two ONNX neighbours in an order torch's scores contradict by more than `tol`."""
    problems = []
    n = len(torch_searcher.index)
    for q in QUERIES:
        full = {h.id: h.score for h in torch_searcher.search(q, k=n)}
        torch_top = torch_searcher.search(q, k=10)
        ours = onnx_searcher.search(q, k=10)
        boundary = torch_top[-1].score
        for h in ours:
            if full[h.id] < boundary - tol:
                problems.append(f"{q!r}: {h.id} (torch score {full[h.id]:.5f}) is not in torch's top 10")
        for a, b in zip(ours, ours[1:]):
            if full[a.id] < full[b.id] - tol:
                problems.append(f"{q!r}: {a.id} before {b.id}, torch scores {full[a.id]:.5f} < {full[b.id]:.5f}")
    return problems


def test_same_top10_as_torch(exported, shop):
    model, model_dir, index_dir, fp32, int8 = exported
    torch_searcher = Searcher.open(model_dir, index_dir, model=model)
    assert _same_top10_up_to_ties(torch_searcher, Searcher.open(fp32, index_dir), tol=1e-4) == []
    # int8 moves scores by up to ~1e-2 (cosine >= 0.99): ties within that
    assert _same_top10_up_to_ties(torch_searcher, Searcher.open(int8, index_dir), tol=2e-2) == []
    # and the check can fail: a ranking by another model's queries is not torch's top 10
    other = Searcher.open(model_dir, index_dir, model=_model_with_query_encoder(query_seed=3))
    assert _same_top10_up_to_ties(torch_searcher, other, tol=1e-4)


def test_refuses_an_index_of_another_model(exported, shop):
    _, _, _, fp32, _ = exported
    with pytest.raises(ValueError, match="index was built with model"):
        Searcher.open(fp32, shop.index_dir)       # the shop's index is of another tiny model (seed 0)


def test_speller_index_is_saved_and_read_not_rebuilt(exported, monkeypatch, tmp_path):
    from dashclip.models import speller as speller_module

    model, _, _, fp32, _ = exported
    saved = json.loads((fp32 / "query_speller.json").read_text())
    assert saved["index"]["keys"] and saved["index"]["lists"]

    def no_rebuild(*a, **k):
        raise AssertionError("the speller index was rebuilt")

    monkeypatch.setattr(speller_module, "_deletes", no_rebuild, raising=True)
    loaded = speller_module.QuerySpeller.load(fp32 / "query_speller.json")
    assert loaded._index == model.query_speller._index
    monkeypatch.undo()
    # words edited after the save: the stale index is not used, a new one is built from the words
    saved["words"]["sneakers"] += 1
    saved["words"]["zebraprint"] = 3
    (tmp_path / "sp.json").write_text(json.dumps(saved))
    assert "zebraprint" in speller_module.QuerySpeller.load(tmp_path / "sp.json").suggest("zebrapint")
    saved["index"]["lists"] = saved["index"]["lists"][:-1]
    saved["words"] = json.loads((fp32 / "query_speller.json").read_text())["words"]
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="bad.json: field 'index' is malformed"):
        speller_module.QuerySpeller.load(tmp_path / "bad.json")


def test_embed_catalog_through_onnx(exported, shop, tmp_path):
    from dashclip.models.embeddings import embed_catalog, load_embeddings

    model, _, _, fp32, _ = exported
    embed_catalog(model, shop.catalog, tmp_path / "torch", progress=False, amp=None, image_cache_root=tmp_path)
    embed_catalog(OnnxModel.open(fp32), shop.catalog, tmp_path / "onnx", progress=False,
                  image_cache_root=tmp_path)
    a, b = load_embeddings(tmp_path / "torch"), load_embeddings(tmp_path / "onnx")
    assert b.meta["model_id"] == a.meta["model_id"] and b.meta["precision"] == "onnx-fp32"
    assert list(a.ids) == list(b.ids) and list(a.has_image) == list(b.has_image)
    for kind in ("fused", "image", "text"):
        assert _cosines(a.vectors[kind], b.vectors[kind]).min() >= 0.9999, kind


def test_cli_export_search_and_backend_errors(exported, shop, tmp_path):
    model, model_dir, index_dir, fp32, _ = exported
    out = tmp_path / "exp"
    result = runner.invoke(app, ["export", "onnx", "--model", str(model_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "onnx.json").read_text())["model_id"] == model.model_id
    # a non-empty folder of other files is refused, named, and left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["export", "onnx", "--model", str(model_dir), "--out", str(tmp_path / "mine")])
    assert result.exit_code != 0 and "mine" in result.output and "not a dashclip onnx-model" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    result = runner.invoke(app, ["export", "onnx", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "nope" in result.output and "config.json" in result.output
    assert not (tmp_path / "x").exists()

    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"qid": i, "query": q}) + "\n" for i, q in enumerate(QUERIES)))
    runs = {}
    for name, args in (("torch", ["--model", str(model_dir)]), ("onnx", ["--model", str(out)]),
                       ("onnx-flag", ["--model", str(out), "--backend", "onnx"])):
        result = runner.invoke(app, ["search", *args, "--index", str(index_dir), "--queries", str(queries),
                                     "--output", str(tmp_path / f"{name}.jsonl"), "-q"])
        assert result.exit_code == 0, result.output
        runs[name] = [json.loads(line)["product_ids"] for line in (tmp_path / f"{name}.jsonl").open()]
    assert runs["onnx"] == runs["onnx-flag"] and len(runs["onnx"]) == len(QUERIES)
    result = runner.invoke(app, ["search", "red dress", "--model", str(model_dir), "--index", str(index_dir),
                                 "--backend", "onnx"])
    assert result.exit_code != 0 and "not an ONNX export" in result.output and "dashclip export onnx" in result.output
    result = runner.invoke(app, ["search", "red dress", "--model", str(out), "--index", str(shop.index_dir)])
    assert result.exit_code != 0 and "index was built with model" in result.output


def test_service_on_onnx(exported):
    from fastapi.testclient import TestClient

    from dashclip.serving.service import create_app

    _, _, index_dir, _, int8 = exported
    with TestClient(create_app(Searcher.open(int8, index_dir), watch_seconds=0)) as client:
        r = client.get("/search", params={"q": "red dress", "k": 5})
        assert r.status_code == 200 and len(r.json()["results"]) == 5


def test_clear_errors_for_a_broken_export_or_no_onnxruntime(exported, tmp_path, monkeypatch):
    import sys

    _, _, _, fp32, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(fp32, broken)
    (broken / "product.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="product.onnx: missing from the ONNX export"):
        OnnxModel.open(broken)
    (broken / "onnx.json").write_text("{not json")
    with pytest.raises(ValueError, match="onnx.json: not valid JSON"):
        OnnxModel.open(broken)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(OnnxRuntimeMissing, match=r"pip install 'dashclip\[onnx\]'"):
        OnnxModel.open(fp32)


def test_an_mpnet_text_tower_exports_with_query_parity(tmp_path):
    """The `mpnet` config's architecture (tiny, random) goes through the same export: its query and
    product graphs give the torch vectors."""
    import torch
    from transformers import AutoTokenizer

    from dashclip.models.factory import create_model
    from dashclip.models.sentence import minilm_path
    from test_models import IMAGES, TEXTS, tiny_mpnet_config

    torch.manual_seed(0)
    model = create_model(tiny_mpnet_config(), pretrained=False, tokenizer=AutoTokenizer.from_pretrained(minilm_path()))
    model.add_query_encoder()
    model.eval().save(tmp_path / "model")
    onnx_model = OnnxModel.open(export_onnx(tmp_path / "model", tmp_path / "onnx"))
    assert _cosines(onnx_model.encode_query(QUERIES), model.encode_query(QUERIES).numpy()).min() >= 0.9999
    assert _cosines(onnx_model.encode_product(TEXTS, IMAGES),
                    model.encode_product(TEXTS, IMAGES).numpy()).min() >= 0.9999


def test_int8_quantizes_weights_shared_through_identity(tmp_path):
    """A fusion layer that is a text layer reads that layer's weights through an Identity node in the exported
    graph; `_quantize` points it at the weights, so both matmuls run in int8 (7-bit weights), and the output stays
    close."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dashclip.models.onnx_model import _quantize

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32) / 4
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="/text/dense/MatMul"),
         helper.make_node("Identity", ["w"], ["w_shared"], name="/fusion/Identity"),
         helper.make_node("MatMul", ["h", "w_shared"], ["y"], name="/fusion/dense/MatMul")],
        "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], [numpy_helper.from_array(w, "w")])
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    _quantize(src, dst)
    quantized = onnx.load(str(dst)).graph
    ops = [n.op_type for n in quantized.node]
    assert "MatMul" not in ops and "Identity" not in ops
    assert ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") == 2, ops
    # 7-bit weights (`_quantize`: no saturation on CPUs without VNNI)
    weights = [numpy_helper.to_array(i) for i in quantized.initializer if i.data_type == TensorProto.INT8]
    assert weights and 32 < max(int(np.abs(q.astype(np.int16)).max()) for q in weights) <= 64
    import onnxruntime as ort

    x = rng.standard_normal((8, 16)).astype(np.float32)
    y = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cos = (y * (x @ w @ w)).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(x @ w @ w, axis=1)
    assert cos.min() > 0.99
