"""`dashclip.precision`: which dtype "auto" picks, and that the training loop and the image-feature
cache honour it."""
from __future__ import annotations

import pytest
import torch

from dashclip import precision
from dashclip.precision import autocast, native_bf16, resolve_amp


def test_resolve_amp_forced_values_and_errors():
    assert resolve_amp(None, "cpu") is None and resolve_amp("none", "cpu") is None
    assert resolve_amp("bf16", "cpu") == "bf16" and resolve_amp("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="fp8"):
        resolve_amp("fp8", "cpu")


@pytest.mark.parametrize("flags, want", [({"amx_bf16", "avx2"}, "bf16"), ({"avx512_bf16"}, "bf16"),
                                         ({"avx2", "avx512f"}, None), (set(), None)])
def test_auto_is_bf16_only_on_cpus_that_compute_it_natively(monkeypatch, flags, want):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    assert native_bf16("cpu") is (want == "bf16")
    assert resolve_amp("auto", "cpu") == want
    x, layer = torch.randn(2, 4), torch.nn.Linear(4, 3)
    with autocast("cpu", "auto"):
        y = layer(x)
    assert y.dtype == (torch.bfloat16 if want else torch.float32)


def test_loop_config_accepts_auto_and_rejects_unknown():
    from dashclip.training.loop import LoopConfig

    LoopConfig(amp="auto")
    with pytest.raises(ValueError, match="amp"):
        LoopConfig(amp="fp8")
