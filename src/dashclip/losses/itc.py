"""Image-text contrastive loss (ITC): symmetric InfoNCE with a learnable temperature (CLIP, BLIP).

Row i of the image batch and row i of the text batch are a positive pair. Every other text in the
(gathered, global) batch is a negative for image i, and vice versa, except pairs that share a
product id: two photos of one product, or one product's text twice, are not negatives of each
other, so their logits are removed from the softmax (set to -inf) instead of being pushed apart.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .gather import all_gather_no_grad, all_gather_with_grad

# CLIP clamps the learned inverse temperature at 100 so the logits cannot blow up.
MAX_LOGIT_SCALE = math.log(100.0)


def same_id_mask(ids: torch.Tensor) -> torch.Tensor:
    """[N, N] bool: True where row and column share a product id but are not the same row."""
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)


def contrastive_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, ids: torch.Tensor,
                       logit_scale: torch.Tensor) -> torch.Tensor:
    """Image-to-text logits [N, N] = exp(logit_scale) * cos, with same-id off-diagonal pairs at -inf.

    `image_emb` and `text_emb` must be L2-normalised; `logit_scale` is log(1/temperature)."""
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_emb @ text_emb.t()
    return logits.masked_fill(same_id_mask(ids), float("-inf"))


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, ids: torch.Tensor,
             logit_scale: torch.Tensor, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the batch gathered from all DDP ranks.

    image_emb, text_emb: [B, D] normalised embeddings of B positive pairs (this rank's batch).
    ids: [B] int64 product ids (pairs with equal ids are not negatives of each other).
    Returns (loss, logits [N, N] over the gathered batch): the logits are reused by ITM to sample
    hard negatives. The loss is the same number on every rank.
    """
    if gather:
        image_emb, text_emb = all_gather_with_grad(image_emb), all_gather_with_grad(text_emb)
        ids = all_gather_no_grad(ids)
    logits = contrastive_logits(image_emb.float(), text_emb.float(), ids, logit_scale.float())
    target = torch.arange(len(ids), device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    return loss, logits
