"""Product ids: the one home of how an id from outside (a URL, JSON, a CSV cell, a numpy scalar) is read
as the id of a table whose ids are all integers or all strings."""
from __future__ import annotations

import numpy as np
import pandas as pd


def plain_id(value):
    """numpy scalars -> Python scalars (JSON, dict keys, and messages: np.int64(5) prints as 5)."""
    return value.item() if isinstance(value, np.generic) else value


def id_text(value) -> str:
    """An id from outside as text, for ids that are matched as text (query ids): 7, 7.0, np.int64(7), "7" and
    " 7" are "7" (JSONL and Parquet ids may be numbers, CSV ids are text)."""
    value = plain_id(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def coerce_id(pid, integer_ids: bool):
    """`pid` as an id of a table with integer ids ("15970", " 15970", 15970.0 and np.int64(15970) are
    15970) or string ids (15970 is "15970"). A value that cannot be an id of that table is a KeyError:
    no such product can exist."""
    pid = plain_id(pid)
    if not integer_ids:
        if pid is None or isinstance(pid, bool) or (isinstance(pid, float) and np.isnan(pid)):
            raise KeyError(f"unknown product id {pid!r}")
        return str(pid)
    if isinstance(pid, bool):
        raise KeyError(f"unknown product id {pid!r}")
    if isinstance(pid, int):
        return pid
    if isinstance(pid, float) and pid.is_integer():
        return int(pid)
    if isinstance(pid, str) and pid.strip().lstrip("+-").isdigit():
        return int(pid)
    raise KeyError(f"unknown product id {pid!r}")


def coerce_id_column(values: pd.Series, integer_ids: bool) -> pd.Series:
    """`coerce_id` for a whole column at once: NaN (integer ids) where a value cannot be an id."""
    if not integer_ids:
        return values.astype(str)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values
    return pd.to_numeric(values, errors="coerce")
