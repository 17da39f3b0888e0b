"""Optimizer pieces shared by every training in dashclip: Stage 1 and Stage 2 (training/loop.py) and the
cross-encoder labeler (labeling/labelers/cross_encoder.py). Below both, so labeling need not import training."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: decay matrices, not biases/norms/scalars (the usual CLIP/GPT recipe).
    `lr_scales` maps a parameter-name prefix (e.g. "text_tower.") to a multiplier of `lr`: pretrained
    towers usually want a smaller step than new layers, so fine-tuning keeps what they know."""
    groups: dict[float, tuple[list, list]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in (lr_scales or {}).items() if name.startswith(k)), 1.0)
            decay, no_decay = groups.setdefault(scale, ([], []))
            (decay if p.ndim >= 2 else no_decay).append(p)
    out = []
    for scale, (decay, no_decay) in groups.items():
        extra = {"lr": lr * scale} if lr is not None and scale != 1.0 else {}
        out += [{"params": decay, "weight_decay": weight_decay, **extra},
                {"params": no_decay, "weight_decay": 0.0, **extra}]
    return [g for g in out if g["params"]] if len(groups) > 1 else out


def adamw(params, device, **options) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the device: the same update in one pass
    over the parameters (on 2 CPU cores, 0.016 s instead of 0.081 s a step for MiniLM's 22M)."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, fused=fused or None, **options)


def cosine_schedule(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warmup, then cosine down to `min_ratio`."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def linear_schedule(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warmup over `warmup_steps` (at least 1), then linear decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        return min((step + 1) / warmup_steps, max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps)))
    return factor
