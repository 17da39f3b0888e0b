"""Similarity distillation: keep how a student relates texts to one another the way a frozen teacher does.

Stage 2 moves the query encoder toward the shop's products; this term keeps its query-query and word-word
similarities like those of the encoder it started from (the pretrained text tower), so phrasing the training
queries never held (a synonym the vocabulary lacks) stays near the phrasings it resembles. A function-space
counterpart of L2-SP (l2sp.py), as in relational knowledge distillation (Park et al. 2019) and the
similarity-matching of Tung and Mori (2019). Issue 25."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimilarityDistillation(nn.Module):
    """weight * mean over rows of KL(softmax(teacher sims / t) || softmax(student sims / t)), where the sims
    are the cosine similarities of each text to the others of the same set (itself left out). Both [N, D]
    tables hold the same N texts in the same order; the teacher's carry no gradient."""

    def __init__(self, weight: float, temperature: float = 0.05):
        super().__init__()
        if weight < 0:
            raise ValueError(f"distillation weight must be >= 0, got {weight}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.weight, self.temperature = float(weight), float(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
        n = len(student)
        if n < 2:
            return student.sum() * 0.0
        s = F.normalize(student.float(), dim=-1)
        t = F.normalize(teacher.detach().float(), dim=-1)
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        s_logits = (s @ s.T)[off].view(n, n - 1) / self.temperature
        t_logits = (t @ t.T)[off].view(n, n - 1) / self.temperature
        kl = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                      reduction="batchmean")
        return self.weight * kl
