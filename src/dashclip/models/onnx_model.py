"""Fast CPU inference: a model's encoders exported to ONNX and run by ONNX Runtime (`dashclip export onnx`).

    export_onnx("runs/demo/model", "runs/demo/model-onnx-int8", int8=True)
    model = OnnxModel.open("runs/demo/model-onnx-int8")       # or models.runtime.load_model(dir): auto
    q = model.encode_query(["black running shoes"])          # float32 numpy [1, D], L2-normalised

An exported dir holds everything search and batch embedding need, with no torch model:
    onnx.json            {"format": "dashclip-onnx", "model_id", "precision", "graphs", "tokenizer", ...}
    dashclip-output.json the output-dir marker (kind "onnx-model")
    config.json          the source model's config (ModelConfig), for preprocessing and dims
    query.onnx           tokens -> query embedding (Stage 2 query encoder, or the text tower before it)
    text.onnx            tokens -> text embedding (text tower + projection)
    image.onnx           pixels -> (patches, pooled): the image tower
    product.onnx         tokens + patches + pooled -> (fused, image, text) embeddings: the product side
    photo.onnx           pixels at the photo size -> a photo query's embedding (the image tower and the
                         photo head, or the image projection for a model without one); older exports'
                         photo graph reads the image graph's pooled output, and those made before it
                         answer photos with `image`
    tokenizer/           the model's tokenizer (tokenizer.json is read by the `tokenizers` library)
    query_speller.json   the query speller with its symmetric-delete index (read, not rebuilt)

Every graph ends in the L2 normalisation, so its outputs are the model's embeddings. The text graphs' BERT
layers are rewritten into ONNX Runtime's fused CPU kernels (`_fuse_bert`). `int8=True` quantizes
the weights of the text graphs' MatMuls/Gemms to 7-bit int8 (ONNX Runtime dynamic quantization: activations
are quantized per batch at run time; `_quantize` says why 7 bits and which layers stay float32); the image
tower (convolutions, for which dynamic quantization does not pay on CPU) stays float32. The export records
the source's `model_id` (the product embedding space), so an exported model opens only the indexes and
embeddings of its model (`index.open_index(dir, model_id=...)`, as the torch model does).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..clihelp import UserError
from ..io import atomic_dir, mark_output_dir, prepare_output_dir, read_json, write_json
from .config import ModelConfig
from .preprocess import preprocess_images
from .speller import SPELLER_FILE, QuerySpeller, tokenizer_words

FORMAT = "dashclip-onnx"
FORMAT_VERSION = 1
MANIFEST = "onnx.json"
KIND = "onnx-model"
OPSET = 17
GRAPHS = ("query", "text", "image", "product", "photo")
INT8_GRAPHS = ("query", "text", "product")      # the image tower stays float32 (see the module doc)


class OnnxRuntimeMissing(UserError, ImportError):
    """onnxruntime is not installed (a UserError: the CLI prints it without a traceback)."""


def require_onnxruntime():
    """The onnxruntime module, or a clear error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissing("the ONNX backend needs onnxruntime: pip install 'dashclip[onnx]' "
                                 "(or pip install onnxruntime onnx)") from None
    return onnxruntime


def is_onnx_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------
# Export


def _graph_modules(model):
    """The torch modules each graph is traced from: the model's own building blocks, normalised."""
    import torch.nn as nn

    class Query(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m.project_query(self.m.query_features(input_ids, attention_mask))

    class Text(Query):
        def forward(self, input_ids, attention_mask):
            return self.m.project_text(self.m.text_features(input_ids, attention_mask)[1])

    class Image(Query):
        def forward(self, pixels):
            return self.m.image_features(pixels)

    class Product(Query):
        def forward(self, input_ids, attention_mask, patches, pooled):
            tokens, text_pooled = self.m.text_features(input_ids, attention_mask)
            return (self.m.project_fused(self.m.fuse(tokens, attention_mask, patches)),
                    self.m.project_image(pooled), self.m.project_text(text_pooled))

    class Photo(Query):
        # from pixels: the photo head may read photos at another size than the catalog's (photo_size)
        def forward(self, pixels):
            return self.m.embed_photo_features(self.m.photo_features(pixels))

    return {"query": Query(), "text": Text(), "image": Image(), "product": Product(), "photo": Photo()}


_TOKENS = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
_SPECS = {   # graph: (input names, output names, dynamic axes)
    "query": (["input_ids", "attention_mask"], ["embedding"], {**_TOKENS, "embedding": {0: "batch"}}),
    "text": (["input_ids", "attention_mask"], ["embedding"], {**_TOKENS, "embedding": {0: "batch"}}),
    "image": (["pixels"], ["patches", "pooled"], {"pixels": {0: "batch"}, "patches": {0: "batch"},
                                                  "pooled": {0: "batch"}}),
    "product": (["input_ids", "attention_mask", "patches", "pooled"], ["fused", "image", "text"],
                {**_TOKENS, "patches": {0: "batch"}, "pooled": {0: "batch"}, "fused": {0: "batch"},
                 "image": {0: "batch"}, "text": {0: "batch"}}),
    "photo": (["pixels"], ["embedding"], {"pixels": {0: "batch"}, "embedding": {0: "batch"}}),
}


def _traceable_attention(model) -> None:
    """Give every nn.MultiheadAttention of `model` (fusion layers, cross-attention) a forward that traces to
    shape-generic ONNX: torch's own bakes the traced batch and length into its reshapes. The same math
    (in-projection, scaled dot-product attention with the key padding mask, out-projection); call it on a
    model loaded for the export only."""
    import torch.nn as nn
    import torch.nn.functional as F

    def make_forward(attn: nn.MultiheadAttention):
        heads, width = attn.num_heads, attn.embed_dim

        def forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None, **_):
            if attn._qkv_same_embed_dim:
                wq, wk, wv = attn.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
            bq, bk, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
            b = query.shape[0]

            def split(x):
                return x.reshape(b, -1, heads, width // heads).transpose(1, 2)

            mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            o = F.scaled_dot_product_attention(split(F.linear(query, wq, bq)), split(F.linear(key, wk, bk)),
                                               split(F.linear(value, wv, bv)), attn_mask=mask)
            return attn.out_proj(o.transpose(1, 2).reshape(b, -1, width)), None
        return forward

    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            if not module.batch_first or module.bias_k is not None or module.add_zero_attn:
                raise ValueError("ONNX export: an attention layer with batch_first=False, bias_k or add_zero_attn")
            module.forward = make_forward(module)


def _bert_towers(model) -> dict:
    """The Hugging Face BERT encoders of the text graphs, by graph: ONNX Runtime's transformer optimizer knows
    BERT's layer pattern (another architecture, e.g. MPNet, is exported unfused). Not the product graph: with
    the fusion encoder's layers after BERT's, the optimizer leaves a graph that is not a DAG."""
    towers = {"text": getattr(model.text_tower, "bert", None),
              "query": getattr(getattr(model, "query_tower", None) or model.text_tower, "bert", None)}
    return {g: b for g, b in towers.items()
            if b is not None and getattr(getattr(b, "config", None), "model_type", None) == "bert"}


def _fuse_bert(path: Path, bert) -> dict:
    """In place: ONNX Runtime's transformer optimizer rewrites the BERT layers of the graph at `path` into its
    fused CPU kernels (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu). The same math in
    fewer, faster ops: the demo's query graph ran 1.66 -> 1.48 ms in fp32 and 1.32 -> 1.10 ms in int8 (one query
    at a time, 2 cores; issue 21). Returns the fused op counts."""
    import logging

    from onnxruntime.transformers import optimizer

    level = logging.getLogger().level
    logging.getLogger().setLevel(max(level, logging.ERROR))       # the optimizer's info lines
    try:
        opt = optimizer.optimize_model(str(path), model_type="bert", num_heads=bert.config.num_attention_heads,
                                       hidden_size=bert.config.hidden_size, opt_level=0, use_gpu=False)
    finally:
        logging.getLogger().setLevel(level)
    opt.save_model_to_file(str(path))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def _example_inputs(model):
    """Inputs to trace with: a padded batch (so the attention mask is traced as data, not assumed all ones)."""
    import torch

    tok = model.tokenize(["red floral summer dress for women with pockets", "shoes"])
    ids, mask = tok["input_ids"], tok["attention_mask"]
    size = model.config.image_size
    pixels = torch.zeros((2, 3, size, size))
    with torch.no_grad():
        patches, pooled = model.image_features(pixels)
    photo = torch.zeros((2, 3, model.photo_size, model.photo_size))
    return {"query": (ids, mask), "text": (ids, mask), "image": (pixels,),
            "product": (ids, mask, patches, pooled), "photo": (photo,)}


def export_onnx(model_dir: str | Path, out: str | Path, int8: bool = False, overwrite: bool = False,
                opset: int = OPSET) -> Path:
    """Export the model dir `model_dir` (a torch model: `dashclip pretrain` / `align` output) to `out`
    (see the module doc), atomically; `out` follows `io.prepare_output_dir` (new, empty or an export;
    another dir only with `overwrite`; never the model dir or a dir holding it). Returns `out`."""
    import warnings

    import torch

    from .factory import load
    from .feature_cache import module_fingerprint

    require_onnxruntime()
    model_dir = Path(model_dir)
    out = prepare_output_dir(out, KIND, [model_dir], overwrite, is_kind=is_onnx_dir, check_only=True)
    if is_onnx_dir(model_dir):
        raise ValueError(f"{model_dir}: is already an ONNX export; give the torch model dir it came from")
    model = load(model_dir).eval()
    if model.config.kind != "dashclip":
        raise ValueError(f"{model_dir}: ONNX export supports kind 'dashclip' models, not {model.config.kind!r}")
    _traceable_attention(model)
    berts = _bert_towers(model)
    for bert in berts.values():
        # BERT's eager attention traces to the MatMul/Softmax pattern the fusion recognises; its default (SDPA)
        # does not. The same math: a model loaded for the export only. (A transformers without the switch
        # exports as before, with the other fusions only.)
        if hasattr(bert, "set_attn_implementation"):
            bert.set_attn_implementation("eager")
    modules, examples = _graph_modules(model), _example_inputs(model)
    fused = {}
    t0 = time.time()
    with atomic_dir(out) as tmp:
        raw = tmp / ".fp32"
        raw.mkdir()
        for name in GRAPHS:
            inputs, outputs, axes = _SPECS[name]
            # not under no_grad: there nn.MultiheadAttention takes its fused fast path, which ONNX cannot express
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # tracer warnings about Python control flow on shapes
                torch.onnx.export(modules[name], examples[name], str(raw / f"{name}.onnx"), dynamo=False,
                                  input_names=inputs, output_names=outputs, dynamic_axes=axes,
                                  opset_version=opset, do_constant_folding=True)
            if name in berts:
                fused[name] = _fuse_bert(raw / f"{name}.onnx", berts[name])
            target = tmp / f"{name}.onnx"
            if int8 and name in INT8_GRAPHS:
                _quantize(raw / f"{name}.onnx", target)
            else:
                shutil.move(str(raw / f"{name}.onnx"), target)
        shutil.rmtree(raw)
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if model.query_speller is not None:
            model.query_speller.save(tmp / SPELLER_FILE, with_index=True)
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, default=list) + "\n")
        tok = model.tokenizer
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_id": model.model_id,
            "precision": "int8" if int8 else "fp32",
            "graphs": {g: {"file": f"{g}.onnx", "precision": "int8" if int8 and g in INT8_GRAPHS else "fp32"}
                       for g in GRAPHS},
            "has_query_encoder": model.has_query_encoder, "has_photo_encoder": model.has_photo_encoder,
            "photo_image_size": model.photo_size,
            "tokenizer": {"pad_id": int(tok.pad_token_id), "pad_token": str(tok.pad_token),
                          "max_length": int(model.config.max_length)},
            "image_tower_fingerprint": module_fingerprint(model.image_tower),
            "fused_ops": fused, "source_model_dir": str(model_dir), "opset": opset, "torch": torch.__version__,
            "onnxruntime": require_onnxruntime().__version__, "seconds": round(time.time() - t0, 1),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        (tmp / "README.md").write_text(
            f"# dashclip model {model.model_id}, exported to ONNX ({'int8' if int8 else 'fp32'})\n\n"
            f"From `{model_dir}`. Search with it: `dashclip serve --model <this dir> --index ...` "
            "(the ONNX backend is read from this dir; needs `pip install 'dashclip[onnx]'`).\n")
        mark_output_dir(tmp, KIND)
    return out


def is_ffn_out(node: str) -> bool:
    """Whether an exported MatMul is a transformer layer's feed-forward output (BERT's `output.dense`, a copied
    fusion layer's `ffn_out`): the layers int8 leaves in float32 (`_quantize`)."""
    return ("output/dense" in node and "attention" not in node) or "ffn_out" in node


def _read_shared_weights_directly(graph) -> None:
    """In place: every node that reads a weight through an Identity node (how the exporter writes a weight two
    modules share) reads the weight itself, and those Identity nodes go (not one that is a graph output)."""
    weights = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs}
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        node.input[:] = [alias.get(x, x) for x in node.input]
    del graph.node[:]
    graph.node.extend(kept)


def _quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of the weights of the MatMuls and Gemms with a constant weight (per channel;
    activations are quantized per batch at run time), except each transformer layer's feed-forward output
    (`output.dense`, `ffn_out`): its input, after the GELU, has the outlier activations that per-batch int8
    rounds worst.

    - 7-bit weights (`reduce_range`): on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime multiplies uint8
      activations by int8 weights with an instruction whose pairwise int16 sums saturate; 7-bit weights cannot.
      Against the demo model in torch (2026-12-07, AVX2), worst query cosine 0.9943 -> 0.9951 (120 fashion dev
      queries), 0.9878 -> 0.9935 (480 WANDS), 0.9863 -> 0.9892 (2,327 Home Depot), and the worst product
      embedding 0.9688 -> 0.9905 (512 fashion products). Quantizing the feed-forward outputs too was faster
      (query 3.87 against 4.22 ms) but fell to 0.9778 on Home Depot's queries.
    - Shared weights: a fusion layer that is a text layer (`SharedFusionLayer`) reads the text layer's weights
      through Identity nodes, which the quantizer does not follow; they are pointed at the weights first, so the
      fusion layers run in int8 too (with the 7-bit weights, the demo's product graph 3.90 -> 3.56 s on 512
      products, fp32 4.93 s)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    graph = model.graph
    _read_shared_weights_directly(graph)
    keep_fp32 = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and is_ffn_out(n.name)]
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "consider pre-processing"
    # Attention: the fused attention's QKV projection (QAttention); DefaultTensorType: the fused ops' outputs
    # have no inferred type, and they are float
    quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul", "Gemm", "Attention"], nodes_to_exclude=keep_fp32,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


# ---------------------------------------------------------------------------------------------
# Inference


class OnnxModel:
    """An exported model on ONNX Runtime, with the inference API of `DashCLIP` (`encode_query`, `encode_text`,
    `encode_image`, `encode_photo`, `encode_product`, `correct_queries`, `model_id`, `embed_dim`, `config`). The encoders
    return float32 numpy arrays (`models.model.to_numpy` takes either). Thread-safe."""

    training = False

    def __init__(self, path: Path, manifest: dict, config: ModelConfig, sessions: dict, tokenizer,
                 speller: QuerySpeller | None):
        self.path, self.manifest, self.config = path, manifest, config
        self._sessions, self._tokenizer, self.query_speller = sessions, tokenizer, speller
        self.model_id = str(manifest["model_id"])
        self.precision = f"onnx-{manifest.get('precision', 'fp32')}"
        self.has_query_encoder = bool(manifest.get("has_query_encoder"))
        self.has_photo_encoder = bool(manifest.get("has_photo_encoder"))
        self.photo_size = int(manifest.get("photo_image_size") or config.image_size)
        self.image_tower_fingerprint = manifest.get("image_tower_fingerprint")
        import torch

        self.device = torch.device("cpu")       # what the embedding code asks (ONNX Runtime runs on the CPU)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None) -> "OnnxModel":
        """Open an exported dir. `threads`: ONNX Runtime intra-op threads (default: $DASHCLIP_ONNX_THREADS,
        else onnxruntime's choice, one per core)."""
        ort = require_onnxruntime()
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{path}: not an ONNX export (no {MANIFEST}); make one with "
                                    f"`dashclip export onnx --model DIR --out {path}`")
        manifest = read_json(manifest_file)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_file}: not a dashclip ONNX export (format "
                             f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
        for key in ("model_id", "graphs", "tokenizer"):
            if key not in manifest:
                raise ValueError(f"{manifest_file}: missing field {key!r}")
        try:
            config = ModelConfig.from_dict(read_json(path / "config.json"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path / 'config.json'}: missing from the ONNX export") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads if threads is not None else int(os.environ.get("DASHCLIP_ONNX_THREADS", "0") or 0)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no busy-waiting between runs: a spinning pool takes the cores that FAISS, the tokenizer and the HTTP
        # server need next (search is encode, then index search, on the same few cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {}
        for name, spec in manifest["graphs"].items():
            f = path / spec["file"]
            if not f.is_file():
                raise FileNotFoundError(f"{f}: missing from the ONNX export (graph {name!r} in {manifest_file})")
            sessions[name] = _LazySession(f, options, ort)
        tokenizer = _Tokenizer(path / "tokenizer", manifest["tokenizer"], manifest_file)
        speller = None
        if (path / SPELLER_FILE).exists():
            speller = QuerySpeller.load(path / SPELLER_FILE, known=tokenizer.words())
        model = cls(path, manifest, config, sessions, tokenizer, speller)
        sessions["query"].get()      # the one graph a service needs, loaded now
        return model

    # ---- what DashCLIP also has
    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self

    def tokenize(self, texts: Sequence[str]) -> dict:
        return self._tokenizer(texts)

    def preprocess(self, images, size: int | None = None):
        return preprocess_images(images, self.config, size)

    def correct_queries(self, texts: Sequence[str]) -> list[str]:
        if self.query_speller is None:
            return list(texts)
        return [self.query_speller.correct(t) for t in texts]

    def _run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        return self._sessions[graph].get().run(None, feeds)

    def _text_graph(self, graph: str, texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(self._run(graph, self.tokenize(texts[i:i + batch_size]))[0])
        return self._stack(out).astype(np.float32, copy=False)

    def encode_query(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Misspellings corrected, then the query graph: float32 [N, D], L2-normalised."""
        return self._text_graph("query", self.correct_queries(texts), batch_size)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return self._text_graph("text", list(texts), batch_size)

    def image_features(self, pixels) -> tuple[np.ndarray, np.ndarray]:
        pixels = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels, np.float32)
        patches, pooled = self._run("image", {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return patches, pooled

    def _product(self, texts: list[str], patches: np.ndarray, pooled: np.ndarray) -> dict:
        feeds = {**self.tokenize(texts), "patches": np.ascontiguousarray(patches, dtype=np.float32),
                 "pooled": np.ascontiguousarray(pooled, dtype=np.float32)}
        return dict(zip(("fused", "image", "text"), self._run("product", feeds)))

    def _pixel_batches(self, images, batch_size: int, size: int | None = None):
        """(start, float32 pixels) over `images` (PIL images, preprocessed at `size` or the config's, or
        pixels as given), a batch at a time."""
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            pixels = chunk if hasattr(chunk, "shape") else self.preprocess(chunk, size)
            pixels = pixels.numpy() if hasattr(pixels, "numpy") else pixels
            yield i, np.ascontiguousarray(pixels, dtype=np.float32)

    def _image_batches(self, images, batch_size: int):
        """(start, patches, pooled) of the image graph over `images` (PIL images or pixels), a batch at a time."""
        for i, pixels in self._pixel_batches(images, batch_size):
            yield (i, *self.image_features(pixels))

    def _stack(self, parts: list) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, self.embed_dim), np.float32)

    def encode_image(self, images, batch_size: int = 64) -> np.ndarray:
        # the image embedding is the product graph's `image` output; its text inputs do not change it
        return self._stack([self._product([""] * len(pooled), patches, pooled)["image"]
                            for _, patches, pooled in self._image_batches(images, batch_size)])

    def encode_photo(self, images, batch_size: int = 64) -> np.ndarray:
        """A photo query: the photo graph on pixels at `photo_size` (`DashCLIP.encode_photo`); an older export's
        photo graph reads the image graph's pooled output, and one made before the photo graph answers with the
        image embedding, as its source model did."""
        if "photo" not in self._sessions:
            return self.encode_image(images, batch_size)
        if "pooled" in self._sessions["photo"].input_names():     # an older export: pooled -> embedding
            return self._stack([self._run("photo", {"pooled": np.ascontiguousarray(pooled, dtype=np.float32)})[0]
                                for _, _, pooled in self._image_batches(images, batch_size)])
        return self._stack([self._run("photo", {"pixels": pixels})[0]
                            for _, pixels in self._pixel_batches(images, batch_size, self.photo_size)])

    def encode_product(self, texts: Sequence[str], images, batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        if len(texts) != len(images):
            raise ValueError(f"encode_product: {len(texts)} texts but {len(images)} images")
        return self._stack([self._product(texts[i:i + batch_size], patches, pooled)["fused"]
                            for i, patches, pooled in self._image_batches(images, batch_size)])

    def embed_rows(self, texts: list[str], rows: np.ndarray, inputs, kinds) -> tuple[dict, list[bool]]:
        """`models.embeddings.embed_rows` for this backend: the same inputs (`image_inputs`), the same outputs."""
        batch_texts = [texts[r] for r in rows]
        if inputs is None:          # text-only catalog: the product embedding is the text embedding
            text = self._text_graph("text", batch_texts, len(batch_texts) or 1)
            return {k: text for k in kinds}, [False] * len(rows)
        patches, pooled, todo, pixels, ok = inputs
        if pixels is not None:
            p, q = self.image_features(pixels)
            if patches is None:
                patches, pooled = p, q
            else:
                patches, pooled = np.array(patches, dtype=np.float32), np.array(pooled, dtype=np.float32)
                patches[todo], pooled[todo] = p, q
        else:
            patches, pooled = np.asarray(patches, np.float32), np.asarray(pooled, np.float32)
        out = self._product(batch_texts, patches, pooled)
        return {k: _normalise(out[k]) for k in kinds}, ok


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _LazySession:
    """An InferenceSession made on first use (a service that only searches never loads the image tower)."""

    def __init__(self, path: Path, options, ort):
        self.path, self.options, self.ort = path, options, ort
        self._session = None
        self._lock = threading.Lock()

    def get(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    try:
                        self._session = self.ort.InferenceSession(str(self.path), self.options,
                                                                  providers=["CPUExecutionProvider"])
                    except Exception as e:   # onnxruntime raises its own Fail/InvalidGraph types
                        raise ValueError(f"{self.path}: ONNX Runtime could not load it ({e})") from None
        return self._session

    def input_names(self) -> list[str]:
        return [i.name for i in self.get().get_inputs()]


class _Tokenizer:
    """The model's tokenizer through the `tokenizers` library (no transformers import on the hot path):
    padded to the batch's longest text and truncated to max_length, as `DashCLIP.tokenize` does."""

    def __init__(self, path: Path, spec: dict, manifest_file: Path):
        from tokenizers import Tokenizer

        f = path / "tokenizer.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing from the ONNX export (the fast tokenizer file)")
        try:
            self.tok = Tokenizer.from_file(str(f))
            pad_id, pad_token, max_length = int(spec["pad_id"]), str(spec["pad_token"]), int(spec["max_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{manifest_file}: field 'tokenizer' is malformed, or {f} is ({e})") from None
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> dict:
        encs = self.tok.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}

    def words(self) -> set[str]:
        class _Vocab:   # tokenizer_words reads `.vocab`
            vocab = self.tok.get_vocab()
        return tokenizer_words(_Vocab())
