"""Stage 2: align a query encoder to the catalog with the QCC loss (`dashclip align`).

The query encoder starts as a copy of the Stage 1 text tower and its projection
(`model.add_query_encoder()`), and is trained so that a shopper query lands next to the products it
wants in the Stage 1 product embedding space. The product side is frozen by default: the fused
product embeddings are computed once (an embeddings dir from `dashclip embed-catalog`, or
`model.encode_product`) and looked up by row.

Training data are grades (`dashclip.labeling`): seed grades plus model-graded pairs kept above a
confidence threshold. A batch is built product-first (see `GradeTable.sample_batch`):

    1. B (query, product) positives, the queries drawn uniformly (so a query with 7,000 relevant
       products does not drown one with 5), a relevant product for each, all products distinct;
    2. for every product, up to `positives_per_product - 1` more of its relevant queries,
       `graded_negatives` of its graded-0 queries and `hard_negatives` mined ones (the training
       queries most similar to it that are graded 0 or unlabeled for it);
    3. the bank is the union of those queries; the [B, Q] grade matrix says, per product, which bank
       queries are relevant (any known grade >= 1, sampled for it or not: never a negative),
       graded 0, or unlabeled (an in-batch negative).

The examples of an epoch are positive (query, product) pairs, up to `pairs_per_query` per query;
a batch's extra sampling is seeded by its example indices, and hard negatives are mined once with
the starting encoder, so a resumed run rebuilds exactly the batches the original run saw.

The data side (grade selection, the grade table, batches, the hard-negative miner) is
`training/align_data.py`; this module is the model side and the task.

The generic machinery (checkpoints, --resume, AMP, DDP via torchrun, progress, metrics.jsonl) is
the shared loop in `training/loop.py`; this module is the Stage 2 task it runs (`AlignTask`). Under
DDP each rank scores its own products against its own query bank (no cross-rank gather: the grade
matrix of a gathered bank would need every rank's grades) and DDP averages the gradients.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..losses.distill import SimilarityDistillation
from ..losses.l2sp import L2SP
from ..losses.qcc import VARIANTS, QCCLoss
from ..models.model import QUERY_ENCODER_PREFIXES
from .align_data import GradeTable, HardNegativeMiner, read_grades, select_grades

@dataclass
class AlignConfig:
    """Everything about Stage 2 that is not the generic loop (batch size, steps, lr, AMP, ... live in
    `LoopConfig`: one home for each)."""

    # Queries per product in a batch's bank. One of each kind: a step's cost grows with the bank, and
    # two of each (a bank of ~290 queries, not ~145) bought NDCG@10 0.832 instead of 0.824 for 1.25x the
    # time (measured 2026-12-01 on 2 EPYC cores: 6,000 synthesized queries graded by their readings,
    # 400 steps, the 40 held-out queries).
    positives_per_product: int = 1      # sampled relevant queries per product (the first is its anchor pair)
    graded_negatives: int = 1           # graded-0 queries per product
    hard_negatives: int = 1             # mined queries per product (graded 0 or unlabeled, most similar)
    variant: str = "qcc"                # "qcc" | "symmetric" | "graded": see losses/qcc.py
    grade1_weight: float | None = None  # None: 0 for qcc/symmetric (grade 1 masked), 1/3 for graded
    temperature: float = 0.05
    learnable_temperature: bool = False
    min_confidence: float = 0.5         # model-graded pairs below this are dropped
    max_length: int = 32                # query tokens
    pairs_per_query: int = 32           # positive pairs per query per epoch (broad queries are subsampled)
    unfreeze_product: bool = False      # also train the fusion layers and projections
    # Keep the lowest `freeze_query_layers` parts of the query tower as they start: 1 is its token
    # embeddings, 2 adds its first transformer layer, and so on (0: train it all). A frozen part costs
    # no backward pass and no optimizer state.
    freeze_query_layers: int = 0
    # WiSE-FT (Wortsman et al. 2022): the saved query encoder is start + wise_alpha * (trained - start).
    # Training on synthesized queries teaches the shop's vocabulary but wears away some of what the text
    # tower knew about phrasing the vocabulary does not cover; averaging the weights keeps both (1.0: the
    # trained weights). Chosen on the 80 dev queries that are not held out, with a run that never trained
    # on them (6,000 synthesized queries, grades from their readings, 400 steps): NDCG@10 0.781 at 0.5,
    # 0.805 at 0.75, 0.792 at 1.0. (With attribute-only synthesized queries, before the vocabulary, 0.5
    # had won on the held-out queries: 0.598 vs 0.556 at 1.0.)
    wise_alpha: float = 0.75
    # L2-SP (losses/l2sp.py): weight of sum ||theta - theta_start||^2 over the trained query-encoder weights,
    # a pull toward the text tower during training (0: off). Measured on the phrasing protocol
    # (benchmarks/results/stage2_protocol_levers.md).
    l2sp_weight: float = 0.0
    # Similarity distillation (losses/distill.py): weight of a term keeping the similarities among each batch's
    # queries and `distill_words` English words (the tokenizer's whole words, drawn per step) as they were
    # under the starting query encoder (0: off). The words carry what the pretrained encoder knew beyond
    # the training queries' phrasing. Measured on the phrasing protocol (stage2_protocol_levers.md).
    distill_weight: float = 0.0
    distill_words: int = 128
    # Save a query spelling corrector (models/speller.py) with the model, built from the catalog's words
    # and the training queries' words: "jaket" is searched as "jacket".
    spelling: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown QCC variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("positives_per_product", "max_length", "pairs_per_query"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("graded_negatives", "hard_negatives", "freeze_query_layers", "l2sp_weight", "distill_weight",
                     "distill_words"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.wise_alpha <= 1.0:
            raise ValueError(f"wise_alpha must be in [0, 1], got {self.wise_alpha}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Model side


class QueryAligner(nn.Module):
    """What the training loop trains: the DashCLIP model, of which only the query encoder (and, with
    `unfreeze_product`, the fusion layers and projections) is trainable, and the QCC loss, whose
    temperature may be learnable. The frozen product table is a non-persistent buffer, so it moves
    to the device with the module but stays out of checkpoints."""

    def __init__(self, model: nn.Module, loss_fn: QCCLoss, product_vectors: torch.Tensor,
                 product_inputs: dict | None = None, l2sp_weight: float = 0.0, distill_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        # made after the model is locked for Stage 2: it holds the weights that train, as they start
        self.l2sp = L2SP({n: p for n, p in model.named_parameters() if p.requires_grad}, l2sp_weight) \
            if l2sp_weight > 0 else None
        self.distill = SimilarityDistillation(distill_weight) if distill_weight > 0 else None
        self.register_buffer("product_vectors", product_vectors.float(), persistent=False)
        self.product_inputs = product_inputs   # cached tower outputs, only for unfreeze_product
        # the starting encoder's vectors of the training queries and the distillation words (set_teacher)
        self.register_buffer("teacher_queries", torch.zeros(0), persistent=False)
        self.register_buffer("teacher_words", torch.zeros(0), persistent=False)

    @torch.no_grad()
    def set_teacher(self, query_vectors: np.ndarray, words: tuple | None = None) -> None:
        """The frozen teacher of the similarity distillation, computed once before training: the training
        queries' vectors under the starting encoder, and the distillation words (ids, mask) encoded now."""
        self.teacher_queries = torch.from_numpy(query_vectors)
        if words is not None:
            self.teacher_words = torch.from_numpy(encode_query_tokens(self, *words))

    def encode_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.project_query(self.model.query_features(input_ids, attention_mask))

    def product_embeddings(self, rows: torch.Tensor) -> torch.Tensor:
        if self.product_inputs is None:
            return self.product_vectors[rows]
        return unfrozen_product_embeddings(self.model, self.product_inputs, rows)


def cache_product_inputs(model: nn.Module, product_ids, embeddings_dir) -> dict:
    """What `unfreeze_product` needs to recompute product embeddings with trainable fusion and
    projections: the catalog the embeddings were made from (recorded in their meta.json) and, per
    product-table row, its catalog row. The frozen towers run per batch; their outputs are not cached
    (for a 44k catalog they would take gigabytes)."""
    from ..data.catalog import Catalog
    from ..models.embeddings import load_embeddings

    if embeddings_dir is None:
        raise ValueError("--unfreeze-product needs --embeddings (their meta.json names the catalog)")
    meta = load_embeddings(embeddings_dir).meta
    if not meta.get("catalog_dir"):
        raise ValueError(f"{embeddings_dir}: meta.json does not name its catalog_dir; re-run `dashclip embed-catalog`")
    catalog = Catalog.open(meta["catalog_dir"])
    row_of = catalog.row_of
    return {"catalog": catalog, "texts": catalog.product_texts(),
            "catalog_rows": np.array([row_of[pid] for pid in product_ids], dtype=np.int64)}


def unfrozen_product_embeddings(model: nn.Module, inputs: dict, rows: torch.Tensor) -> torch.Tensor:
    """Product embeddings of table `rows`: frozen towers without gradients, then the trainable
    fusion and projections with them."""
    from ..models.embeddings import _product_images

    cat_rows = inputs["catalog_rows"][rows.cpu().numpy()]
    images, _ = _product_images(inputs["catalog"], cat_rows)
    device = next(model.parameters()).device
    tok = model.tokenize([inputs["texts"][r] for r in cat_rows])
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    with torch.no_grad():
        patches, _ = model.image_features(model.preprocess(images).to(device))
        tokens, _ = model.text_features(ids, mask)
    return model.project_fused(model.fuse(tokens, mask, patches))


class AlignTask:
    """Stage 2 as a task of the shared training loop (`training/loop.py`)."""

    def __init__(self, table: GradeTable, config: AlignConfig, token_ids: torch.Tensor,
                 token_mask: torch.Tensor, miner: HardNegativeMiner | None = None, evaluator=None,
                 word_tokens: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.table, self.config = table, config
        self.examples = table.examples(config.pairs_per_query, config.seed)
        self.token_ids, self.token_mask = token_ids, token_mask
        self.word_ids, self.word_mask = word_tokens if word_tokens is not None else (None, None)
        self.miner = miner
        self.evaluator = evaluator
        g1 = QCCLoss(variant=config.variant, grade1_weight=config.grade1_weight).grade1_weight
        self.positive_grades = (2, 1) if g1 > 0 else (2,)

    def train_size(self) -> int:
        return len(self.examples)

    def make_batch(self, indices: list[int]) -> dict:
        # Seeded by the examples themselves: the loop's order is a function of (seed, epoch), so a
        # resumed run rebuilds the very same batches.
        rng = np.random.default_rng([self.config.seed, 2, *sorted(int(i) for i in indices)])
        b = self.table.make_batch(self.examples[np.asarray(indices, dtype=np.int64)], self.config, rng,
                                  self.miner, self.positive_grades)
        qi = torch.from_numpy(b.query_index)
        mask = self.token_mask[qi]
        width = max(1, int(mask.sum(1).max()))
        batch = {"product_rows": torch.from_numpy(b.product_rows), "input_ids": self.token_ids[qi][:, :width],
                 "attention_mask": mask[:, :width], "grades": torch.from_numpy(b.grades), "query_rows": qi}
        if self.word_ids is not None:
            n = min(self.config.distill_words, len(self.word_ids))
            wi = torch.from_numpy(np.sort(rng.choice(len(self.word_ids), n, replace=False)))
            wmask = self.word_mask[wi]
            wwidth = max(1, int(wmask.sum(1).max()))
            batch.update(word_rows=wi, word_ids=self.word_ids[wi][:, :wwidth], word_mask=wmask[:, :wwidth])
        return batch

    def loss(self, aligner: QueryAligner, batch: dict) -> tuple[torch.Tensor, dict]:
        q = aligner.encode_queries(batch["input_ids"], batch["attention_mask"])
        p = aligner.product_embeddings(batch["product_rows"])
        loss = aligner.loss_fn(p, q, batch["grades"])
        stats = {"products": float(len(p)), "queries": float(len(q)),
                 "temperature": float(aligner.loss_fn.temperature)}
        if aligner.l2sp is not None:
            penalty = aligner.l2sp()
            loss = loss + penalty
            stats["l2sp"] = float(penalty.detach())
        if aligner.distill is not None:
            student, teacher = [q], [aligner.teacher_queries[batch["query_rows"]]]
            if "word_rows" in batch:
                student.append(aligner.encode_queries(batch["word_ids"], batch["word_mask"]))
                teacher.append(aligner.teacher_words[batch["word_rows"]])
            term = aligner.distill(torch.cat(student), torch.cat(teacher))
            loss = loss + term
            stats["distill"] = float(term.detach())
        return loss, stats

    def evaluate(self, aligner: QueryAligner) -> dict:
        return self.evaluator(aligner.model) if self.evaluator is not None else {}

    def train_mode(self, aligner: QueryAligner) -> None:
        # Frozen parts stay in eval mode (no dropout noise, no BatchNorm drift); trained parts train.
        aligner.eval()
        for m in aligner.model.stage2_trainable(self.config.unfreeze_product):
            m.train()


# ----------------------------------------------------------------------------------------------
# The whole stage


def tokenize_queries(model: nn.Module, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [N, L] of every query, computed once (queries are short)."""
    tok = model.tokenize(list(texts), max_length=max_length)
    return tok["input_ids"], tok["attention_mask"]


@torch.no_grad()
def encode_query_tokens(aligner: QueryAligner, ids: torch.Tensor, mask: torch.Tensor,
                        batch_size: int = 512) -> np.ndarray:
    out = []
    device = aligner.product_vectors.device
    for i in range(0, len(ids), batch_size):
        m = mask[i:i + batch_size]
        width = max(1, int(m.sum(1).max()))
        out.append(aligner.encode_queries(ids[i:i + batch_size, :width].to(device), m[:, :width].to(device))
                   .float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, aligner.product_vectors.shape[1]), np.float32)


def load_product_vectors(model: nn.Module, embeddings_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, fused vectors) from an embeddings dir, refusing one made by another model."""
    from ..models.embeddings import load_embeddings

    emb = load_embeddings(embeddings_dir, model_id=model.model_id, kind="fused")
    return np.asarray(emb.ids), np.asarray(emb.vectors["fused"], dtype=np.float32)


def query_encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the query encoder's weights (the start point for `interpolate_query_encoder`)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(QUERY_ENCODER_PREFIXES)}


@torch.no_grad()
def interpolate_query_encoder(model: nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """In place: query encoder weights = start + alpha * (current - start) (WiSE-FT weight averaging)."""
    for k, v in model.state_dict().items():
        if k in start and v.is_floating_point():
            v.copy_(torch.lerp(start[k].to(v.device, v.dtype), v, alpha))


def distillation_words(model: nn.Module) -> list[str]:
    """The English words the similarity distillation draws from: the tokenizer's whole words of 3 letters or
    more (about 20,000 for BERT's uncased vocabulary), sorted so a run draws the same ones."""
    from ..models.speller import tokenizer_words

    return sorted(w for w in tokenizer_words(model.tokenizer) if len(w) >= 3)


def build_query_speller(model: nn.Module, query_texts: list[str], embeddings_dir=None):
    """The spelling corrector of the aligned model: the words of the catalog the product embeddings
    were made from (their meta.json names it) and of the training queries."""
    from ..models.speller import QuerySpeller, tokenizer_words

    texts: list[str] = []
    if embeddings_dir is not None:
        from ..data.catalog import Catalog
        from ..models.embeddings import load_embeddings

        catalog_dir = (load_embeddings(embeddings_dir).meta or {}).get("catalog_dir")
        if catalog_dir and Path(catalog_dir).exists():
            texts = Catalog.open(catalog_dir).product_texts()
    return QuerySpeller.build(texts, query_texts, known=tokenizer_words(model.tokenizer))


def align(model_dir: str | Path, grades, out_dir: str | Path, config: AlignConfig | None = None,
          loop: "LoopConfig | None" = None, embeddings_dir: str | Path | None = None,
          exclude_queries=(), evaluator=None, model: nn.Module | None = None,
          product_table: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Train the query encoder of the model in `model_dir` on `grades`; write `out_dir/model`.

    Product embeddings come from `embeddings_dir` (`dashclip embed-catalog`) or, when given,
    `product_table` = (ids, fused vectors). `exclude_queries` are query texts that must never be
    trained on (the held-out evaluation queries). `evaluator(model) -> dict` runs at each epoch end.
    Returns the summary also written to `out_dir/align.json`.
    """
    from ..io import atomic_dir, write_json
    from ..losses.gather import rank
    from .loop import LoopConfig, train

    config = config or AlignConfig()
    loop = loop or LoopConfig()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not loop.find_unused_parameters:
        # The copied text tower may hold parameters the query path never uses (e.g. a BERT pooler).
        loop = dataclasses.replace(loop, find_unused_parameters=True)
    out_dir = Path(out_dir)
    if model is None:
        import dashclip

        model = dashclip.load(model_dir)
    if getattr(model, "query_tower", None) is None:
        model.add_query_encoder()
    start = query_encoder_state(model) if config.wise_alpha < 1.0 else None
    if product_table is None:
        if embeddings_dir is None:
            raise ValueError("product embeddings are needed: pass --embeddings (from `dashclip embed-catalog`)")
        product_table = load_product_vectors(model, embeddings_dir)
    product_ids, product_vectors = product_table

    selected, select_stats = select_grades(read_grades(grades), config.min_confidence, set(exclude_queries))
    loss_fn = QCCLoss(config.temperature, config.learnable_temperature, config.variant, config.grade1_weight)
    positive_grades = (2, 1) if loss_fn.grade1_weight > 0 else (2,)
    table = GradeTable.build(selected, product_ids, positive_grades)

    model.lock_for_stage2(config.unfreeze_product, config.freeze_query_layers)
    product_inputs = None
    if config.unfreeze_product:
        product_inputs = cache_product_inputs(model, product_ids, embeddings_dir)
    aligner = QueryAligner(model, loss_fn, torch.from_numpy(np.array(product_vectors, dtype=np.float32)), product_inputs,
                           config.l2sp_weight, config.distill_weight)

    ids, mask = tokenize_queries(model, table.queries, config.max_length)
    start_vectors = None    # the queries under the starting encoder: what the miner and the teacher both read
    if config.hard_negatives or config.distill_weight > 0:
        aligner.eval()
        start_vectors = encode_query_tokens(aligner, ids, mask)
    miner = HardNegativeMiner(product_vectors, start_vectors) if config.hard_negatives else None
    words = None
    if config.distill_weight > 0:
        if config.distill_words > 0:
            words = tokenize_queries(model, distillation_words(model), 8)
            if len(words[0]) < 2:
                raise ValueError("distillation: the tokenizer holds no whole words to distil on; set distill_words 0")
        aligner.set_teacher(start_vectors, words)
    task = AlignTask(table, config, ids, mask, miner, evaluator, words)
    result = train(aligner, task, loop, out_dir)
    if start is not None:
        interpolate_query_encoder(model, start, config.wise_alpha)
    if config.spelling:
        model.query_speller = build_query_speller(model, table.queries, embeddings_dir)

    summary = {"model_dir": str(model_dir), "grades": select_stats, "table": table.stats,
               "align": config.to_dict(), "loop": {k: v for k, v in vars(loop).items()},
               "train_examples": task.train_size(), "steps": result.step, "epochs": result.epoch,
               "seconds": round(result.seconds, 1), "last": result.last, "evals": result.evals,
               "temperature": float(loss_fn.temperature)}
    if rank() == 0:
        with atomic_dir(out_dir / "model") as tmp:
            model.save(tmp)
        write_json(out_dir / "align.json", summary)
    return summary
