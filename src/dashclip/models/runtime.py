"""Which runtime runs a model: torch (`dashclip.load`) or ONNX Runtime (an export, `models/onnx_model.py`).

    model = load_model("runs/demo/model")                 # auto: torch for a model dir
    model = load_model("runs/demo/model-onnx-int8")       # auto: ONNX Runtime for an export
    model = load_model(dir, backend="onnx")               # an ONNX export, or a clear error

`dashclip search`, `serve`, `embed-catalog` and `index build/add` all load their model here (`--backend`).
"""
from __future__ import annotations

from pathlib import Path

BACKENDS = ("auto", "torch", "onnx")


def resolve_backend(path: str | Path, backend: str = "auto") -> str:
    """"torch" or "onnx" for the model dir `path`; a mismatch is a ValueError that says what to do."""
    from .onnx_model import is_onnx_dir

    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    exported = is_onnx_dir(path)
    if backend == "auto":
        return "onnx" if exported else "torch"
    if backend == "onnx" and not exported:
        raise ValueError(f"{path}: not an ONNX export (no onnx.json); make one with "
                         f"`dashclip export onnx --model {path} --out DIR [--int8]` and pass that DIR")
    if backend == "torch" and exported:
        raise ValueError(f"{path}: is an ONNX export; give the torch model dir it was exported from "
                         f"(or --backend onnx)")
    return backend


def load_model(path: str | Path, backend: str = "auto", device=None):
    """A DashCLIP (torch) or an OnnxModel, by `backend` (see `resolve_backend`)."""
    if resolve_backend(path, backend) == "onnx":
        from .onnx_model import OnnxModel

        if device is not None and str(device) != "cpu":
            raise ValueError(f"the ONNX backend runs on the CPU, not {device}")
        return OnnxModel.open(path)
    from .factory import load

    return load(path, device=device)
