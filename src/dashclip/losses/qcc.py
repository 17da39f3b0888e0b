"""The query-catalog contrastive (QCC) loss of Stage 2, anchored on the product.

A batch holds B products and a bank of Q queries (the union of every product's sampled positive
queries, its graded-0 queries and its mined hard negatives). What is known about each
(product, bank query) pair is one integer grade in a [B, Q] matrix:

    2, 1   relevant (a positive; grade 1 only when `grade1_weight` > 0, else it is masked out)
    0      graded irrelevant (a negative)
    -1     unlabeled (a negative: the usual in-batch assumption)
    -2     ignore (neither: padding columns, or pairs the caller wants left out)

`qcc_targets` turns that matrix into positive weights and a negative mask. A query known to be
relevant to a product is therefore never one of that product's negatives, even when it was sampled
for another product of the batch: this is the false-negative mask.

Variants (`QCCLoss(variant=...)`):

    "qcc"        (default) each positive pair (p, q) against p's negatives only:
                     l(p, q) = -log( e^{s(p,q)} / (e^{s(p,q)} + sum_{n in neg(p)} e^{s(p,n)}) )
                 averaged over positive pairs, weighted by grade. Two queries relevant to the same
                 product never compete with each other, in numerator or denominator.
    "symmetric"  the mean of "qcc" and the same loss anchored on each query (products as candidates).
    "graded"     soft-target cross-entropy: per product, a softmax over its positives and negatives
                 with target probabilities proportional to the positive weights (grade 2: 1,
                 grade 1: `grade1_weight`, 1/3 = (2^1-1)/(2^2-1) by default), so positives share mass.

Why "qcc" is the default: see `DEFAULT_VARIANT_EVIDENCE` below (measured on the held-out dev queries).
s(p, q) is the cosine similarity divided by the temperature, which is fixed or learnable.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .itc import MAX_LOGIT_SCALE

VARIANTS = ("qcc", "symmetric", "graded")
UNLABELED = -1
IGNORE = -2

# From benchmarks/results/stage2_align.md (2026-11-29, 2-core CPU, one seed): the 40 held-out dev queries over
# the full fashion catalog, seed + 206,848 model grades, 400 steps of 32 products, no WiSE averaging.
DEFAULT_VARIANT_EVIDENCE = (
    "NDCG@10 without averaging: qcc 0.556, symmetric 0.580, graded 0.557; with WiSE-FT 0.5 (the shipped setting): "
    "qcc 0.598, symmetric 0.610. 'qcc' stays the default: it is the paper's product-anchored loss and the demo's "
    "numbers were measured with it; symmetric was ahead by 0.012-0.025 in one seed on 40 queries, which is the "
    "first thing to try on your catalog but not enough to change a default. The fashion demo trains symmetric "
    "with grade-1 positives, chosen on its phrasing-held-out protocol (the evidence: pipeline.config."
    "fashion_config); other shops keep 'qcc' until measured on their own grades.")


def qcc_targets(grades: torch.Tensor, grade1_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """From a [B, Q] grade matrix (2/1/0, -1 unlabeled, -2 ignore) to (positive weights [B, Q] float, negatives [B, Q] bool).

    Grade 2 weighs 1.0 and grade 1 weighs `grade1_weight`; a grade-1 pair with weight 0 is neither
    positive nor negative (masked out). Grade 0 and unlabeled pairs are negatives.
    """
    if grade1_weight < 0:
        raise ValueError(f"grade1_weight must be >= 0, got {grade1_weight}")
    grades = grades.long()
    pos_weight = (grades == 2).float() + grade1_weight * (grades == 1).float()
    negatives = (grades == 0) | (grades == UNLABELED)
    return pos_weight, negatives


def _one_side(logits: torch.Tensor, pos_weight: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Per-positive InfoNCE, rows are anchors: each positive against the anchor's negatives only."""
    neg_logits = logits.masked_fill(~negatives, float("-inf"))
    neg_lse = torch.logsumexp(neg_logits, dim=1, keepdim=True)  # -inf when an anchor has no negative
    # -log(e^s / (e^s + e^lse)) = softplus(lse - s); with no negatives it is softplus(-inf) = 0.
    per_pair = F.softplus(neg_lse - logits)
    per_pair = torch.where(pos_weight > 0, per_pair, torch.zeros_like(per_pair))
    total = pos_weight.sum()
    if total <= 0:
        return logits.sum() * 0.0  # no positive in the batch: a zero that keeps the graph
    return (per_pair * pos_weight).sum() / total


def _soft_target(logits: torch.Tensor, pos_weight: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Softmax over each anchor's positives and negatives, target proportional to positive weights."""
    candidates = (pos_weight > 0) | negatives
    log_probs = torch.log_softmax(logits.masked_fill(~candidates, float("-inf")), dim=1)
    row_weight = pos_weight.sum(dim=1)
    has_pos = row_weight > 0
    if not bool(has_pos.any()):
        return logits.sum() * 0.0
    target = pos_weight[has_pos] / row_weight[has_pos, None]
    lp = torch.where(target > 0, log_probs[has_pos], torch.zeros_like(target))
    return -(target * lp).sum(dim=1).mean()


def qcc_loss(product_emb: torch.Tensor, query_emb: torch.Tensor, pos_weight: torch.Tensor,
             negatives: torch.Tensor, temperature: float | torch.Tensor = 0.05,
             variant: str = "qcc") -> torch.Tensor:
    """The QCC loss for B products [B, D] and Q bank queries [Q, D] (both L2-normalised).

    `pos_weight` and `negatives` come from `qcc_targets`. See the module docstring for the variants.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown QCC variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if pos_weight.shape != (product_emb.shape[0], query_emb.shape[0]) or negatives.shape != pos_weight.shape:
        raise ValueError(f"targets of shape {tuple(pos_weight.shape)} / {tuple(negatives.shape)} do not "
                         f"match {product_emb.shape[0]} products x {query_emb.shape[0]} queries")
    logits = product_emb.float() @ query_emb.float().t() / temperature
    pos_weight = pos_weight.to(logits.dtype)
    if variant == "graded":
        return _soft_target(logits, pos_weight, negatives)
    loss = _one_side(logits, pos_weight, negatives)
    if variant == "symmetric":
        loss = 0.5 * (loss + _one_side(logits.t(), pos_weight.t(), negatives.t()))
    return loss


class QCCLoss(nn.Module):
    """QCC loss with a fixed or learnable temperature (learned as log(1/T), clamped to T >= 0.01 as in CLIP).

    `forward(product_emb [B, D], query_emb [Q, D], grades [B, Q])` with grades as in the module docstring."""

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False,
                 variant: str = "qcc", grade1_weight: float | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown QCC variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.variant = variant
        # The graded variant weights grade 1 by its gain relative to grade 2 unless told otherwise.
        self.grade1_weight = (grade1_weight if grade1_weight is not None
                              else (1.0 / 3.0 if variant == "graded" else 0.0))
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, product_emb: torch.Tensor, query_emb: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        pos_weight, negatives = qcc_targets(grades, self.grade1_weight)
        return qcc_loss(product_emb, query_emb, pos_weight, negatives, self.temperature, self.variant)
