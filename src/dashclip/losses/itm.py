"""Image-text matching loss (ITM) with hard negatives mined from ITC similarities, as in BLIP.

A binary head on the fused (image-grounded text) representation says whether a text belongs to an
image. Random negatives are too easy, so for each image we sample one negative text with
probability softmax(similarity) over the batch, and for each text one negative image; pairs with
the same product id are never drawn. The B positives and up to 2B negatives go through
`model.fuse -> model.itm_logits` and a cross-entropy with labels 1 (match) / 0 (no match).

Negatives are drawn from this rank's own batch: the fusion needs the negative's token states and
image patches, which stay on the rank that computed them (BLIP gathers them; with the batch sizes
used here the local batch already holds plenty of hard negatives).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .itc import same_id_mask


@torch.no_grad()
def negative_weights(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sampling weights [B, B] = softmax over each row of `logits`, zero on the diagonal and on
    same-id columns (rows sum to 1, or to 0 when a row has no allowed negative)."""
    forbidden = same_id_mask(ids) | torch.eye(len(ids), dtype=torch.bool, device=ids.device)
    masked = logits.float().masked_fill(forbidden, float("-inf"))
    weights = torch.softmax(masked, dim=1)
    return torch.nan_to_num(weights, nan=0.0)  # a row that is all -inf has no negative


@torch.no_grad()
def sample_hard_negatives(logits: torch.Tensor, ids: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `logits` [B, B] (image i vs text j) draw one column with probability
    ∝ softmax(logits[i]) over columns of a different product id.

    Returns (rows, cols): the rows that have an allowed negative and the column drawn for each.
    Call with logits.t() for the text side (one negative image per text)."""
    weights = negative_weights(logits, ids)
    rows = torch.nonzero(weights.sum(1) > 0).flatten()
    if len(rows) == 0:
        return rows, rows
    cols = torch.multinomial(weights[rows], 1, generator=generator).flatten()
    return rows, cols


def itm_loss(model, text_tokens: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor,
             logits: torch.Tensor, ids: torch.Tensor, generator: torch.Generator | None = None,
             positive_fused: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """BLIP's ITM loss for one rank's batch.

    text_tokens [B, L, Ct], text_mask [B, L], patches [B, P, Ci]: row i of each belongs to pair i.
    logits [B, B]: this rank's image-to-text ITC logits (any monotone similarity works).
    positive_fused [B, Ct]: `model.fuse` of the B positive pairs when the caller has it already (Stage 1
    computes it for the product embedding): then only the negatives go through the fusion encoder.
    Returns (loss, {"itm_acc": accuracy of the head on this batch}).
    """
    img_rows, neg_text = sample_hard_negatives(logits, ids, generator)     # image i + wrong text
    txt_rows, neg_image = sample_hard_negatives(logits.t(), ids, generator)  # text j + wrong image
    tokens = [text_tokens[neg_text], text_tokens[txt_rows]]
    mask = [text_mask[neg_text], text_mask[txt_rows]]
    images = [patches[img_rows], patches[neg_image]]
    if positive_fused is None:
        tokens, mask, images = [text_tokens] + tokens, [text_mask] + mask, [patches] + images
    labels = torch.cat([torch.ones(len(text_tokens), dtype=torch.long),
                        torch.zeros(len(img_rows) + len(txt_rows), dtype=torch.long)]).to(text_tokens.device)
    fused = model.fuse(torch.cat(tokens), torch.cat(mask), torch.cat(images))
    if positive_fused is not None:
        fused = torch.cat([positive_fused.to(fused.dtype), fused])
    itm_logits = model.itm_logits(fused).float()
    loss = F.cross_entropy(itm_logits, labels)
    acc = (itm_logits.argmax(1) == labels).float().mean().item()
    return loss, {"itm_acc": acc}
