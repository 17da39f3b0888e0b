"""Stage 1: continual pretraining of the product encoder on a catalog with ITC + ITM (BLIP-style).

    from dashclip.training.pretrain import PretrainConfig, pretrain
    result = pretrain("runs/catalogs/fashion", "runs/stage1", PretrainConfig(epochs=3, freeze_image=True))
    model = dashclip.load("runs/stage1/model")

Each (image, product text) pair of the training products is a positive. ITC aligns the projected
image and text embeddings (pairs of one product are not negatives); ITM teaches the fusion
module + binary head to tell matching pairs from hard negatives mined from ITC similarities.
Products are held out by id (`heldout_frac`); after every epoch the held-out text->image and
image->text Recall@1/5/10 and the held-out loss are logged to `<out>/metrics.jsonl`.
A third term (`product_weight`) trains the product embedding itself, the fused output projected,
contrasting it with the batch's text embeddings. A fourth (`image_product_weight`, off by default) makes
photos find products: the image embedding of each pair's photo against the product embeddings as the index
holds them (the fused output of the title and the product's primary image), with the product side held
fixed (stop-gradient), so only the image side moves and text -> product search is left as it was.

With `freeze_image`, the image tower is frozen and its features are computed once into a cache
(`feature_cache.py`), which is what makes a laptop CPU run practical (LiT). The training loop
itself (checkpoints, resume, AMP, DDP) is `loop.py`, shared with Stage 2.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.catalog import Catalog
from ..io import read_json, write_json
from ..losses import itc_loss, itm_loss
from ..losses.gather import local_slice
from ..settings import image_cache_dir
from .data import CatalogPairs
from ..models.feature_cache import ImageFeatureCache, build_or_open, load_images
from .loop import LoopConfig, TrainResult, init_distributed, pick_device, train

CONFIG_FILE = "pretrain_config.json"
MODEL_DIR = "model"
# Settings that define the run; resuming with a different value would not continue the same run.
_RUN_DEFINING = ("config", "image_size", "freeze_image", "heldout_frac", "seed", "batch_size",
                 "accum_steps", "itc_weight", "itm_weight", "product_weight", "product_against", "pretrained",
                 "image_product_weight")
# text_lr_scale is left out on purpose: it changes the optimizer's step, not what a checkpoint holds.


@dataclass
class PretrainConfig:
    config: str = "default"         # model config name (dashclip/model_configs) or JSON path
    pretrained: bool = True         # start the towers from their pretrained weights
    epochs: int = 3
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    freeze_image: bool = False      # freeze the image tower and cache its features (CPU-friendly)
    image_size: int | None = None   # override the config's image resolution
    amp: str | None = None          # "bf16" | "fp16"
    ckpt_every: int = 0
    resume: bool = False
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    # The product embedding (fused, projected) is what search uses, but ITC and ITM never touch its
    # projection. This term contrasts it with the batch's text embeddings (`product_against`), so it lands
    # in the same space, discriminative across products. Without it (0) the product embedding of the fashion
    # catalog was a random projection of the fused output: the Stage 2 query encoder trained on it
    # reached NDCG@10 0.537 on the held-out queries, below off-the-shelf MiniLM (0.650).
    product_weight: float = 1.0
    # What the product term contrasts the product embedding with: "text" (the batch's text embeddings),
    # "image", or "image+text" (the mean of both). Not the image by default: the fused encoder has seen
    # the product's own image, so matching it to that image's embedding is a shortcut (it learns to
    # copy the image's identity: the term fell to 0.29 while ITC was 2.6), and the product embedding
    # drifted from the text's meaning toward image identity (cosine with the text embedding 0.66).
    # Measured 2026-12-01 on the fashion catalog, 60 demo steps, 4,412 held-out products: "text" vs
    # "image+text": aisle probe 0.989 vs 0.981 (text embedding 0.991 vs 0.990), aisle 10-NN 0.930 vs
    # 0.911, t2i R@10 0.084 vs 0.085, the Stage 1 text tower as query encoder NDCG@10 0.665 vs 0.551,
    # Stage 2 on the same labels 0.738 vs 0.740. ITM is what teaches the fusion to read the image.
    product_against: str = "text"
    # Image -> product (search by photo): the image embedding of each pair's photo is contrasted with the
    # product embeddings of the batch as they are indexed (fused title + primary image), which are held
    # fixed (detached): the term moves only the image side (image_proj, and the image tower when it is not
    # frozen), toward the product space, and never pulls product embeddings toward photos, so text ->
    # product search keeps its quality. 0: off (the default; models trained before it are unchanged).
    # benchmarks/photo_search.py measures it.
    image_product_weight: float = 0.0
    # The pretrained text tower learns at lr * text_lr_scale (new layers at full lr), the usual way to
    # fine-tune a pretrained tower: it keeps more of what MiniLM knows about words, which the query
    # encoder (a copy of this tower) needs for phrasing the catalog never uses ("something to keep my
    # neck warm"). 1.0: one lr for everything.
    text_lr_scale: float = 0.2
    heldout_frac: float = 0.1
    max_steps: int | None = None
    seed: int = 0
    cache_dir: str | None = None    # default: <runs>/cache/image-features
    eval_loss_pairs: int = 2048     # held-out pairs the epoch-end loss is measured on
    eval_batch_size: int = 256
    progress: bool = True
    tensorboard: bool = False
    device: str | None = None
    # Threads that decode and preprocess the next batches while the model trains on this one (LoopConfig.
    # loader_workers). None: up to 8 on a GPU when images are decoded (not cached), else 0 (on 2 CPU cores
    # the threads only take cores from the model).
    loader_workers: int | None = None

    def __post_init__(self):
        parts = self.product_against.split("+")
        if any(x not in ("image", "text") for x in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"product_against must be text, image or image+text, not {self.product_against!r}")

    def loop_config(self) -> LoopConfig:
        return LoopConfig(epochs=self.epochs, batch_size=self.batch_size, accum_steps=self.accum_steps,
                          lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                          amp=self.amp, ckpt_every=self.ckpt_every, max_steps=self.max_steps,
                          seed=self.seed, resume=self.resume, progress=self.progress,
                          tensorboard=self.tensorboard, device=self.device,
                          # with product_weight 0 the fused projection is unused; ITM off too: the fusion
                          find_unused_parameters=True,
                          lr_scales={"text_tower.": self.text_lr_scale} if self.text_lr_scale != 1.0 else None,
                          loader_workers=self.loader_workers or 0)


@dataclass
class PretrainResult:
    model: torch.nn.Module
    out: Path
    train: TrainResult
    split: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------


def build_model(cfg: PretrainConfig):
    """The model to train: the named config, with `image_size` overridden when given. Seeded, so
    every DDP rank and every resume starts from the same weights."""
    from ..models.factory import create_model

    torch.manual_seed(cfg.seed)
    return create_model(cfg.config, pretrained=cfg.pretrained, image_size=cfg.image_size)


class ImageSource:
    """Image-tower inputs for a list of image indices: cached features, or pixels to run the tower on."""

    def __init__(self, model, pairs: CatalogPairs, cache: ImageFeatureCache | None):
        self.model, self.pairs, self.cache = model, pairs, cache

    def batch(self, image_indices) -> dict:
        if self.cache is not None:
            patches, pooled = self.cache.features(image_indices)
            return {"patches": patches, "pooled": pooled}
        paths = [self.pairs.image_paths[i] for i in image_indices]
        images, errors = load_images(paths)
        if errors:
            raise ValueError("could not load image " + next(iter(errors.values())))
        return {"pixels": self.model.preprocess(images)}


def image_features(model, batch: dict, frozen: bool):
    """(patches, pooled) from a batch made by `ImageSource`."""
    if "patches" in batch:
        return batch["patches"], batch["pooled"]
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        return model.image_features(batch["pixels"])


class PretrainTask:
    """The Stage 1 task for the shared loop (see `loop.Task`)."""

    def __init__(self, model, pairs: CatalogPairs, cfg: PretrainConfig, cache: ImageFeatureCache | None):
        self.model, self.pairs, self.cfg = model, pairs, cfg
        self.images = ImageSource(model, pairs, cache)
        self.train_idx = pairs.train_pairs()
        self.eval_rows = pairs.products_with_image(heldout=True)
        held = pairs.heldout_pairs()
        self.eval_loss_idx = held[np.random.default_rng(cfg.seed).permutation(len(held))[:cfg.eval_loss_pairs]]

    # -- the Task contract
    def train_size(self) -> int:
        return len(self.train_idx)

    def make_batch(self, indices) -> dict:
        return self.pair_batch(self.train_idx[np.asarray(indices)])

    def loss(self, model, batch, gather: bool = True):
        cfg = self.cfg
        patches, pooled = image_features(model, batch, cfg.freeze_image)
        tokens, text_pooled = model.text_features(batch["input_ids"], batch["attention_mask"])
        img = model.project_image(pooled)
        txt = model.project_text(text_pooled)
        itc, logits = itc_loss(img, txt, batch["ids"], model.logit_scale, gather=gather)
        stats = {"itc": itc.item(), "temperature": 1.0 / model.logit_scale.exp().item()}
        loss = cfg.itc_weight * itc
        fused_out = None   # the fusion encoder's output for the positive pairs, shared by both terms below
        if cfg.product_weight:
            fused_out = model.fuse(tokens, batch["attention_mask"], patches)
            fused = model.project_fused(fused_out)
            against = {"image": img, "text": txt}
            targets = cfg.product_against.split("+")
            product = sum(itc_loss(against[t], fused, batch["ids"], model.logit_scale, gather=gather)[0]
                          for t in targets) / len(targets)
            loss = loss + cfg.product_weight * product
            stats["product_itc"] = product.item()
        if cfg.image_product_weight:
            target = self.indexed_products(model, batch, tokens, fused_out)
            image_product = itc_loss(img, target, batch["ids"], model.logit_scale, gather=gather)[0]
            loss = loss + cfg.image_product_weight * image_product
            stats["image_product_itc"] = image_product.item()
        if cfg.itm_weight:
            own = local_slice(len(img)) if gather else slice(None)
            itm, itm_stats = itm_loss(model, tokens, batch["attention_mask"], patches,
                                      logits[own, own].detach(), batch["ids"], positive_fused=fused_out)
            loss = loss + cfg.itm_weight * itm
            stats.update(itm=itm.item(), **itm_stats)
        return loss, stats

    @staticmethod
    def indexed_products(model, batch: dict, tokens, fused_out) -> torch.Tensor:
        """The product embeddings of the batch's products as the index holds them (title fused with the
        product's primary image), detached. A pair whose photo is the primary image (every pair of a
        one-image catalog) reuses the fused output already computed; other photos (in-store photos,
        extra views) need the primary image's features (`primary_*`, see `pair_batch`)."""
        with torch.no_grad():
            primary = {k[len("primary_"):]: v for k, v in batch.items() if k.startswith("primary_")}
            if not primary and fused_out is not None:
                return model.project_fused(fused_out).detach()
            patches, _ = image_features(model, primary or batch, frozen=True)
            return model.project_fused(model.fuse(tokens.detach(), batch["attention_mask"], patches)).detach()

    def train_mode(self, model) -> None:
        model.train()
        if self.cfg.freeze_image:
            model.image_tower.eval()     # frozen BatchNorm statistics stay as cached

    def evaluate(self, model) -> dict:
        emb = encode_products(model, self.pairs, self.eval_rows, self.images, self.cfg.eval_batch_size,
                              kinds=("image", "text"))
        out = retrieval_metrics(emb["text"], emb["image"])
        losses = []
        for i in range(0, len(self.eval_loss_idx) - self.cfg.batch_size + 1, self.cfg.batch_size):
            batch = self.pair_batch(self.eval_loss_idx[i:i + self.cfg.batch_size], device=_device_of(model))
            losses.append(self.loss(model, batch, gather=False)[0].item())
        if losses:
            out["loss"] = float(np.mean(losses))
        return out

    # -- helpers
    def pair_batch(self, pair_indices: np.ndarray, device=None) -> dict:
        rows = self.pairs.pair_product[pair_indices]
        tok = self.model.tokenize([self.pairs.texts[r] for r in rows])
        images = self.pairs.pair_image[pair_indices]
        batch = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                 "ids": torch.from_numpy(rows.astype(np.int64)), **self.images.batch(images)}
        primary = self.pairs.primary_image[rows]
        if self.cfg.image_product_weight and (primary != images).any():
            # the image-product term's targets: the product embedding as indexed, from the primary image
            # (a product without a readable primary image falls back to the pair's own photo)
            primary = np.where(primary >= 0, primary, images)
            batch.update({f"primary_{k}": v for k, v in self.images.batch(primary).items()})
        return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_products(model, pairs: CatalogPairs, rows: np.ndarray, images: ImageSource,
                    batch_size: int = 256, kinds=("image", "text", "fused")) -> dict[str, np.ndarray]:
    """Normalised embeddings of products `rows` (each with its primary image): a dict with the
    requested kinds, "image" / "text" (the towers + projections) and "fused" (the product
    embedding: image-grounded text encoder + projection). float32 [len(rows), D]."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = {k: [] for k in kinds}
    for i in range(0, len(rows), batch_size):
        r = rows[i:i + batch_size]
        tok = model.tokenize([pairs.texts[j] for j in r])
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        batch = {k: v.to(device) for k, v in images.batch(pairs.primary_image[r]).items()}
        patches, pooled = image_features(model, batch, frozen=True)
        if "image" in out:
            out["image"].append(model.project_image(pooled))
        if "text" in out or "fused" in out:
            tokens, text_pooled = model.text_features(ids, mask)
            if "text" in out:
                out["text"].append(model.project_text(text_pooled))
            if "fused" in out:
                out["fused"].append(model.project_fused(model.fuse(tokens, mask, patches)))
    model.train(was_training)
    return {k: F.normalize(torch.cat(v).float(), dim=-1).cpu().numpy() for k, v in out.items()}


def retrieval_metrics(text_emb: np.ndarray, image_emb: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@k both ways when row i of `text_emb` and of `image_emb` are the same product:
    t2i_r@k = share of texts whose product's image is among the k nearest images (and i2t)."""
    sim = torch.from_numpy(text_emb) @ torch.from_numpy(image_emb).t()
    out = {}
    for name, s in (("t2i", sim), ("i2t", sim.t())):
        # rank of the correct item = number of items scored strictly higher
        correct = s.diagonal().unsqueeze(1)
        rank = (s > correct).sum(1)
        for k in ks:
            out[f"{name}_r@{k}"] = float((rank < k).float().mean())
    return out


# ----------------------------------------------------------------------------------------------


def _check_resume(out: Path, cfg: PretrainConfig) -> None:
    path = out / CONFIG_FILE
    if not path.exists():
        return
    saved = read_json(path)
    diff = {k: (saved.get(k), getattr(cfg, k)) for k in _RUN_DEFINING if saved.get(k) != getattr(cfg, k)}
    if diff:
        raise ValueError(f"{path}: --resume with settings that differ from the run being resumed: "
                         + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))


def pretrain(catalog: str | Path | Catalog, out: str | Path, cfg: PretrainConfig | None = None) -> PretrainResult:
    """Run Stage 1 on `catalog`; checkpoints, metrics.jsonl and the final model (`<out>/model`,
    open with `dashclip.load`) go to `out`. Under torchrun, every rank calls this."""
    import torch.distributed as dist

    cfg = cfg or PretrainConfig()
    out = Path(out)
    catalog = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
    rank, world, local_rank = init_distributed()
    if cfg.resume:
        _check_resume(out, cfg)
    device = pick_device(cfg.device, local_rank)

    model = build_model(cfg).to(device)
    pairs = CatalogPairs.from_catalog(catalog, cfg.heldout_frac, cfg.seed)
    cache = None
    if cfg.freeze_image:
        model.lock_image_tower()
        cache_root = Path(cfg.cache_dir) if cfg.cache_dir else image_cache_dir()
        if rank == 0:        # one rank builds, the others open what it wrote
            cache = build_or_open(model, pairs.image_paths, cache_root, device=device,
                                  show_progress=cfg.progress, amp=cfg.amp)
        if world > 1:
            dist.barrier()
        if rank != 0:
            cache = build_or_open(model, pairs.image_paths, cache_root, device=device, show_progress=False,
                                  amp=cfg.amp)
        pairs = pairs.without_images(~cache.valid)

    split = {"products": int(len(pairs.heldout)), "heldout_products": int(pairs.heldout.sum()),
             "train_pairs": int(len(pairs.train_pairs())), "heldout_pairs": int(len(pairs.heldout_pairs())),
             "skipped_image_rows": pairs.skipped}
    if cache is not None:
        split["image_cache"] = {"path": str(cache.path), "build_seconds": cache.meta.get("build_seconds"),
                                "failed_images": cache.meta.get("n_failed", 0)}
    if rank == 0:
        write_json(out / CONFIG_FILE, {**asdict(cfg), "split": split, "model_config": cfg.config,
                                       "world_size": world})
    task = PretrainTask(model, pairs, cfg, cache)
    loop = cfg.loop_config()
    if cfg.loader_workers is None and cache is None and device.type == "cuda":
        loop = dataclasses.replace(loop, loader_workers=min(8, max(1, (os.cpu_count() or 2) - 1)))
    result = train(model, task, loop, out)
    if rank == 0:
        model.save(out / MODEL_DIR)
    if world > 1:
        dist.barrier()
    return PretrainResult(model=model, out=out, train=result, split=split)
