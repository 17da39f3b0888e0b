"""Image preprocessing with Pillow and numpy (no torchvision here): letterbox to a square on the
catalog's white background, resize, scale to [0, 1], normalise with the config's mean/std.

Letterboxing instead of centre-cropping keeps the whole product: the fashion photos are 60x80
portraits, and a crop would cut off shoes and hems."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def letterbox(image: Image.Image, size: int, pad_color=(255, 255, 255)) -> Image.Image:
    image = image.convert("RGB")
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), tuple(pad_color))
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def preprocess_images(images, config, size: int | None = None) -> torch.Tensor:
    """Normalised pixels [B, 3, S, S]; S is `size`, else config.image_size."""
    size = size or config.image_size
    mean = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, im in enumerate(images):
        arr = np.asarray(letterbox(im, size, config.pad_color), dtype=np.float32).transpose(2, 0, 1) / 255.0
        out[i] = (arr - mean) / std
    return torch.from_numpy(out)
