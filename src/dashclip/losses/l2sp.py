"""L2-SP (Li, Grandvalet and Davoine 2018): a penalty on how far fine-tuned weights move from where they
started, weight * sum ||theta - theta_start||^2. Stage 2 can use it to keep what the pretrained text encoder
knew about phrasing while it learns the shop's words (issue 25)."""
from __future__ import annotations

import torch
from torch import nn


class L2SP(nn.Module):
    """The penalty over `params` (name -> parameter), measured from their values when this is made. The
    start values are non-persistent buffers (they move with the module, stay out of checkpoints: a resumed
    run rebuilds them from the same starting model); the parameters are referenced, not registered, so
    they stay owned by their model."""

    def __init__(self, params: dict[str, nn.Parameter], weight: float):
        super().__init__()
        if weight < 0:
            raise ValueError(f"L2-SP weight must be >= 0, got {weight}")
        if not params:
            raise ValueError("L2-SP: no parameters to hold")
        self.weight = float(weight)
        self._params = list(params.values())      # a plain list: not registered as this module's
        for i, p in enumerate(self._params):
            self.register_buffer(f"start_{i}", p.detach().clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        total = sum(((p - getattr(self, f"start_{i}")) ** 2).sum() for i, p in enumerate(self._params))
        return self.weight * total
