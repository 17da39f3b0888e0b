"""The steps of the whole method, one code path for `dashclip train shop.toml` and `dashclip demo`:

    import -> stage1 -> embed -> labels -> stage2 -> index -> eval

Each step reads the config (`config.py`) and the work dir, calls the stage's own API (catalog import,
`training.pretrain`, `labeling.*`, `training.align`, `index.catalog_index`, `evaluation`), and returns
facts that `Run.finish` records in the work dir's record (`pipeline.json`; `demo.json` for the demo),
so a second run reuses finished steps and a killed step resumes (Stage 1, embedding and grading keep
their checkpoints/shards).

A catalog without images skips Stage 1 (it learns the image-title space, and there are no images):
the model starts as the base text encoder with identity projections (`base_text_model`), so before
Stage 2 it ranks exactly as the off-the-shelf encoder does, and the product embedding is the text
embedding (`embed_catalog(text_only=True)`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.ids import id_text
from ..data.tables import read_frame
from ..labeling.grades import GRADE_VALUES
from ..text import query_key
from .config import ConfigError, PipelineConfig

STEP_NAMES = ("import", "stage1", "embed", "labels", "stage2", "photos", "index", "eval")
HUMAN = "human"


class Run:
    """The work dir of one pipeline run and its record of finished steps."""

    def __init__(self, work: Path, config: PipelineConfig, mode: str, log=print, record_name: str = "pipeline.json",
                 record_extra: dict | None = None):
        self.work, self.cfg, self.mode, self.log = Path(work), config, mode, log
        self.record_path = self.work / record_name
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
        if self.record.get("mode", mode) != mode:
            raise ConfigError(f"{work} holds a run of {self.record['mode']!r}, not {mode!r}; "
                              f"use --fresh or another output dir")
        self.record.update(mode=mode, **(record_extra or {}))
        self.record.setdefault("steps", {})

    def path(self, *parts) -> Path:
        return self.work.joinpath(*parts)

    def done(self, step: str) -> bool:
        return step in self.record["steps"]

    def facts(self, step: str) -> dict:
        return self.record["steps"].get(step, {})

    def finish(self, step: str, seconds: float, **facts) -> None:
        from ..io import write_json

        self.record["steps"][step] = {"seconds": round(seconds, 1), "config_hash": step_hash(self.cfg, step), **facts}
        write_json(self.record_path, self.record)

    def forget_changed(self) -> list[str]:
        """Steps whose part of the config changed since they ran are redone, with every step after them
        (their outputs are deleted; the image-feature cache stays). Returns the names forgotten."""
        from ..io import write_json

        names = [n for n, _ in STEPS]
        changed = [n for n in names if n in self.record["steps"]
                   and self.record["steps"][n].get("config_hash", step_hash(self.cfg, n)) != step_hash(self.cfg, n)]
        if not changed:
            return []
        forget = names[names.index(changed[0]):]
        for n in forget:
            self.record["steps"].pop(n, None)
            for d in STEP_OUTPUTS[n]:
                shutil.rmtree(self.path(d), ignore_errors=True)
        write_json(self.record_path, self.record)
        self.log(f"the config of step {changed[0]} changed: redoing {', '.join(forget)}")
        return forget


# The config sections each step reads (with those of the steps before it), and the dirs it writes.
STEP_SECTIONS = {"import": ("catalog",), "stage1": ("model", "stage1"), "embed": (),
                 "labels": ("grades", "queries", "labeler", "labels"), "stage2": ("stage2",), "photos": ("photos",),
                 "index": (),
                 "eval": ("eval",)}
STEP_OUTPUTS = {"import": ("catalog", "source"), "stage1": ("stage1",), "embed": ("embeddings", "embeddings.partial"),
                "labels": ("labels",), "stage2": ("stage2", "model"), "photos": ("photos",),
                "index": ("index", "index-embeddings"),
                "eval": ("report",)}


def step_hash(cfg: PipelineConfig, step: str) -> str:
    """A hash of the config sections `step` and the steps before it read: a change redoes it."""
    d = cfg.to_dict()
    upto = list(STEP_SECTIONS)[:list(STEP_SECTIONS).index(step) + 1]
    parts = {sec: d[sec] for name in upto for sec in STEP_SECTIONS[name]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------
# 1. import


def _mapping(cfg: PipelineConfig, preset_mapping=None) -> dict:
    """The column mapping of the config, over a preset's (only the keys the config sets)."""
    from .config import CatalogConfig

    c, default = cfg.catalog, CatalogConfig()
    keys = ("id", "title", "image", "image_pattern", "images_dir", "category", "text", "attrs")
    out = preset_mapping.to_dict() if preset_mapping is not None else {}
    for k in keys:
        v = getattr(c, k)
        if preset_mapping is None or v != getattr(default, k):
            out[k] = (v or None) if not isinstance(v, list) else v
    if out.get("images_dir") and preset_mapping is None:
        out["images_dir"] = str(cfg.resolve(out["images_dir"]))
    return out


def step_import(r: Run) -> dict:
    """The catalog (or a seeded sample of it) into `catalog/`, through `dashclip catalog import`."""
    from ..data.importer import import_catalog
    from ..data.tables import EXTENSION_FORMATS, read_table
    from ..data.presets import PRESETS, get_preset
    from ..data.rows import Mapping

    c = r.cfg.catalog
    malformed: list = []            # rows of the source a sample could not parse
    preset = c.preset or (c.source if c.source in PRESETS and not cfg_file_exists(r.cfg, c.source) else "")
    if preset and not c.sample:
        result = import_catalog(None, r.path("catalog"), preset=preset,
                                mapping=_mapping(r.cfg, get_preset(preset).load().mapping) or None)
    else:
        if preset:
            src = get_preset(preset).load()
            file, mapping, name = src.file, _mapping(r.cfg, src.mapping), f"{preset}-sample"
        else:
            file, mapping, name = r.cfg.resolve(c.source), _mapping(r.cfg), r.cfg.name
            if not file.is_file():
                raise ConfigError(f"[catalog] source: {file}: no such file")
        encoding = c.encoding
        if c.sample:
            # the sample is drawn from the rows the import would read (`read_table`), and written as UTF-8 in
            # the source's kind of file: CSV stays CSV (its cells are text), anything else becomes JSONL,
            # which keeps numbers and lists as they were. Rows that cannot be parsed are never in a sample,
            # so they are reported here: the import of the sample cannot see them.
            as_csv = EXTENSION_FORMATS.get(file.suffix.lower()) == "csv"
            table = read_table(file, encoding=c.encoding)
            malformed = [row for row in table.rows if row.malformed]
            rows = pd.DataFrame([row.values for row in table.rows if not row.malformed])
            if malformed:
                first = malformed[0]
                r.log(f"[catalog] sample: {len(malformed)} row(s) of {file} could not be parsed and were left out "
                      f"(first: {table.row_label} {first.number}: {first.malformed})")
            sample = rows.sample(n=min(c.sample, len(rows)), random_state=0).sort_index()
            out = r.path("source", "catalog-sample.csv" if as_csv else "catalog-sample.jsonl")
            out.parent.mkdir(parents=True, exist_ok=True)
            if as_csv:
                sample.to_csv(out, index=False)
            else:
                sample.to_json(out, orient="records", lines=True, force_ascii=False)
            if mapping.get("images_dir") is None and (mapping.get("image") or mapping.get("image_pattern")):
                mapping["images_dir"] = str(Path(file).parent)
            file, encoding = out, "utf-8"
        result = import_catalog(file, r.path("catalog"), mapping=Mapping.from_dict(mapping), name=name,
                                encoding=encoding)
    rep = result.report
    return {"products": rep.products, "with_image": rep.products_with_image,
            "rows_dropped": rep.rows_dropped, "problems": rep.counts(),
            **({"sample_source_rows_malformed": len(malformed)} if malformed else {})}


def cfg_file_exists(cfg: PipelineConfig, path: str) -> bool:
    return cfg.resolve(path).is_file()


# ---------------------------------------------------------------------------------------------------
# 2. Stage 1 (or the base text encoder when the catalog has no images)


def text_only(r: Run) -> bool:
    """Whether the shop runs without images: Stage 1 off, or auto and no product has an image."""
    enabled = r.cfg.stage1.enabled
    return enabled == "off" or (enabled == "auto" and not r.facts("import").get("with_image"))


def base_text_model(config: str = "default"):
    """The model a text-only shop starts from: the config's pretrained towers, the embedding space the
    text tower's own width, and the text and fused projections the identity, so the product and query
    embeddings are exactly the base encoder's (for `default`: off-the-shelf all-MiniLM-L6-v2)."""
    import torch

    import dashclip

    model = dashclip.create_model(config)
    width = model.text_tower.width
    if model.embed_dim != width:
        model = dashclip.create_model(config, embed_dim=width)
    with torch.no_grad():
        for proj in (model.text_proj, model.fused_proj):
            proj.weight.copy_(torch.eye(width))
            proj.bias.zero_()
    return model


def step_stage1(r: Run) -> dict:
    """Stage 1: ITC + ITM on catalog image-title pairs, or the base text encoder for a catalog without images.

    The image tower is frozen and its features cached; without images Stage 1 is skipped."""
    from ..io import atomic_dir
    from ..training.pretrain import PretrainConfig, pretrain

    out, s = r.path("stage1"), r.cfg.stage1
    if text_only(r):
        why = ("[stage1] enabled = off" if s.enabled == "off" else
               "the catalog has no images: Stage 1 learns the image-title space, so there is nothing to learn")
        r.log(f"Stage 1 skipped ({why}); the product embedding is the text embedding of the base encoder")
        with atomic_dir(out / "model") as tmp:
            base_text_model(r.cfg.model).save(tmp)
        return {"skipped": True, "why": why, "product_embedding": "text (base encoder, identity projection)"}
    cfg = PretrainConfig(config=r.cfg.model, image_size=s.image_size, freeze_image=True, epochs=s.epochs,
                         max_steps=s.max_steps or None, batch_size=s.batch_size, lr=s.lr, warmup_steps=20,
                         ckpt_every=50, cache_dir=str(r.path("cache")), amp="auto",
                         resume=(out / "checkpoints" / "last.pt").exists())
    t0 = time.time()
    result = pretrain(r.path("catalog"), out, cfg)
    last = result.train.evals[-1] if result.train.evals else {}
    cache = result.split.get("image_cache", {})
    # A cache built by an earlier run of this work dir is not in this step's seconds: say so.
    built_here = bool(cache.get("path")) and (Path(cache["path"]) / "meta.json").stat().st_mtime >= t0
    return {"steps": result.train.step, "pairs": result.train.examples,
            "image_cache_build_seconds": cache.get("build_seconds"), "image_cache_built_in_this_step": built_here,
            **{k: round(v, 4) for k, v in last.items() if isinstance(v, float)}}


# ---------------------------------------------------------------------------------------------------
# 3. embed


def step_embed(r: Run) -> dict:
    """Product embeddings of the whole catalog with the Stage 1 model (text only without images)."""
    import dashclip

    from ..models.embeddings import embed_catalog, load_embeddings

    model = dashclip.load(r.path("stage1", "model"))
    embed_catalog(model, r.path("catalog"), r.path("embeddings"), batch_size=128, image_cache_root=r.path("cache"),
                  text_only=text_only(r))
    return {"products": len(load_embeddings(r.path("embeddings"))), "text_only": text_only(r)}


# ---------------------------------------------------------------------------------------------------
# 4. labels: human grades -> labeler -> candidates of the logged (and synthesized) queries -> graded


def _qid(text: str) -> str:
    return "q" + hashlib.sha1(query_key(text).encode()).hexdigest()[:10]


def read_grade_table(path: Path, cfg: PipelineConfig, what: str) -> tuple[pd.DataFrame, pd.Series, pd.Series, int]:
    """(the table, its grades 0/1/2, its query texts, the row number of its first row) of a human grade file;
    a missing column, a grade outside 0..2 (after `grade_map`), a query id the `queries` table lacks or an
    empty query is an error naming the file, row and field."""
    g = cfg.grades
    if not path.is_file():
        raise ConfigError(f"[grades] {what}: {path}: no such file")
    df, first_row = read_frame(path)
    by_id = bool(g.queries)
    cols = {"query": g.query_id_column if by_id else g.query_column, "product_id": g.product_column,
            "grade": g.grade_column}
    missing = [v for v in cols.values() if v not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (have {', '.join(map(str, df.columns))}); "
                          f"set [grades] {'query_id_column' if by_id else 'query_column'} / product_column / "
                          f"grade_column")
    grade = _grades(df[cols["grade"]], g.grade_map)
    bad = grade.isna() | ~grade.isin(GRADE_VALUES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        expected = (f"one of {', '.join(map(repr, g.grade_map))} ([grades] grade_map)" if g.grade_map
                    else "0, 1 or 2 (or set [grades] grade_map)")
        raise ConfigError(f"{path}: row {i + first_row}: field {cols['grade']!r} is {df[cols['grade']].iloc[i]!r}, "
                          f"expected {expected}")
    if by_id:
        texts = read_query_texts(cfg.resolve(g.queries), cfg)
        ids = df[cols["query"]].map(id_text)
        unknown = ~ids.isin(texts.index)
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise ConfigError(f"{path}: row {i + first_row}: field {cols['query']!r} is {ids.iloc[i]!r}, a query id "
                              f"that [grades] queries ({cfg.resolve(g.queries)}) does not have")
        query = ids.map(texts)
    else:
        query = df[cols["query"]].astype(str).str.strip()
    empty = query == ""
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise ConfigError(f"{path}: row {i + first_row}: field {cols['query']!r} is empty"
                          + (" (no text in [grades] queries)" if by_id else ""))
    return df, grade, query, first_row


def _grades(raw: pd.Series, grade_map: dict[str, int]) -> pd.Series:
    """The grade column as numbers: through `grade_map` when one is given (exact text first, then any case),
    else as written; NaN where a value is not a grade."""
    if not grade_map:
        return pd.to_numeric(raw, errors="coerce")
    folded = {k.strip().casefold(): v for k, v in grade_map.items()}
    text = raw.map(id_text)
    return text.map(lambda t: grade_map.get(t, folded.get(t.casefold()))).astype(float)


def read_query_texts(path: Path, cfg: PipelineConfig) -> pd.Series:
    """[grades] queries: query text by query id (text), for grade files that name queries by id."""
    g = cfg.grades
    if not path.is_file():
        raise ConfigError(f"[grades] queries: {path}: no such file")
    df, first_row = read_frame(path)
    missing = [c for c in (g.query_id_column, g.query_column) if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (have {', '.join(map(str, df.columns))}); "
                          f"set [grades] query_id_column / query_column")
    ids = df[g.query_id_column].map(id_text)
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ConfigError(f"{path}: row {i + first_row}: field {g.query_id_column!r} is {ids.iloc[i]!r}, a query id "
                          f"seen before (row {int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0]) + first_row})")
    return pd.Series(df[g.query_column].astype(str).str.strip().to_numpy(), index=ids.to_numpy())


def check_inputs(cfg: PipelineConfig) -> None:
    """Read every input file of the config once before any long step, so a bad file fails now."""
    c = cfg.catalog
    if c.source and not c.preset and not cfg_file_exists(cfg, c.source):
        from ..data.presets import PRESETS

        if c.source not in PRESETS:
            raise ConfigError(f"[catalog] source: {cfg.resolve(c.source)}: no such file (nor a preset name)")
    if cfg.grades.train:
        read_grade_table(cfg.resolve(cfg.grades.train), cfg, "train")
    if cfg.grades.eval:
        read_grade_table(cfg.resolve(cfg.grades.eval), cfg, "eval")
    if cfg.queries.log and read_query_log(cfg.resolve(cfg.queries.log), cfg).empty:
        raise ConfigError(f"[queries] log: {cfg.resolve(cfg.queries.log)}: no training queries (the log is empty)")


def read_human_grades(path: Path, catalog, cfg: PipelineConfig, what: str) -> tuple[pd.DataFrame, dict]:
    """Human grades from a CSV/JSONL/Parquet file, in the grade schema (docs/architecture.md §4).

    A missing column or a grade outside 0..2 is an error naming the file, row (line, header = 1) and
    field. Rows whose product is not in the catalog are dropped and reported (count and examples)."""
    df, grade, query, _ = read_grade_table(path, cfg, what)
    cols = {"product_id": cfg.grades.product_column}
    pids = [catalog.coerce_id(p) for p in df[cols["product_id"]].tolist()]
    known = np.array([p in catalog.row_of for p in pids], dtype=bool)
    out = pd.DataFrame({"qid": df["qid"].astype(str) if "qid" in df.columns else query.map(_qid),
                        "query": query, "product_id": pids, "grade": grade.astype(np.int8),
                        "confidence": np.float32(1.0), "labeler": HUMAN, "labeler_version": path.name})
    unknown = out[~known]
    stats = {"file": str(path), "rows": int(len(out)), "queries": int(out["query"].map(query_key).nunique()),
             "unknown_product_rows": int(len(unknown)),
             "unknown_product_examples": [str(p) for p in unknown["product_id"].drop_duplicates().head(5)]}
    out = out[known].drop_duplicates(["qid", "product_id"]).reset_index(drop=True)
    out["product_id"] = out["product_id"].astype(catalog.products["id"].dtype)
    stats["rows_kept"] = int(len(out))
    return out, stats


def _heldout_by_hash(text: str, fraction: float) -> bool:
    h = int(hashlib.sha1(query_key(text).encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def read_query_log(path: Path, cfg: PipelineConfig) -> pd.DataFrame:
    """The search log: one row per distinct query (qid, query, count)."""
    q = cfg.queries
    if not path.is_file():
        raise ConfigError(f"[queries] log: {path}: no such file")
    if path.suffix.lower() == ".txt":
        try:
            df = pd.DataFrame({q.column: path.read_text(encoding="utf-8-sig").splitlines()})
        except UnicodeDecodeError as e:
            line = path.read_bytes().count(b"\n", 0, e.start) + 1
            raise ConfigError(f"{path}: line {line}: not valid UTF-8 text ({e.reason}); save it as UTF-8") from None
    else:
        df = read_frame(path)[0]
    if q.column not in df.columns:
        raise ConfigError(f"{path}: missing column {q.column!r} (have {', '.join(map(str, df.columns))}); "
                          f"set [queries] column")
    if q.count_column and q.count_column not in df.columns:
        raise ConfigError(f"{path}: missing column {q.count_column!r} ([queries] count_column)")
    counts = pd.to_numeric(df[q.count_column], errors="coerce").fillna(1) if q.count_column else pd.Series(1, index=df.index)
    log = pd.DataFrame({"query": df[q.column].astype(str).str.strip(), "count": counts})
    log = log[log["query"] != ""]
    log["key"] = log["query"].map(query_key)
    log = log.groupby("key", sort=True).agg(query=("query", "first"), count=("count", "sum")).reset_index()
    log["qid"] = log["query"].map(_qid)
    return log[["qid", "query", "count", "key"]]


def _lap(seconds: dict):
    t = [time.time()]

    def lap(name):
        seconds[name], t[0] = round(time.time() - t[0], 1), time.time()
    return lap


def human_grades(r: Run, catalog, bm25, out: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """(train grades, evaluation-only grades or None, facts), written to <out>/seed.parquet and
    <out>/eval.parquet (out: labels/). The fashion preset's seed grades come from its labels.py rule."""
    from ..io import save_with, write_json

    g = r.cfg.grades
    seed_path, eval_path, facts_path = out / "seed.parquet", out / "eval.parquet", out / "human.json"
    if seed_path.exists() and facts_path.exists():
        facts = json.loads(facts_path.read_text())
        return pd.read_parquet(seed_path), (pd.read_parquet(eval_path) if eval_path.exists() else None), facts
    facts: dict = {}
    evaluation = None
    if g.seed_rule:
        # An annotator judges each query's top results of BM25 and of off-the-shelf MiniLM (query vs title;
        # the evaluation's baseline reads the same cached title vectors), and a few random products.
        from ..evaluation.baselines import minilm_scorer
        from ..labeling.candidates import DenseRetriever
        from ..labeling.seed import seed_from_labels_py
        from ..settings import dataset_dir

        minilm = minilm_scorer(catalog, cache_dir=r.path("cache", "eval"))
        dense = DenseRetriever(minilm.encode_queries, np.asarray(minilm.product_ids), minilm.product_vectors,
                               name="minilm")
        seed = seed_from_labels_py(catalog, dataset_dir(g.seed_rule) / "dev_queries.jsonl", bm25=bm25,
                                   k_bm25=g.seed_k_bm25, dense=dense, k_dense=g.seed_k_dense,
                                   n_random=g.seed_n_random, seed=0)
        facts["seed_rule"] = g.seed_rule
    else:
        seed, facts["train"] = read_human_grades(r.cfg.resolve(g.train), catalog, r.cfg, "train")
        if g.eval:
            evaluation, facts["eval"] = read_human_grades(r.cfg.resolve(g.eval), catalog, r.cfg, "eval")
        elif g.eval_fraction > 0:
            held = seed["query"].map(lambda q: _heldout_by_hash(q, g.eval_fraction))
            seed, evaluation = seed[~held].reset_index(drop=True), seed[held].reset_index(drop=True)
            facts["eval"] = {"from_train_fraction": g.eval_fraction, "rows_kept": int(len(evaluation))}
        if evaluation is not None:
            keys = set(evaluation["query"].map(query_key))
            overlap = seed["query"].map(query_key).isin(keys)
            facts["train_rows_dropped_eval_query"] = int(overlap.sum())   # evaluation-only: never trained on
            seed = seed[~overlap].reset_index(drop=True)
            facts["eval_queries"] = int(len(keys))
        if seed.empty:
            raise ConfigError(f"[grades] train: no usable human grades left in {g.train}")
    facts["train_pairs"] = int(len(seed))
    facts["train_queries"] = int(seed["qid"].nunique())
    save_with(seed_path, lambda p: seed.to_parquet(p, index=False))
    if evaluation is not None:
        save_with(eval_path, lambda p: evaluation.to_parquet(p, index=False))
    write_json(facts_path, facts)
    return seed, evaluation, facts


def eval_query_texts(r: Run, labels_dir: Path | None = None) -> list[str]:
    """The query texts that must never be trained on: the evaluation-only grades' (or the fashion
    preset's held-out dev queries)."""
    if r.cfg.eval.kind == "fashion-queries":
        return [q["query"] for q in fashion_heldout_queries()]
    path = Path(labels_dir or r.path("labels")) / "eval.parquet"
    return pd.read_parquet(path)["query"].drop_duplicates().tolist() if path.exists() else []


def fashion_heldout_queries() -> list[dict]:
    """The fashion dev queries held out from all training (qid divisible by 3)."""
    from ..evaluation.qrels import load_queries
    from ..settings import dataset_dir

    return load_queries(dataset_dir("fashion-queries") / "dev_queries.jsonl", heldout_only=True)


def log_queries(r: Run, seed: pd.DataFrame, exclude: list[str]) -> tuple[pd.DataFrame, dict]:
    """The logged training queries: the query log (or, without one, the train grades' queries), minus
    evaluation-only queries. Empty for the fashion preset, which has no search log."""
    if r.cfg.queries.log:
        log = read_query_log(r.cfg.resolve(r.cfg.queries.log), r.cfg)
        source = str(r.cfg.resolve(r.cfg.queries.log))
    elif not r.cfg.grades.seed_rule:
        log = seed[["qid", "query"]].drop_duplicates("qid").assign(count=1)
        log["key"] = log["query"].map(query_key)
        log = log.drop_duplicates("key")
        source = "the train grades' queries"
    else:
        return pd.DataFrame(columns=["qid", "query", "count"]), {"queries": 0}
    held = log["key"].isin({query_key(q) for q in exclude})
    facts = {"source": source, "queries_in_log": int(len(log)), "dropped_eval_queries": int(held.sum())}
    log = log[~held].reset_index(drop=True)
    if log.empty:
        raise ConfigError(f"[queries] log: {source}: no training queries (the log is empty, or every query "
                          f"is an evaluation query)")
    facts["queries"] = int(len(log))
    return log[["qid", "query", "count"]], facts


def train_labeler(r: Run, seed: pd.DataFrame, catalog, vocabulary, bm25, exclude: list[str], out: Path):
    """The labeler, fine-tuned on the training split of the human grades (qid % 3 held out to score it)
    into `out` (a labeler dir that exists is used as it is). Returns (labeler, human pairs it learned from)."""
    from ..labeling.consistency import reading_examples
    from ..labeling.grades import split_by_query
    from ..labeling.labelers.cross_encoder import CrossEncoderConfig, CrossEncoderLabeler, train_from_seed

    lab = r.cfg.labeler
    if lab.kind == "llm":
        import os

        from ..labeling.labelers.llm import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, LLMLabeler, few_shot_examples

        # An OpenAI-compatible endpoint: the config's model and URL, else $DASHCLIP_LLM_MODEL / _BASE_URL
        # (the API key only ever from the environment). A few training grades are its examples.
        train, _ = split_by_query(seed)
        base = lab.llm_base_url or os.environ.get(ENV_BASE_URL) or "https://api.openai.com/v1"
        labeler = LLMLabeler(base, lab.llm_model or os.environ.get(ENV_MODEL, ""), os.environ.get(ENV_API_KEY),
                             examples=few_shot_examples(train, catalog), cache_dir=out.parent / "llm-cache")
        return labeler, 0
    train, held = split_by_query(seed)
    available = len(train)
    if lab.max_pairs and len(train) > lab.max_pairs:
        train = train.sample(n=lab.max_pairs, random_state=0)
    if not (out / "labeler.json").exists():
        if len(train) < available:
            r.log(f"the labeler learns from a seeded sample of {len(train)} of the {available} human train pairs "
                  f"([labeler] max_pairs; 0 takes them all)")
        lessons = None
        if vocabulary is not None and lab.reading_queries:
            lessons = reading_examples(catalog, vocabulary, lab.reading_queries, seed=7, bm25=bm25, exclude=exclude)
        r.log(f"training the cross-encoder labeler on {len(train)} {'seed' if r.cfg.grades.seed_rule else 'human'} grades"
              + (f" and {len(lessons)} reading-graded pairs (vocabulary {vocabulary.name})" if lessons is not None else ""))
        def progress(step, total, loss):     # long on a busy CPU: say where it is
            if step % 50 == 0 or step == total:
                r.log(f"labeler step {step}/{total}, loss {loss:.3f}")

        train_from_seed(pd.concat([train, held]), catalog, out, vocabulary=vocabulary, extra=lessons,
                        config=CrossEncoderConfig(epochs=lab.epochs, max_length=lab.max_length, lr=lab.lr,
                                                  batch_size=lab.batch_size, amp="auto"), progress=progress)
    return CrossEncoderLabeler(out, batch_size=128), int(len(train))


def candidate_pairs(r: Run, catalog, bm25, log: pd.DataFrame, pool: pd.DataFrame | None,
                    known: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """What the labeler grades: for every logged query BM25 top K + dense top K (the current model's
    query encoder against the product embeddings) + random; for the synthesized pool, BM25 + products
    of its reading + near misses + random. Pairs a human already graded are left out; `max_pairs`
    caps the total (a seeded sample)."""
    from ..labeling.candidates import DenseRetriever, pick_candidates

    lb = r.cfg.labels
    parts, facts = [], {}
    if len(log):
        dense = DenseRetriever.from_dirs(r.path("stage1", "model"), r.path("embeddings")) if lb.k_dense else None
        pairs = pick_candidates(catalog, log, bm25=bm25, k_bm25=lb.k_bm25, k_dense=lb.k_dense, dense=dense,
                                n_random=lb.n_random, seed=1)
        graded = set(zip(known["query"].map(query_key), known["product_id"].tolist()))
        seen = np.array([(query_key(q), p) in graded for q, p in zip(pairs["query"], pairs["product_id"])], bool)
        facts["log_pairs"], facts["log_pairs_human_graded_skipped"] = int((~seen).sum()), int(seen.sum())
        parts.append(pairs[~seen])
    if pool is not None and len(pool):
        pairs = pick_candidates(catalog, pool, bm25=bm25, k_bm25=lb.pool_k_bm25, n_random=lb.pool_n_random,
                                k_dense=0, k_reading=lb.pool_k_reading, k_near=lb.pool_k_near, seed=1)
        facts["pool_pairs"] = int(len(pairs))
        parts.append(pairs)
    pairs = pd.concat(parts, ignore_index=True)
    if lb.max_pairs and len(pairs) > lb.max_pairs:
        pairs = pairs.sample(n=lb.max_pairs, random_state=0).sort_index().reset_index(drop=True)
        facts["capped_at"] = lb.max_pairs
    return pairs, facts


def step_labels(r: Run) -> dict:
    """Human grades -> labeler -> candidates of the logged queries (and a synthesized pool) -> graded
    (pool grades checked against what each query was built to mean)."""
    return make_labels(r, r.path("catalog"), r.path("labels"))


def make_labels(r: Run, catalog_dir: Path, out: Path, labeler_dir: Path | None = None,
                exclude_more: list[str] = (), pool: pd.DataFrame | None = None) -> dict:
    """The labels step into `out`: (human grades when `out` has none yet: seed.parquet, eval.parquet),
    the candidate pairs (pool_pairs.parquet; a synthesized pool.parquet with a vocabulary), the labeler
    (`labeler_dir`, default out/labeler: trained unless it exists), the graded shards (grades/) and
    what Stage 2 reads (checked.parquet: the pool's grades checked against their readings when
    [labels] check). `exclude_more`: query texts neither synthesized nor taught. `pool`: a synthesized
    pool made elsewhere (benchmarks/stage2_protocol.py: from half a vocabulary), used instead of one
    from [labels] vocabulary. The one labels path of the pipeline, the demo and the benchmarks.
    Returns its facts."""
    from ..data.catalog import Catalog
    from ..io import save_with, write_json
    from ..labeling import load_grades
    from ..labeling.consistency import keep_consistent
    from ..labeling.evaluate import evaluate_labeler
    from ..labeling.grading import grade_pairs
    from ..labeling.queries import synthesize_queries
    from ..labeling.vocabulary import Vocabulary
    from ..text import BM25

    lb, out = r.cfg.labels, Path(out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(catalog_dir)
    vocabulary = Vocabulary.load(lb.vocabulary) if lb.vocabulary else None
    bm25 = BM25(catalog.product_texts())
    seconds = {}
    lap = _lap(seconds)

    seed, _, human = human_grades(r, catalog, bm25, out)
    exclude = eval_query_texts(r, out) + list(exclude_more)
    lap("human_grades")
    log, log_facts = log_queries(r, seed, exclude)

    # The synthesized pool (a shop with a vocabulary), made first so the labeler's reading-graded
    # lessons never repeat a pool query.
    pool_path, pairs_path = out / "pool.parquet", out / "pool_pairs.parquet"
    if not pairs_path.exists():
        if pool is not None:
            save_with(pool_path, lambda p: pool.to_parquet(p, index=False))
        elif vocabulary is not None and lb.pool_queries:
            pool = synthesize_queries(catalog, n=lb.pool_queries, seed=0, vocabulary=vocabulary, exclude=exclude)
            save_with(pool_path, lambda p: pool.to_parquet(p, index=False))
        pairs, cand_facts = candidate_pairs(r, catalog, bm25, log, pool, seed)
        write_json(out / "candidates.json", cand_facts)
        save_with(pairs_path, lambda p: pairs.to_parquet(p, index=False))
    pool = pd.read_parquet(pool_path) if pool_path.exists() else None
    pairs, cand_facts = pd.read_parquet(pairs_path), json.loads((out / "candidates.json").read_text())
    lap("candidates")

    lesson_exclude = exclude + (pool["query"].tolist() if pool is not None else []) + seed["query"].tolist()
    labeler, labeler_pairs = train_labeler(r, seed, catalog, vocabulary, bm25, lesson_exclude,
                                           Path(labeler_dir or out / "labeler"))
    lap("labeler_train")
    quality = {}
    if r.cfg.labeler.heldout_check:
        quality = evaluate_labeler(labeler, seed, catalog, batch_size=128)
        write_json(out / "labeler_eval.json", quality)
    lap("labeler_eval")

    r.log(f"grading {len(pairs)} (query, product) pairs of {pairs['qid'].nunique()} queries")
    done = [0, 0]

    def graded_some(n):
        done[0] += n
        if done[0] - done[1] >= 8192 or done[0] == len(pairs):
            done[1] = done[0]
            r.log(f"graded {done[0]}/{len(pairs)} pairs")

    summary = grade_pairs(pairs, catalog, labeler, out / "grades", shard_size=2048, progress=graded_some)
    if not summary["complete"]:
        raise RuntimeError(f"{out / 'grades'}: grading stopped before the end; re-run to continue")
    lap("grade")
    grades = load_grades(out / "grades")
    check = {}
    if lb.check and pool is not None and len(pool):
        in_pool = grades["qid"].isin(set(pool["qid"].astype(str)))
        kept, check = keep_consistent(grades[in_pool], pool, catalog)
        grades = pd.concat([grades[~in_pool], kept], ignore_index=True)
        write_json(out / "checked.json", check)
    save_with(out / "checked.parquet", lambda p: grades.to_parquet(p, index=False))
    lap("check")
    graded = int(summary["pairs"])
    facts = {"seed_grades": int(len(seed)), "human": human, "log": log_facts, "candidates": cand_facts,
             "pool_queries": int(len(pool)) if pool is not None else 0, "graded_pairs": graded,
             "pairs_per_second": (summary["this_run"]["pairs_per_second"]
                                  if summary["this_run"]["graded"] else None),
             "labeler_train_pairs": labeler_pairs,
             "labels_per_labeler_pair": round(graded / labeler_pairs, 2) if labeler_pairs else None,
             "labels_per_human_pair": round(graded / len(seed), 2),
             "labeler_heldout_kappa": round(quality.get("kappa_quadratic", float("nan")), 4),
             "labeler_heldout_accuracy": round(quality.get("accuracy", float("nan")), 4),
             "seconds_by_part": seconds}
    facts["check"] = bool(lb.check)
    if check:
        facts.update(checked_pairs_kept=check["kept"], agreement_with_readings=check["agreement"])
    else:
        facts["checked_pairs_kept"] = int(len(grades))
    if labeler_pairs and graded < lb.min_ratio * labeler_pairs:
        facts["warning"] = (f"{graded} labels is fewer than {lb.min_ratio:g}x the {labeler_pairs} human pairs "
                            f"the labeler learned from; raise [labels] k_bm25 / k_dense / n_random")
        r.log(f"warning: {facts['warning']}")
    return facts


# ---------------------------------------------------------------------------------------------------
# 5. Stage 2


def stage2_settings(cfg: PipelineConfig, out: Path):
    """(AlignConfig, LoopConfig) of the config's [stage2], training into `out` (resumed when it holds
    a checkpoint). The one place they are made: the pipeline and benchmarks/stage2_protocol.py."""
    from ..training.align import AlignConfig
    from ..training.loop import LoopConfig

    s = cfg.stage2
    loop = LoopConfig(epochs=s.epochs, max_steps=s.max_steps or None, batch_size=s.batch_size, lr=s.lr,
                      warmup_steps=s.warmup_steps, ckpt_every=100, amp="auto",
                      resume=(Path(out) / "checkpoints" / "last.pt").exists())
    config = AlignConfig(variant=s.variant,
                         grade1_weight=None if s.grade1_weight < 0 else s.grade1_weight, wise_alpha=s.wise_alpha,
                         min_confidence=s.min_confidence, spelling=s.spelling, pairs_per_query=s.pairs_per_query)
    return config, loop


def step_stage2(r: Run) -> dict:
    """Stage 2: the query encoder, trained with QCC on human + labeler grades; product side frozen."""
    from ..io import atomic_dir
    from ..training.align import align

    out = r.path("stage2")
    config, loop = stage2_settings(r.cfg, out)
    grades = ([r.path("labels", "seed.parquet")] if r.cfg.stage2.human_grades else []) + \
        [r.path("labels", "checked.parquet")]
    summary = align(r.path("stage1", "model"), grades, out, config, loop, embeddings_dir=r.path("embeddings"),
                    exclude_queries=set(eval_query_texts(r)))
    with atomic_dir(r.path("model")) as tmp:      # the model users keep: both encoders
        shutil.copytree(out / "model", tmp, dirs_exist_ok=True)
    return {"steps": summary["steps"], "train_examples": summary["train_examples"],
            "grades": summary["grades"], "last_loss": round(summary["last"].get("loss", float("nan")), 4)}


# ---------------------------------------------------------------------------------------------------
# 6. photos


def step_photos(r: Run) -> dict:
    """Photo alignment: a photo-query head trained on the catalog's images against the product embeddings."""
    from ..data.catalog import Catalog
    from ..io import atomic_dir, read_json
    from ..training.photo_align import PhotoAlignConfig, align_photos
    from ..training.pretrain import CONFIG_FILE

    p = r.cfg.photos
    if p.enabled == "off" or (p.enabled == "auto" and text_only(r)):
        why = "[photos] enabled = off" if p.enabled == "off" else "no Stage 1 (no images): photos have no tower"
        r.log(f"photo alignment skipped ({why}); photo queries use the image embedding")
        if read_json(r.path("model", "config.json")).get("photo_encoder"):   # an earlier run's head, now off
            import dashclip

            model = dashclip.load(r.path("model"))
            model.remove_photo_encoder()
            with atomic_dir(r.path("model")) as tmp:
                model.save(tmp)
        return {"skipped": True, "why": why}
    if text_only(r):
        raise ConfigError("[photos] enabled = \"on\", but Stage 1 did not run (no images): no photo to align")
    out = r.path("photos")
    stage1 = read_json(r.path("stage1", CONFIG_FILE))   # its held-out products stay unseen by every step
    cfg = PhotoAlignConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, hidden=p.hidden,
                           image_size=p.image_size or None, regression_weight=p.regression_weight,
                           tower_lr=p.tower_lr,
                           heldout_frac=stage1["heldout_frac"], seed=stage1["seed"])
    summary = align_photos(r.path("model"), Catalog.open(r.path("catalog")), r.path("embeddings"), out, cfg,
                           cfg.loop(resume=(out / "checkpoints" / "last.pt").exists()), cache_dir=r.path("cache"))
    with atomic_dir(r.path("model")) as tmp:      # the model users keep: both encoders and the photo head
        shutil.copytree(out / "model", tmp, dirs_exist_ok=True)
    last = summary["evals"][-1] if summary["evals"] else {}
    return {"steps": summary["steps"], "train_photos": summary["train_photos"],
            **{f"start_{k}": round(v, 4) for k, v in summary["start"].items() if k.endswith(("@1", "@10"))},
            **{k: round(v, 4) for k, v in last.items() if k.endswith(("@1", "@10"))}}


# ---------------------------------------------------------------------------------------------------
# 7. index


def step_index(r: Run) -> dict:
    """A FAISS index of the product embeddings, with the catalog attributes for filters, and its photo index
    (index.catalog_index) where the model has an image tower and the catalog images."""
    import dashclip

    from ..data.catalog import Catalog
    from ..index.catalog_index import build_catalog_index

    model = dashclip.load(r.path("model"))
    # the shop's training queries (logged and synthesized, never the eval's): an approximate index (above
    # 200,000 products) tunes its search setting on them rather than on noisy copies of product vectors
    pairs = r.path("labels", "pool_pairs.parquet")
    queries = pd.read_parquet(pairs, columns=["query"])["query"].tolist() if pairs.exists() else None
    index = build_catalog_index(model, r.path("model"), Catalog.open(r.path("catalog")), r.path("index"),
                                embeddings=r.path("embeddings"), quiet=True, tune_queries=queries)
    return {"products": len(index), "factory": index.meta.get("factory"),
            "photo_index": index.meta.get("photo_index"),
            **{k: v for k, v in index.meta.items() if k.startswith(("ef_search", "k_factor"))}}


# ---------------------------------------------------------------------------------------------------
# 8. eval, and the guard: never ship a model worse than the encoder it started from


BASE, TRAINED = "base encoder (before Stage 2)", "trained query encoder (Stage 2)"
HYBRID = f"{TRAINED} + BM25, RRF (search --hybrid)"


def ship_base(r: Run) -> None:
    """Replace model/ by the base model with a query encoder that is a copy of its text tower (the
    product side, hence the model id and the index, are unchanged)."""
    import dashclip

    from ..io import atomic_dir

    base = dashclip.load(r.path("stage1", "model"))
    base.add_query_encoder()
    shipped = dashclip.load(r.path("model"))
    if shipped.has_photo_encoder:       # photo search is not what the guard judges: keep the photo head
        base.copy_photo_encoder(shipped)
    with atomic_dir(r.path("model")) as tmp:
        base.save(tmp)


def shop_systems(r: Run, catalog):
    """BM25 over titles, off-the-shelf MiniLM (query vs title), the base encoder and the trained one,
    every one over the whole catalog."""
    import dashclip

    from ..evaluation.baselines import (BM25Scorer, EmbeddingScorer, HybridScorer, minilm_scorer,
                                        model_query_encoder)
    from ..models.embeddings import load_embeddings

    products = catalog.products
    base = dashclip.load(r.path("stage1", "model"))
    trained = dashclip.load(r.path("stage2", "model"))
    emb = load_embeddings(r.path("embeddings"), model_id=base.model_id, catalog_hash=catalog.content_hash, kind="fused")
    order = pd.Series(np.arange(len(emb.ids)), index=emb.ids).reindex(products["id"].to_numpy()).to_numpy()
    vectors = np.asarray(emb.vectors["fused"], dtype=np.float32)[order]
    ids = products["id"].tolist()
    bm25 = BM25Scorer("BM25 (titles)", products["title"].astype(str).tolist(), ids)
    systems = [bm25, minilm_scorer(catalog, products, "title", cache_dir=r.path("cache", "eval")),
               EmbeddingScorer(BASE, model_query_encoder(base, "encode_text"), vectors, ids),
               EmbeddingScorer(TRAINED, model_query_encoder(trained, "encode_query"), vectors, ids)]
    if r.cfg.eval.hybrid:
        systems.append(HybridScorer(HYBRID, systems[-1], bm25, correct=trained.correct_queries))
    return systems


def choose_default_search(r: Run, systems: dict, shipped_row: str) -> tuple[bool, str]:
    """Whether the index is searched hybrid by default, and why: as the config says, or ("auto") hybrid
    when fusing BM25 with the shipped encoder beat it alone on NDCG@10 of the evaluation grades."""
    how = r.cfg.eval.default_search
    if how != "auto":
        return how == "hybrid", f"[eval] default_search = \"{how}\""
    if HYBRID not in systems or shipped_row != TRAINED:
        return False, "auto: no hybrid row for the shipped encoder was measured"
    fused, alone = systems[HYBRID]["ndcg@10"], systems[TRAINED]["ndcg@10"]
    better = fused > alone
    return better, (f"auto: NDCG@10 on the evaluation grades {fused:.4f} hybrid vs {alone:.4f} vectors alone")


def rerank_first_stage(r: Run, systems: list, first_stage: str, catalog, queries: pd.DataFrame,
                       judged: dict, measured: dict) -> tuple[str | None, dict]:
    """Score the shipped first stage with its top `[eval] rerank_depth` re-ordered by the fine-tuned
    cross-encoder labeler, and ship that labeler as model/reranker/ when `[eval] rerank` says so ("on", or
    "auto" and it beat the first stage on NDCG@10). Returns (the row's name or None, the facts)."""
    import shutil

    from ..evaluation.baselines import RerankScorer, rank
    from ..evaluation.metrics import evaluate_judged
    from ..io import atomic_dir, write_json
    from ..labeling.rerank import RERANKER_DIR, CrossEncoderReranker

    how, depth = r.cfg.eval.rerank, r.cfg.eval.rerank_depth
    labeler = r.path("labels", "labeler")
    shutil.rmtree(r.path("model", RERANKER_DIR), ignore_errors=True)   # a rerun decides afresh
    if how == "off":
        return None, {"shipped": False, "why": "[eval] rerank = \"off\""}
    if r.cfg.labeler.kind != "cross-encoder" or not (labeler / "config.json").is_file():
        return None, {"shipped": False, "why": "no fine-tuned cross-encoder labeler to re-rank with"}
    first = next(s for s in systems if s.name == first_stage)
    name = f"{first_stage}, re-ranked top {depth} by the labeler (search --rerank)"
    r.log(f"ranking {len(queries)} evaluation queries with {name}")
    t0 = time.time()
    scorer = RerankScorer(name, first, CrossEncoderReranker(labeler, depth), catalog)
    ranked = rank(scorer, queries["query"].tolist())
    seconds = time.time() - t0
    measured[name] = evaluate_judged(dict(zip(queries["qid"], ranked)), judged)["overall"]
    gain = measured[name]["ndcg@10"] - measured[first_stage]["ndcg@10"]
    ship = how == "on" or (how == "auto" and gain > 0)
    why = (f"[eval] rerank = \"{how}\"; NDCG@10 on the evaluation grades {measured[name]['ndcg@10']:.4f} "
           f"re-ranked vs {measured[first_stage]['ndcg@10']:.4f} without")
    if ship:
        with atomic_dir(r.path("model", RERANKER_DIR)) as tmp:
            shutil.copytree(labeler, tmp, dirs_exist_ok=True)
            write_json(tmp / "rerank.json", {"depth": depth, "first_stage": first_stage, "why": why})
    r.log(f"re-ranker {'shipped in model/reranker' if ship else 'not shipped'}: {why}")
    return name, {"shipped": ship, "why": why, "depth": depth, "seconds": round(seconds, 1),
                  "ms_per_query": round(1000 * seconds / max(len(queries), 1), 1)}


def shop_report(r: Run, results: dict, shipped: str, warning: str | None) -> str:
    human = json.loads(r.path("labels", "human.json").read_text())
    labels = r.facts("labels")
    lines = [f"# {r.cfg.name}: search report", "",
             f"Evaluation-only grades: {results['n_queries']} queries ({results['n_pairs']} graded pairs), whole "
             f"catalog of {results['products']} products ranked exactly. NDCG@10 and MRR are judged (condensed list "
             f"of the top 100; NDCG over the {results['n_ndcg_queries']} queries with a relevant product, MRR over the "
             f"{results['n_recall_queries']} with a grade-2 product), Recall@100 of grade-2 products is over the whole "
             f"catalog.", "",
             "| system | NDCG@10 (judged) | Recall@100 | MRR (judged) |", "|---|---:|---:|---:|"]
    for name, m in results["systems"].items():
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr']:.4f} |")
    lines += ["", f"Shipped in `model/`: **{shipped}**."]
    if results.get("default_search"):
        d = results["default_search"]
        lines += ["", f"`index/` is searched **{'hybrid (BM25 + vectors, RRF)' if d['hybrid'] else 'dense (vectors only)'}**"
                  f" by default ({d['why']}); `dashclip search --hybrid` / `--dense` override it."]
    if results.get("rerank"):
        rr = results["rerank"]
        lines += ["", (f"The re-ranker (the fine-tuned labeler over the top {rr['depth']}) ships in "
                       f"`model/reranker/`: search and serve re-rank by default (`--no-rerank` turns it off). "
                       if rr["shipped"] else "The re-ranker is not shipped (`search --rerank --reranker "
                       "labels/labeler` uses it). ") + f"{rr['why']}."
                  + (f" Batch cost: {rr['ms_per_query']} ms per query." if "ms_per_query" in rr else "")]
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    s1 = r.facts("stage1")
    if s1.get("skipped"):
        lines += ["", f"Stage 1 was skipped: {s1['why']}. The product embedding is the text embedding of the base "
                  f"encoder (identity projection), so the base encoder row is the off-the-shelf encoder."]
    lines += ["", "## Data", ""]
    for part in ("train", "eval"):
        h = human.get(part)
        if h and "rows" in h:
            lines.append(f"- {part} grades `{h['file']}`: {h['rows']} rows, {h['queries']} queries; "
                         f"{h['unknown_product_rows']} rows name a product not in the catalog (dropped"
                         + (f", e.g. {', '.join(h['unknown_product_examples'])}" if h['unknown_product_examples'] else "")
                         + ")")
    if "train_rows_dropped_eval_query" in human:
        lines.append(f"- train rows dropped because their query is an evaluation query: "
                     f"{human['train_rows_dropped_eval_query']}")
    if labels:
        lines.append(f"- labels: {labels['graded_pairs']} pairs graded by the labeler "
                     f"({labels.get('pairs_per_second')} pairs/s; {labels.get('labels_per_labeler_pair')}x the "
                     f"{labels.get('labeler_train_pairs')} human pairs it learned from, "
                     f"{labels.get('labels_per_human_pair')}x all {labels['seed_grades']} human train pairs); "
                     f"labeler on held-out train queries: accuracy {labels.get('labeler_heldout_accuracy')}, "
                     f"quadratic kappa {labels.get('labeler_heldout_kappa')}")
    lines.append("")
    return "\n".join(lines)


def step_eval_shop(r: Run) -> dict:
    from ..data.catalog import Catalog
    from ..evaluation.baselines import rank
    from ..evaluation.metrics import evaluate_judged
    from ..index import set_search_defaults
    from ..io import write_json, write_text

    path = r.path("labels", "eval.parquet")
    if not path.exists():
        r.log("no evaluation-only grades ([grades] eval or eval_fraction): nothing to score; the trained model ships")
        return {"shipped": "trained", "headline": {}}
    ev = pd.read_parquet(path)
    catalog = Catalog.open(r.path("catalog"))
    queries = ev.drop_duplicates("qid")[["qid", "query"]]
    judged = {qid: dict(zip(g["product_id"].tolist(), g["grade"].astype(int).tolist()))
              for qid, g in ev.groupby("qid")}
    systems, results = {}, {}
    scorers = shop_systems(r, catalog)
    for scorer in scorers:
        r.log(f"ranking {len(queries)} evaluation queries with {scorer.name}")
        ranked = rank(scorer, queries["query"].tolist())
        res = evaluate_judged(dict(zip(queries["qid"], ranked)), judged)
        systems[scorer.name] = res["overall"]
        results.setdefault("n_recall_queries", res["n_recall_queries"])
        results.setdefault("n_ndcg_queries", res["n_ndcg_queries"])
    results.update(n_queries=len(judged), n_pairs=int(len(ev)), products=len(catalog), systems=systems)
    base, trained = systems[BASE]["ndcg@10"], systems[TRAINED]["ndcg@10"]
    shipped, warning = "trained query encoder (Stage 2)", None
    if trained < base:
        warning = (f"training made NDCG@10 worse ({trained:.4f} < {base:.4f} for the base encoder)"
                   + ("; the base encoder ships in model/ instead" if r.cfg.eval.guard else ""))
        r.log(f"warning: {warning}")
        if r.cfg.eval.guard:
            ship_base(r)
            shipped = "base encoder (training made it worse)"
    hybrid, why = choose_default_search(r, systems, TRAINED if shipped.startswith(TRAINED) else BASE)
    set_search_defaults(r.path("index"), hybrid, why)
    r.log(f"the index searches {'hybrid (BM25 + vectors)' if hybrid else 'dense (vectors only)'} by default: {why}")
    if hybrid:
        shipped += " + BM25, RRF: the index's default search"
    first_stage = HYBRID if hybrid else (TRAINED if shipped.startswith(TRAINED) else BASE)
    _, rerank = rerank_first_stage(r, scorers, first_stage, catalog, queries, judged, systems)
    if rerank["shipped"]:
        shipped += f", re-ranked top {rerank['depth']} by the labeler (model/reranker)"
    results.update(shipped=shipped, warning=warning, default_search={"hybrid": hybrid, "why": why},
                   rerank=rerank)
    write_json(r.path("report", "report.json"), results)
    write_text(r.path("report", "report.md"), shop_report(r, results, shipped, warning))
    return {"report": str(r.path("report", "report.md")), "headline": systems, "shipped": shipped,
            "default_search": results["default_search"], "rerank": rerank,
            **({"warning": warning} if warning else {})}


def step_eval(r: Run) -> dict:
    """The report on the evaluation-only queries: BM25, MiniLM, the base encoder and the trained one."""
    if r.cfg.eval.kind != "fashion-queries":
        return step_eval_shop(r)
    from ..evaluation.report import run_eval
    from ..settings import dataset_dir

    paths = run_eval(r.path("model"), r.path("catalog"), r.path("report"),
                     queries_path=dataset_dir("fashion-queries") / "dev_queries.jsonl",
                     embeddings_dir=r.path("embeddings"), heldout_only=True,
                     cache_dir=r.path("cache", "eval"), log=r.log)
    return {"report": str(paths["markdown"]), "headline": paths["headline"]}


STEPS = [("import", step_import), ("stage1", step_stage1), ("embed", step_embed), ("labels", step_labels),
         ("stage2", step_stage2), ("photos", step_photos), ("index", step_index), ("eval", step_eval)]


def run_steps(r: Run) -> Run:
    """Run every step not yet recorded as done, in order; record each as it finishes."""
    from ..io import write_json

    t_all = time.time()
    r.forget_changed()
    for i, (name, fn) in enumerate(STEPS, 1):
        if r.done(name):
            r.log(f"[{i}/{len(STEPS)}] {name}: done before ({r.record['steps'][name]['seconds']:.0f}s), reused")
            continue
        r.log(f"[{i}/{len(STEPS)}] {name}: {fn.__doc__.splitlines()[0]}")
        t0 = time.time()
        facts = fn(r)
        r.finish(name, time.time() - t0, **facts)
        r.log(f"[{i}/{len(STEPS)}] {name}: finished in {time.time() - t0:.0f}s")
    r.record["total_seconds_this_run"] = round(time.time() - t_all, 1)
    r.record["total_seconds_all_steps"] = round(sum(s["seconds"] for s in r.record["steps"].values()), 1)
    r.record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(r.record_path, r.record)
    return r


def output_dir(cfg: PipelineConfig) -> Path:
    from ..settings import runs_dir

    return Path(cfg.out) if cfg.out else runs_dir() / cfg.name


def run_pipeline(cfg: PipelineConfig, out: str | Path | None = None, fresh: bool = False, log=print) -> Run:
    """`dashclip train`: every step of the config into its output dir (resumable, recorded in pipeline.json)."""
    from ..io import prepare_output_dir

    work = Path(out) if out else output_dir(cfg)
    check_inputs(cfg)
    inputs = [cfg.resolve(p) for p in (cfg.catalog.source, cfg.grades.train, cfg.grades.eval, cfg.queries.log) if p]
    prepare_output_dir(work, "pipeline", inputs=[p for p in inputs if p.exists()], check_only=True,
                       is_kind=lambda p: (p / "pipeline.json").exists())
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    r = Run(work, cfg, cfg.name, log, "pipeline.json", {"config": cfg.to_dict()})
    return run_steps(r)
