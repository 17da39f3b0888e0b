"""DashCLIP: the product encoder (Stage 1) and the query encoder (Stage 2) in one module.

    pixels --image_tower--> (patches, pooled) --image_proj--> image embedding
    title  --text_tower---> (tokens, pooled)  --text_proj---> text embedding
    tokens + patches --fusion (title attends to image)--> fused --fused_proj--> PRODUCT EMBEDDING
    query  --query_tower--> pooled --query_proj--> query embedding   (after `add_query_encoder`)
    photo  --image_tower--> pooled --photo_proj--> photo-query embedding (after `add_photo_encoder`; the
           photo read at `photo_size`, which may be larger than the catalog images' image_size)
    photo  --image_tower.trunk--> --photo_tower--> pooled --photo_proj-->   (with `tower_top`: the photo
           side's own copy of the tower's last stage, trained for photos)

Every embedding is L2-normalised and lives in one `embed_dim`-dimensional space. The training code
calls the building blocks (`image_features`, `text_features`, `fuse`, `project_*`, `itm_logits`); users
call `encode_*`, which batch, run without gradients and return CPU float32 tensors.
Build one with `dashclip.models.factory.create_model`, open a saved one with `dashclip.load`.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, check_photo_size
from .preprocess import preprocess_images

# A fast (Rust) tokenizer sets its padding state on every call and refuses a second thread meanwhile
# ("Already borrowed"), so batches made in loader threads tokenize one at a time.
_TOKENIZE_LOCK = threading.Lock()
from .towers import PhotoHead, clone

# Parts of the product side that Stage 2 may unfreeze (`dashclip align --unfreeze-product`).
PRODUCT_TRAINABLE = ("fusion", "image_proj", "text_proj", "fused_proj")
QUERY_ENCODER_PREFIXES = ("query_tower.", "query_proj.")
# The photo-query head (`add_photo_encoder`): like the query encoder, a query-side part outside the model_id.
PHOTO_ENCODER_PREFIXES = ("photo_proj.", "photo_tower.")
# Config fields added after models were first saved, with the default older models load with.
LATER_CONFIG_FIELDS = {"dropout": None, "fusion_weights": "copy"}


class DashCLIP(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer, image_tower: nn.Module, text_tower: nn.Module,
                 fusion: nn.Module, image_proj: nn.Module, text_proj: nn.Module, fused_proj: nn.Module,
                 itm_head: nn.Module, logit_scale: torch.Tensor | None = None):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.image_tower, self.text_tower, self.fusion = image_tower, text_tower, fusion
        self.image_proj, self.text_proj, self.fused_proj = image_proj, text_proj, fused_proj
        self.itm_head = itm_head
        init = logit_scale if logit_scale is not None else torch.tensor(math.log(1 / config.init_temperature))
        self.logit_scale = nn.Parameter(torch.as_tensor(init, dtype=torch.float32).reshape(()))
        self.query_tower: nn.Module | None = None
        self.query_proj: nn.Module | None = None
        self.photo_proj: nn.Module | None = None
        self.photo_hidden: int | None = None
        # with `add_photo_encoder(tower_top=True)`: the photo side's own copy of the image tower's last stage
        self.photo_tower: nn.Module | None = None
        # the side of the square a photo query is read at (None: the catalog images' config.image_size)
        self.photo_image_size: int | None = None
        # Stage 2 adds a spelling corrector for queries (models/speller.py); None: queries as typed.
        self.query_speller = None

    # ---- Stage 2: the query encoder starts as a copy of the text tower and its projection
    def add_query_encoder(self) -> None:
        self.query_tower = clone(self.text_tower)
        self.query_proj = clone(self.text_proj)

    # ---- photo alignment: a photo-query head over the image tower, starting as the image projection
    def add_photo_encoder(self, hidden: int = 1024, image_size: int | None = None, tower_top: bool = False) -> None:
        """`image_size`: read photo queries at this side instead of the catalog's config.image_size. A
        shopper's photo has more pixels than a catalog thumbnail, and the frozen tower tells product types
        apart better near its pretraining size (photo_search.md); the product side is unchanged.
        `tower_top`: the photo side gets its own copy of the image tower's last stage (`photo_tower`, starting
        as the tower's), so photo alignment can train it while the product side keeps the tower as it is."""
        check_photo_size(image_size)
        if tower_top and not self.can_copy_tower_top:
            raise ValueError(f"tower_top: the {type(self.image_tower).__name__} image tower has no last stage to "
                             "copy (a CNN tower does: efficientnet or tiny); train the photo head alone")
        self.photo_proj = PhotoHead(self.image_proj, self.image_tower.width, hidden)
        self.photo_tower = self.image_tower.top_copy() if tower_top else None
        self.photo_hidden = hidden
        self.photo_image_size = None if image_size == self.config.image_size else image_size

    @property
    def can_copy_tower_top(self) -> bool:
        """Whether the image tower has a last stage to copy for photos (a CNN tower; not a ViT)."""
        return hasattr(self.image_tower, "top_copy")

    def remove_photo_encoder(self) -> None:
        """Back to photos answered by the image embedding (the product side is untouched)."""
        self.photo_proj = self.photo_tower = self.photo_hidden = self.photo_image_size = None

    def copy_photo_encoder(self, other: "DashCLIP") -> None:
        """Take `other`'s photo encoder (a model with the same product side: the photo side reads its tower)."""
        self.photo_proj, self.photo_tower = other.photo_proj, other.photo_tower
        self.photo_hidden, self.photo_image_size = other.photo_hidden, other.photo_image_size

    @property
    def photo_encoder_spec(self) -> dict | None:
        """What `add_photo_encoder` needs to rebuild this photo encoder (saved in config.json); None without one."""
        if self.photo_proj is None:
            return None
        return {"hidden": self.photo_hidden, "image_size": self.photo_image_size,
                "tower_top": self.photo_tower is not None}

    @property
    def photo_size(self) -> int:
        """The side of the square photo queries are preprocessed to."""
        return self.photo_image_size or self.config.image_size

    @property
    def has_photo_encoder(self) -> bool:
        return self.photo_proj is not None

    def lock_for_photos(self) -> list[nn.Module]:
        """Freeze all but the photo side: its head and its own tower top, if any (the image tower and the
        product side stay as the index has them). Returns the trained modules."""
        if self.photo_proj is None:
            self.add_photo_encoder()
        self.requires_grad_(False)
        mods = self.photo_encoder_modules()
        for m in mods:
            m.requires_grad_(True)
        return mods

    def photo_encoder_modules(self) -> list[nn.Module]:
        """The photo side's own modules: the head, and the tower top if it has one."""
        return [m for m in (self.photo_proj, self.photo_tower) if m is not None]

    # ---- surgery: what each stage trains (as open_clip's `lock_*`); the trainer only calls these
    def lock_image_tower(self) -> None:
        """Freeze the image tower (Stage 1 on a CPU: its features are cached once) and keep it in eval
        mode (no BatchNorm drift)."""
        self.image_tower.requires_grad_(False)
        self.image_tower.eval()

    def stage2_trainable(self, unlock_product: bool = False) -> list[nn.Module]:
        """The modules Stage 2 trains: the query encoder, plus the fusion layers and projections with
        `unlock_product` (shared fusion layers live in the text tower)."""
        mods = [self.query_tower, self.query_proj]
        if unlock_product:
            mods += [getattr(self, name) for name in PRODUCT_TRAINABLE if getattr(self, name, None) is not None]
            mods += getattr(self.fusion, "text_layers", [])
        return mods

    def lock_for_stage2(self, unlock_product: bool = False, locked_query_layers: int = 0) -> list[nn.Module]:
        """Freeze all but what Stage 2 trains, then the lowest `locked_query_layers` parts of the query
        tower (1: its token embeddings, 2: and its first layer, ...). Returns the trained modules."""
        if self.query_tower is None:
            self.add_query_encoder()
        self.requires_grad_(False)
        mods = self.stage2_trainable(unlock_product)
        for m in mods:
            m.requires_grad_(True)
        for m in lower_layers(self.query_tower, locked_query_layers):
            m.requires_grad_(False)
        return mods

    @property
    def has_query_encoder(self) -> bool:
        return self.query_tower is not None

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # ---- inputs
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict:
        with _TOKENIZE_LOCK:
            tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                                 max_length=max_length or self.config.max_length)
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    def preprocess(self, images, size: int | None = None) -> torch.Tensor:
        """PIL images -> normalised pixels [B, 3, S, S] (letterboxed to a square, see preprocess.py);
        S is `size`, else config.image_size."""
        return preprocess_images(images, self.config, size)

    # ---- building blocks used by the training code
    def image_features(self, pixels: torch.Tensor):
        return self.image_tower(pixels)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.text_tower(input_ids, attention_mask)

    def query_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tower = self.query_tower if self.query_tower is not None else self.text_tower
        return tower(input_ids, attention_mask)[1]

    def photo_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """What a photo query is computed from (`photo_feature_part`, as a feature cache holds it): the image
        tower's pooled output, or with a photo tower top the tower's trunk output; `embed_photo_features` goes on."""
        return self.image_features(pixels)[1] if self.photo_tower is None else self.image_tower.trunk(pixels)

    @property
    def photo_feature_part(self) -> str:
        """Which cached image-tower features (models.feature_cache.PARTS) a photo query is computed from:
        the tower's ("tower": its pooled output), or with a photo tower top its trunk's ("trunk")."""
        return "tower" if self.photo_tower is None else "trunk"

    def embed_photo_features(self, features: torch.Tensor) -> torch.Tensor:
        """A photo query's embedding from its cached features of `photo_feature_part` (pooled [B, C], or the
        trunk's [B, C, h, w]): what training and evaluation on a feature cache compute, as `encode_photo` does."""
        pooled = features if self.photo_tower is None else self.photo_tower(features)[1]
        return self.project_photo(pooled)

    def fuse(self, tokens: torch.Tensor, attention_mask: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """The image-grounded text encoder: the title's tokens attend to the image patches."""
        return self.fusion(tokens, attention_mask, patches)

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        return self.itm_head(fused)

    def project_image(self, pooled):
        return F.normalize(self.image_proj(pooled), dim=-1)

    def project_text(self, pooled):
        return F.normalize(self.text_proj(pooled), dim=-1)

    def project_fused(self, fused):
        return F.normalize(self.fused_proj(fused), dim=-1)

    def project_photo(self, pooled):
        """A photo query's embedding: the photo head after photo alignment, the image projection before."""
        proj = self.photo_proj if self.photo_proj is not None else self.image_proj
        return F.normalize(proj(pooled), dim=-1)

    def project_query(self, pooled):
        proj = self.query_proj if self.query_proj is not None else self.text_proj
        return F.normalize(proj(pooled), dim=-1)

    # ---- inference API
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _pixels(self, images, size: int | None = None) -> torch.Tensor:
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images, size)
        return pixels.to(self.device)

    def _tokens(self, texts):
        tok = self.tokenize(texts)
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    @torch.inference_mode()
    def _batched(self, fn, n: int, batch_size: int) -> torch.Tensor:
        # A model in eval mode is left untouched: the mode is shared by every thread using the model (a
        # service encodes photos and words at once), and flipping it mid-call of another thread would run
        # that thread's forward with BatchNorm on batch statistics. Only a model mid-training (an evaluator
        # in the training loop, one thread) is switched to eval for the call and back.
        was_training = self.training
        if was_training:
            self.eval()
        try:
            out = [fn(slice(i, i + batch_size)).float().cpu() for i in range(0, n, batch_size)]
        finally:
            if was_training:
                self.train()
        return torch.cat(out) if out else torch.zeros((0, self.embed_dim))

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Text tower + projection: the text-only embedding (and the query encoder before Stage 2)."""
        texts = list(texts)
        return self._batched(lambda s: self.project_text(self.text_features(*self._tokens(texts[s]))[1]),
                             len(texts), batch_size)

    def correct_queries(self, texts: Sequence[str]) -> list[str]:
        """Queries with their misspelled words corrected (as typed when the model has no speller)."""
        if self.query_speller is None:
            return list(texts)
        return [self.query_speller.correct(t) for t in texts]

    def encode_query(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """The Stage 2 query encoder (misspellings corrected first); the text tower when the model has
        none yet."""
        texts = self.correct_queries(texts)
        return self._batched(lambda s: self.project_query(self.query_features(*self._tokens(texts[s]))),
                             len(texts), batch_size)

    def encode_image(self, images, batch_size: int = 64) -> torch.Tensor:
        """Image tower + projection: the image-only embedding. `images`: PIL images or pixels."""
        return self._batched(lambda s: self.project_image(self.image_features(self._pixels(images[s]))[1]),
                             len(images), batch_size)

    def encode_photo(self, images, batch_size: int = 64) -> torch.Tensor:
        """A shopper's photo as a query: the photo head (`add_photo_encoder`, trained by `dashclip
        align-photos`) over the image tower, read at `photo_size`; the image embedding when the model has none.
        Pixels given as a tensor must be at `photo_size`."""
        return self._batched(lambda s: self.embed_photo_features(self.photo_features(self._pixels(images[s], self.photo_size))),
                             len(images), batch_size)

    def encode_product(self, texts: Sequence[str], images, batch_size: int = 64) -> torch.Tensor:
        """The product embedding: title (and attributes) grounded in the product image."""
        texts = list(texts)
        if len(texts) != len(images):
            raise ValueError(f"encode_product: {len(texts)} texts but {len(images)} images")

        def fused(s):
            patches, _ = self.image_features(self._pixels(images[s]))
            ids, mask = self._tokens(texts[s])
            tokens, _ = self.text_features(ids, mask)
            return self.project_fused(self.fuse(tokens, mask, patches))
        return self._batched(fused, len(texts), batch_size)

    # ---- identity and persistence
    @property
    def model_id(self) -> str:
        """A hash of the config and the weights of the product side (everything but the query-side parts:
        the Stage 2 query encoder and the photo head): it names the product embedding space. Embeddings and indexes record it, so vectors
        made by one model are never searched with another; Stage 2 with a frozen product side keeps
        the id, so its query encoder searches the Stage 1 index as it should, and so does photo alignment."""
        h = hashlib.blake2b(digest_size=8)
        config = self.config.to_dict()
        for name, default in LATER_CONFIG_FIELDS.items():   # at its default, a newer field changes no id
            if config.get(name, default) == default:
                config.pop(name, None)
        # JSON, not repr: the hash must survive a save/load round trip of the config
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, t in sorted(self.state_dict().items()):
            if name.startswith(QUERY_ENCODER_PREFIXES + PHOTO_ENCODER_PREFIXES):
                continue
            t = t.detach().cpu().contiguous()
            h.update(name.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        from .model_dir import save_model
        return save_model(self, path)


def lower_layers(tower: nn.Module, parts: int) -> list[nn.Module]:
    """The lowest `parts` of a text tower: its token embeddings, then its transformer layers from the
    bottom (BERT-style `embeddings` + `encoder.layer`, or CLIP-style `encoder.layers`)."""
    if parts <= 0:
        return []
    for m in tower.modules():
        encoder = getattr(m, "encoder", None)
        stack = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        if getattr(m, "embeddings", None) is not None and stack is not None:
            if parts > len(stack) + 1:
                raise ValueError(f"freeze_query_layers {parts} > the query tower's embeddings + {len(stack)} layers")
            return [m.embeddings, *list(stack)[:parts - 1]]
    raise ValueError(f"freeze_query_layers: no embeddings + encoder layers found in {type(tower).__name__}")


def to_numpy(x) -> np.ndarray:
    """A Tensor (or array) as float32 numpy, detached: the one conversion of encoder outputs."""
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
