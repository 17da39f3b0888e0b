"""Writing a model directory (the layout is in factory.py's docstring; `factory.load` reads it back).

Apart from factory.py so that `DashCLIP.save` can write itself without importing the factory, which
imports the model: one direction only."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_dir
from .speller import SPELLER_FILE

FORMAT = "dashclip-model"
FORMAT_VERSION = 1


def save_model(model, path: str | Path) -> Path:
    """Write `model` (a DashCLIP) as a model directory, atomically (a crash leaves any previous one intact)."""
    from safetensors.torch import save_model as save_weights

    path = Path(path)
    model_id = model.model_id
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_id": model_id,
            "has_query_encoder": model.has_query_encoder,
            # `add_photo_encoder`'s arguments: head width, photo size (None: config.image_size), own tower top
            "photo_encoder": model.photo_encoder_spec,
            "config": model.config.to_dict()},
            indent=2, default=list) + "\n")
        save_weights(model, str(tmp / "model.safetensors"))
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if model.query_speller is not None:
            model.query_speller.save(tmp / SPELLER_FILE)
        (tmp / "README.md").write_text(_model_card(model, model_id))
    return path


def _model_card(model, model_id: str) -> str:
    c = model.config
    top = ", its own tower top" if model.photo_tower is not None else ""
    photo = (f"yes (photo alignment, photos at {model.photo_size} px{top})" if model.has_photo_encoder
             else "no (image tower serves photos)")
    return (f"# dashclip model `{c.name}` ({model_id})\n\n"
            f"kind {c.kind}, embedding dim {c.embed_dim}, image size {c.image_size}, "
            f"query encoder: {'yes (Stage 2)' if model.has_query_encoder else 'no (text tower serves queries)'}, "
            f"photo encoder: {photo}\n\n"
            "```python\nimport dashclip\nmodel = dashclip.load(\"<this directory>\")\n"
            "q = model.encode_query([\"red summer dress\"])          # [1, D], L2-normalised\n"
            "p = model.encode_product([\"Red floral dress\"], [pil_image])  # the product embedding\n```\n")
