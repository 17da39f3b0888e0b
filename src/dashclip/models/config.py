"""Model configs: one JSON file per architecture, in the spirit of open_clip's model configs.

A config names the towers and every preprocessing setting, so a saved model directory (config.json
+ weights + tokenizer) is enough to rebuild the model with no download. Built-in configs live in
`model_configs/*.json`; any JSON file with the same fields works too (`--config my.json`).

    kind        "dashclip": image tower + text tower + new fusion layers (the offline default)
                "blip":     HF BlipForImageTextRetrieval mapped onto the same roles (the paper's setup)
                "clip":     HF CLIPModel, with a small fusion head (CLIP has no cross-attention)
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..io import read_json


MIN_PHOTO_SIZE = 16


def check_photo_size(size) -> None:
    """The one rule for a photo head's own photo size (`add_photo_encoder`, align-photos, [photos]): None
    (the config's image_size) or an integer of at least MIN_PHOTO_SIZE pixels."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < MIN_PHOTO_SIZE):
        raise ValueError(f"photo image_size must be an integer >= {MIN_PHOTO_SIZE}, not {size!r}")


@dataclass
class ModelConfig:
    name: str = "default"
    kind: str = "dashclip"
    embed_dim: int = 256                  # the shared embedding space (projections' output)
    # Image tower. type: "efficientnet-lite" (variant efficientnet-lite0/lite2) | "tiny-cnn"
    image_tower: dict = field(default_factory=lambda: {"type": "efficientnet-lite", "variant": "efficientnet-lite0"})
    # Text tower. type: "minilm" (all-MiniLM-L6-v2 from PyPI, or any BERT dir via "path") | "mpnet"
    # (all-mpnet-base-v2 from its five PyPI parts, or any MPNet dir via "path") | "bert" (random, from hf_config)
    text_tower: dict = field(default_factory=lambda: {"type": "minilm"})
    fusion_layers: int = 2                # image-grounded text encoder depth (dashclip, clip)
    # dashclip: what the fusion layers (copies of the text tower's top layers + new cross-attention) read.
    # "last": the text tower's final token states (models saved before this setting existed);
    # "shared": the states below the copied layers, so the fusion layers stand in for them, as BLIP's
    # image-grounded encoder shares the text encoder's lower layers. With the cross-attention starting
    # at zero, the fused embedding then starts equal to the text embedding, and Stage 1 adds the image.
    fusion_input: str = "last"
    # dashclip, with fusion_input "shared": "copy", the fusion layers start as copies of the text tower's top
    # layers and train apart from them (only ITM and the product term reach them); "text_tower", they are
    # those layers with their own cross-attention added, as BLIP shares them, so ITC trains the fused path too.
    fusion_weights: str = "copy"
    text_pooling: str = "mean"            # pooling of text and fused tokens: "mean" (sentence-transformers) or "cls" (BLIP)
    image_size: int = 224
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    pad_color: tuple = (255, 255, 255)    # product photos sit on white: letterbox to square with white
    max_length: int = 64                  # title tokens
    # dashclip: dropout of the text tower and the fusion layers (None: the pretrained tower's own, 0.1 for
    # MiniLM). The default config turns it off: on a CPU, drawing the random masks is ~16% of a Stage 1
    # step, and the few hundred steps of Stage 1 and Stage 2 see each example about once.
    dropout: float | None = None
    hf_id: str | None = None              # blip/clip: hub id or local dir of the pretrained HF model
    hf_config: dict | None = None         # filled in at creation, so loading never needs the hub
    init_temperature: float = 0.07

    def __post_init__(self):
        self.mean, self.std, self.pad_color = tuple(self.mean), tuple(self.std), tuple(self.pad_color)
        if self.fusion_input not in ("last", "shared"):
            raise ValueError(f"model config {self.name!r}: fusion_input must be 'last' or 'shared', "
                             f"not {self.fusion_input!r}")
        if self.fusion_weights not in ("copy", "text_tower"):
            raise ValueError(f"model config {self.name!r}: fusion_weights must be 'copy' or 'text_tower', "
                             f"not {self.fusion_weights!r}")
        if self.fusion_weights == "text_tower" and self.fusion_input != "shared":
            raise ValueError(f"model config {self.name!r}: fusion_weights 'text_tower' needs fusion_input 'shared' "
                             f"(the fusion layers are the text tower's top layers, so they read the states below them)")
        if self.kind not in ("dashclip", "blip", "clip"):
            raise ValueError(f"model config {self.name!r}: unknown kind {self.kind!r} (dashclip, blip, clip)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config {d.get('name', '?')!r}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def builtin_configs() -> list[str]:
    files = resources.files("dashclip.models") / "model_configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".json"))


def get_config(name_or_path: "str | Path | dict | ModelConfig", **overrides) -> ModelConfig:
    """A built-in config by name, a JSON file, a dict, or a ModelConfig; `overrides` replace fields."""
    if isinstance(name_or_path, ModelConfig):
        cfg = name_or_path
    elif isinstance(name_or_path, dict):
        cfg = ModelConfig.from_dict(name_or_path)
    else:
        path = Path(name_or_path)
        if path.suffix == ".json" or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: model config file not found")
            d = read_json(path)
            cfg = ModelConfig.from_dict(d)
        else:
            builtin = resources.files("dashclip.models") / "model_configs" / f"{name_or_path}.json"
            if not builtin.is_file():
                raise ValueError(f"unknown model config {str(name_or_path)!r}; built-in: {', '.join(builtin_configs())}, "
                                 "or pass a JSON file")
            cfg = ModelConfig.from_dict(json.loads(builtin.read_text()))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
