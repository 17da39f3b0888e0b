"""Batches of texts by length: a transformer batch pads to its longest text, so encoding texts of
similar length together saves time and changes nothing else. Callers scatter each batch's outputs
back to `rows`, so results come back in the order given."""
from __future__ import annotations

import numpy as np


def length_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Row indices, `batch_size` at a time, shortest first (stable among equal lengths)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
