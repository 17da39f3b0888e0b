"""Photo alignment: teach a photo-query head to put a shopper's photo next to its product (`dashclip align-photos`).

Stage 2 aligns typed queries to the product embedding space; this does the same for photos. The product
side stays frozen (the fused product embeddings of an embeddings dir, as the index holds them); a photo
head over the frozen image tower (`model.add_photo_encoder`, `towers.PhotoHead`: the image projection plus
a residual MLP that starts at zero) is trained with the image-text contrastive loss (`losses.itc`) on
(catalog photo, its product's embedding) pairs: every image of a product, the primary one and any extra
photos of the training splits (in-store photos, for example). Several photos of one product in a batch are
not negatives of each other (same-id masking). Beside it a cosine term (`regression_weight` * (1 - cos))
pulls each photo onto its product's embedding: the contrastive loss alone learns to tell a product from its
near-twins (other shirts) and spreads photos away from them, while a photo search should land among products
like the one shown. Measured (photo_search.md, 2026-12-07): weight 10 and 24 epochs raised fashion P@10 of
the same articleType from 0.813 to 0.841 on 1,000 validation photos (test 0.821 -> 0.838), and grocery fine
top-1 / top-5 from 0.711 / 0.938 to 0.722 / 0.953; the photo's own product in its top 10 fell (0.36 -> 0.26).
Such a head's cosines spread wider than the query encoder's, which is why photo + words queries mix the two
in units of each one's spread (`ranking.mix_photo_and_words`).

`tower_lr` > 0 also gives the photo side its own copy of the image tower's last stage (`add_photo_encoder(
tower_top=True)`, `towers.TowerTop`: EfficientNet-Lite's last MBConv block and head conv), trained with the head
at that lr, BatchNorm statistics kept: the frozen tower's pooled features cap what any head on them can do
(fashion P@10 stays at 0.84 +- 0.01 whatever the head, photo_tower_probe.md), while a trained top re-weighs
what the tower saw before it is pooled. The shared tower and the product side still do not move (the top is a
copy, outside the model id); its inputs, the trunk's output, are cached once like the pooled features (a "trunk"
cache).

`image_size` reads photos at another side than the catalog's images (a shopper's photo is larger than a
thumbnail, and the tower tells product types apart better near its pretraining size); the head keeps it, so
serving reads photos the same way. The image tower is frozen, so its pooled features are computed once
through the Stage 1 feature cache (`models.feature_cache`, keyed by that size too) and the head trains on
them in seconds to minutes; the run goes through the shared loop (`training/loop.py`: checkpoints, --resume,
progress, metrics.jsonl). Products held out by id
(`heldout_frac`, `seed`: pass Stage 1's, so its held-out products stay unseen) are never trained on; after
every epoch their photos, and any photos of the `eval_split`, are searched against all products
(recall@1 and @10 of the photo's own product).

The model's id does not change (the head is outside it, as the Stage 2 query encoder is), so the aligned
model serves the index it was aligned to.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..losses.itc import itc_loss
from ..models.config import check_photo_size
from .data import heldout_mask

PHOTO_ALIGN_FILE = "photo_align.json"


@dataclass
class PhotoAlignConfig:
    # The defaults are the measured recipe (photo_search_tower.md): a tower top at lr 3e-4, 10 epochs of 256 photos.
    # A head alone (tower_lr 0) was measured at 24 epochs of 512 (photo_search.md).
    epochs: int = 10
    batch_size: int = 256           # photos per step (capped at the number of training photos)
    lr: float = 1e-3
    weight_decay: float = 0.01
    hidden: int = 1024              # the photo head's MLP width
    image_size: int | None = None   # read photos at this side (None: the model's config.image_size)
    temperature: float = 0.05       # start of the learnable contrastive temperature
    regression_weight: float = 10.0  # weight of the cosine term (1 - cos(photo, its product)); 0: contrastive only
    # > 0: the photo side gets its own copy of the image tower's last stage, trained at this lr with the head
    # (`add_photo_encoder(tower_top=True)`), where the tower has one (a CNN; a ViT tower trains the head alone, and
    # the run's summary says so); 0: the head alone, on the shared tower's pooled features (about 5x less training
    # compute, and on a catalog whose Stage 1 cached its features at the photo size, no tower pass)
    tower_lr: float = 3e-4
    heldout_frac: float = 0.1       # products never trained on (pass Stage 1's, with its seed)
    seed: int = 0
    train_splits: tuple = ("train",)   # extra photos of these splits train (images without a split always do)
    eval_split: str | None = "val"  # extra photos of this split are evaluated after each epoch (if any)

    def __post_init__(self):
        if not 0.0 <= self.heldout_frac < 1.0:
            raise ValueError(f"heldout_frac must be in [0, 1), not {self.heldout_frac}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, not {self.hidden}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.regression_weight < 0:
            raise ValueError(f"regression_weight must be >= 0, not {self.regression_weight}")
        if self.tower_lr < 0:
            raise ValueError(f"tower_lr must be >= 0 (0: the tower stays shared and frozen), not {self.tower_lr}")
        check_photo_size(self.image_size)
        self.train_splits = tuple(self.train_splits)

    def loop(self, **options):
        """The shared loop's settings for this run (epochs, batch, lr, ... from here); `options` are the
        run's own (resume, progress, device)."""
        from .loop import LoopConfig

        return LoopConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                          seed=self.seed, warmup_steps=0, log_every=5, **options)

    def tower_lr_on(self, loop):
        """`loop` with the tower top's own lr (`tower_lr`, as a scale of the loop's lr), whatever loop is given."""
        if not self.tower_lr:
            return loop
        return dataclasses.replace(loop, lr_scales={**(loop.lr_scales or {}), "model.photo_tower.": self.tower_lr / loop.lr})


class PhotoAligner(nn.Module):
    """What the loop trains: the model (only its photo side trainable), a learnable temperature, and the
    frozen product table (a non-persistent buffer: it stays out of checkpoints)."""

    def __init__(self, model: nn.Module, product_vectors: torch.Tensor, temperature: float):
        super().__init__()
        self.model = model
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1.0 / temperature))))
        self.register_buffer("product_vectors", product_vectors.float(), persistent=False)


@dataclass
class PhotoSet:
    """Photos as rows of an image-feature cache (the model's `photo_feature_part`: pooled [C], or the trunk's
    [C, h, w]), each with the product-table row it shows. Features are read per batch from the cache's memory
    map: a trunk cache of 1M photos at 224 px is 19 GB, more than a trainer should hold."""
    source: object              # an ImageFeatureCache, or anything with `photo_features(indices) -> Tensor`
    image_rows: np.ndarray      # [N] each photo's row in `source`
    product_rows: np.ndarray    # [N] int64

    def __len__(self) -> int:
        return len(self.product_rows)

    def features(self, indices) -> torch.Tensor:
        """float32 features of photos `indices` (positions in this set)."""
        return self.source.photo_features(self.image_rows[np.asarray(indices, dtype=np.int64)]).float()


@torch.no_grad()
def photo_recall(model: nn.Module, photos: PhotoSet, product_vectors: torch.Tensor, batch_size: int = 1024) -> dict:
    """recall@1 / @10 of each photo's own product among all products (photo head -> product embeddings)."""
    if len(photos) == 0:
        return {}
    device = product_vectors.device
    ranks = []
    for i in range(0, len(photos), batch_size):
        q = model.embed_photo_features(photos.features(np.arange(i, min(i + batch_size, len(photos)))).to(device))
        sims = q @ product_vectors.t()
        rows = torch.from_numpy(photos.product_rows[i:i + batch_size]).to(device)
        own = sims.gather(1, rows[:, None])
        ranks.append((sims > own).sum(1).cpu())
    r = torch.cat(ranks)
    return {"recall@1": float((r < 1).float().mean()), "recall@10": float((r < 10).float().mean()),
            "photos": float(len(r))}


def photo_loss(photos: torch.Tensor, products: torch.Tensor, rows: torch.Tensor, logit_scale: torch.Tensor,
               regression_weight: float) -> tuple[torch.Tensor, dict]:
    """The photo head's loss on unit vectors: contrastive + `regression_weight` * (1 - cos(photo, its
    product)), and its parts for the log. `rows`: each photo's product row."""
    # ids = product rows: two photos of one product are not each other's negatives
    contrastive, _ = itc_loss(photos, products, rows, logit_scale)
    # both sides are unit vectors: 1 - cos is half their squared distance
    regression = (1.0 - (photos * products).sum(-1)).mean()
    loss = contrastive + regression_weight * regression
    return loss, {"contrastive": float(contrastive.detach()), "regression": float(regression.detach()),
                  "temperature": float(logit_scale.detach().exp().reciprocal())}


class PhotoAlignTask:
    """Photo alignment as a task of the shared training loop."""

    def __init__(self, train: PhotoSet, evals: dict[str, PhotoSet], regression_weight: float):
        self.train, self.evals, self.regression_weight = train, evals, regression_weight

    def train_size(self) -> int:
        return len(self.train)

    def make_batch(self, indices: list[int]) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        return {"features": self.train.features(idx), "rows": torch.from_numpy(self.train.product_rows[idx])}

    def loss(self, aligner: PhotoAligner, batch: dict) -> tuple[torch.Tensor, dict]:
        photos = aligner.model.embed_photo_features(batch["features"])
        return photo_loss(photos, aligner.product_vectors[batch["rows"]], batch["rows"], aligner.logit_scale,
                          self.regression_weight)

    def evaluate(self, aligner: PhotoAligner) -> dict:
        out = {}
        for name, photos in self.evals.items():
            out.update({f"{name}_{k}": v for k, v in photo_recall(aligner.model, photos, aligner.product_vectors).items()})
        return out

    def train_mode(self, aligner: PhotoAligner) -> None:
        aligner.eval()            # the frozen tower's features are cached; only the photo side trains
        for m in aligner.model.photo_encoder_modules():
            m.train()


def _photo_sets(model, catalog, product_ids: np.ndarray, cfg: PhotoAlignConfig, cache_dir, device,
                progress: bool) -> tuple[PhotoSet, dict[str, PhotoSet], dict]:
    """The training photos and the evaluation sets ("heldout": photos of held-out products; the
    eval_split's photos), their features (the model's `photo_feature_part`) from the feature cache."""
    from ..models.feature_cache import build_or_open

    images = catalog.images
    split = images["split"] if "split" in images else None
    no_split = split.isna() if split is not None else np.ones(len(images), dtype=bool)
    train_ok = no_split | (split.isin(cfg.train_splits) if split is not None else False)
    eval_ok = (split == cfg.eval_split) if (split is not None and cfg.eval_split) else np.zeros(len(images), bool)
    used = images[np.asarray(train_ok | eval_ok)].reset_index(drop=True)
    index = dataclasses.replace(catalog, images=used).image_index()
    row_of = {pid: i for i, pid in enumerate(product_ids.tolist())}
    table_row = np.array([row_of.get(pid, -1) for pid in catalog.products["id"].tolist()], dtype=np.int64)
    rows = table_row[index.pair_product]          # catalog row -> product-table row (-1: not embedded)
    cache = build_or_open(model, index.paths, cache_dir, device=device, show_progress=progress,
                          image_size=model.photo_size, part=model.photo_feature_part)   # as encode_photo reads them
    valid = np.asarray(cache.valid, dtype=bool)[index.pair_image] & (rows >= 0)
    held = heldout_mask(catalog.products["id"].tolist(), cfg.heldout_frac, cfg.seed)[index.pair_product]
    eval_paths = {str(catalog.image_path(rel)) for rel in images.loc[np.asarray(eval_ok), "image"].tolist()}
    is_eval = np.array([str(index.paths[i]) in eval_paths for i in index.pair_image], dtype=bool)

    def subset(mask) -> PhotoSet:
        sel = np.flatnonzero(mask)
        return PhotoSet(cache, index.pair_image[sel], rows[sel])

    train = subset(valid & ~held & ~is_eval)
    evals = {"heldout": subset(valid & held & ~is_eval)}
    if is_eval.any():
        evals[cfg.eval_split] = subset(valid & is_eval & ~held)
    stats = {"train_photos": len(train), "unreadable_or_not_embedded": int((~valid).sum()),
             "first_unreadable": list(cache.meta.get("first_errors", []))[:5],   # file: why, for the user
             **{f"{k}_photos": len(v) for k, v in evals.items()}}
    return train, {k: v for k, v in evals.items() if len(v)}, stats


def align_photos(model_dir: str | Path, catalog, embeddings_dir: str | Path, out_dir: str | Path,
                 config: PhotoAlignConfig | None = None, loop=None, cache_dir: str | Path | None = None,
                 model: nn.Module | None = None) -> dict:
    """Train a photo head for the model in `model_dir` on the photos of `catalog` against the product
    embeddings of `embeddings_dir` (made by this model); write `out_dir/model` and `out_dir/photo_align.json`.
    `cache_dir`: where the image-tower features are kept (default `out_dir/cache`); `loop` (default
    `config.loop()`): the shared loop's settings. Returns the summary."""
    from ..io import atomic_dir, write_json
    from ..losses.gather import rank
    from .align import load_product_vectors
    from .loop import pick_device, train

    config = config or PhotoAlignConfig()
    out_dir = Path(out_dir)
    if model is None:
        import dashclip

        model = dashclip.load(model_dir)
    product_ids, product_vectors = load_product_vectors(model, embeddings_dir)
    loop = loop or config.loop()
    device = pick_device(loop.device)
    # a new head, starting as the image projection (and a tower top starting as the tower's)
    tower_top = config.tower_lr > 0 and model.can_copy_tower_top
    model.add_photo_encoder(config.hidden, config.image_size, tower_top=tower_top)
    model.lock_for_photos()
    train_set, evals, stats = _photo_sets(model, catalog, np.asarray(product_ids), config,
                                          cache_dir or out_dir / "cache", device, loop.progress)
    if stats["train_photos"] < 2:
        raise ValueError(f"{catalog.root}: {stats['train_photos']} photos to train on; photo alignment needs "
                         "catalog images of products that are embedded and not held out")
    # a small catalog (a few thousand photos) still gets several steps per epoch
    loop = dataclasses.replace(loop, batch_size=min(loop.batch_size, stats["train_photos"]))
    if tower_top:
        loop = config.tower_lr_on(loop)
    aligner = PhotoAligner(model, torch.from_numpy(np.array(product_vectors, dtype=np.float32)),
                           config.temperature).to(device)
    task = PhotoAlignTask(train_set, evals, config.regression_weight)
    aligner.eval()
    start = task.evaluate(aligner)            # the image projection's answers, before any training
    result = train(aligner, task, loop, out_dir)
    summary = {"model_dir": str(model_dir), "embeddings": str(embeddings_dir), "catalog": str(catalog.root),
               "config": asdict(config), "loop": dict(vars(loop)), **stats, "steps": result.step,
               "tower_top": tower_top,
               **({} if tower_top or not config.tower_lr else {"tower_top_skipped": (
                   f"the {type(model.image_tower).__name__} image tower has no last stage to copy: the head alone")}),
               "epochs": result.epoch, "seconds": round(result.seconds, 1), "start": start,
               "evals": result.evals, "temperature": float(aligner.logit_scale.detach().exp().reciprocal())}
    if rank() == 0:
        model.to("cpu")
        with atomic_dir(out_dir / "model") as tmp:
            model.save(tmp)
        write_json(out_dir / PHOTO_ALIGN_FILE, summary)
    return summary

