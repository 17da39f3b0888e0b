"""Build, save and load DashCLIP models.

    model = create_model("default")          # EfficientNet-Lite0 + all-MiniLM-L6-v2 + 2 fusion layers
    model = create_model("blip")             # HF Salesforce/blip-itm-base-coco (needs the hub or a local dir)
    model = create_model("my_config.json", image_size=128)
    model.save("runs/my-model")
    model = dashclip.load("runs/my-model")

A saved model directory holds everything a stranger needs, with no download:
    config.json          {"format": "dashclip-model", "config": <ModelConfig>, "has_query_encoder",
                          "photo_encoder" (after photo alignment {"hidden", "image_size", "tower_top"}, else null), "model_id"}
    model.safetensors    every weight (towers, fusion, projections, ITM head, query encoder, photo head and tower top)
    tokenizer/           the HF tokenizer files
    query_speller.json   after Stage 2: the words misspelled queries are corrected to (models/speller.py)
    README.md            how to load it
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from .config import ModelConfig, get_config
from .model import DashCLIP
from .model_dir import FORMAT, save_model  # noqa: F401  (save_model: its public home was here)
from .speller import SPELLER_FILE, QuerySpeller, tokenizer_words
from .towers import BertTextTower, EfficientNetLiteTower, FusionEncoder, TinyConvTower, clone
from ..io import read_json



def _quiet_transformers():
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _tokenizer(cfg: ModelConfig, tokenizer):
    from transformers import AutoTokenizer

    if tokenizer is not None:
        return tokenizer
    if cfg.kind in ("blip", "clip"):
        return AutoTokenizer.from_pretrained(cfg.hf_id)
    return AutoTokenizer.from_pretrained(_text_path(cfg))


def _text_path(cfg: ModelConfig) -> str:
    if cfg.text_tower.get("path"):
        return cfg.text_tower["path"]
    if cfg.text_tower["type"] == "mpnet":
        from .sentence import mpnet_path
        return mpnet_path()
    from .sentence import minilm_path
    return str(minilm_path())


TEXT_TOWER_TYPES = ("minilm", "mpnet", "bert")


def _bert(cfg: ModelConfig, pretrained: bool, vocab_size: int):
    """The HF encoder of the text tower (a BERT, or an MPNet for "mpnet"); its architecture is recorded in
    cfg.text_tower["hf_config"], so a saved model is rebuilt from it without the pretrained files."""
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModel

    spec = cfg.text_tower
    if spec["type"] not in TEXT_TOWER_TYPES:
        raise ValueError(f"model config {cfg.name!r}: unknown text_tower type {spec['type']!r} "
                         f"({', '.join(TEXT_TOWER_TYPES)})")
    drop = {} if cfg.dropout is None else {"hidden_dropout_prob": cfg.dropout,
                                           "attention_probs_dropout_prob": cfg.dropout}
    if spec["type"] in ("minilm", "mpnet") and pretrained:
        return AutoModel.from_pretrained(_text_path(cfg), add_pooling_layer=False, **drop)
    hf = dict(spec.get("hf_config") or {})
    if not hf:   # an architecture without weights: read it from the local pretrained dir
        hf = AutoConfig.from_pretrained(_text_path(cfg)).to_dict()
    hf.setdefault("vocab_size", vocab_size)
    hf.update(drop)
    model_type = hf.get("model_type") or ("mpnet" if spec["type"] == "mpnet" else "bert")
    return AutoModel.from_config(CONFIG_MAPPING[model_type].from_dict(hf), add_pooling_layer=False)


def _image_tower(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    spec = cfg.image_tower
    if spec["type"] == "efficientnet-lite":
        return EfficientNetLiteTower(spec.get("variant", "efficientnet-lite0"), pretrained=pretrained)
    if spec["type"] == "tiny-cnn":
        return TinyConvTower(spec.get("width", 32))
    raise ValueError(f"model config {cfg.name!r}: unknown image_tower type {spec['type']!r} (efficientnet-lite, tiny-cnn)")


def create_model(config="default", pretrained: bool = True, tokenizer=None, **overrides) -> DashCLIP:
    """A new model from a config name, JSON file, dict or ModelConfig. `pretrained` loads the
    towers' pretrained weights (offline for the default; the hub or a local dir for blip/clip);
    the projections, fusion cross-attention and ITM head start fresh (the model "before Stage 1")."""
    _quiet_transformers()
    cfg = get_config(config, **overrides)
    tokenizer = _tokenizer(cfg, tokenizer)
    if cfg.kind == "dashclip":
        image_tower = _image_tower(cfg, pretrained)
        bert = _bert(cfg, pretrained, len(tokenizer))
        cfg = dataclasses.replace(cfg, text_tower={**cfg.text_tower, "hf_config": bert.config.to_dict()})
        if cfg.fusion_layers > bert.config.num_hidden_layers:
            raise ValueError(f"model config {cfg.name!r}: fusion_layers {cfg.fusion_layers} > the text tower's "
                             f"{bert.config.num_hidden_layers} layers")
        shared = cfg.fusion_input == "shared" and cfg.fusion_layers > 0
        text_tower = BertTextTower(bert, cfg.text_pooling,
                                   bert.config.num_hidden_layers - cfg.fusion_layers if shared else None)
        fusion = FusionEncoder.from_bert(bert, image_tower.width, cfg.fusion_layers, cfg.text_pooling,
                                         dropout=0.1 if cfg.dropout is None else cfg.dropout,
                                         share=shared and cfg.fusion_weights == "text_tower")
        text_proj = nn.Linear(text_tower.width, cfg.embed_dim)
        parts = dict(image_tower=image_tower, text_tower=text_tower, fusion=fusion,
                     image_proj=nn.Linear(image_tower.width, cfg.embed_dim), text_proj=text_proj,
                     itm_head=nn.Linear(text_tower.width, 2), logit_scale=None)
    else:
        from .hf_models import blip_parts, clip_parts, load_hf

        hf, hf_config = load_hf(cfg.kind, cfg.hf_id, cfg.hf_config, pretrained)
        parts = blip_parts(hf) if cfg.kind == "blip" else clip_parts(hf, cfg.fusion_layers, cfg.text_pooling)
        cfg = dataclasses.replace(cfg, hf_config=hf_config, embed_dim=parts.pop("embed_dim"))
    # The fused projection starts as the text projection: the fused vector is the title's
    # representation enriched by the image, so this is a better start than random.
    return DashCLIP(cfg, tokenizer, fused_proj=clone(parts["text_proj"]), **parts)


# ---------------------------------------------------------------------------------------------
# Save / load


def load(path: str | Path, device: str | torch.device | None = None) -> DashCLIP:
    """Open a model directory written by `save_model` (`dashclip pretrain`, `dashclip align`)."""
    from safetensors.torch import load_model as load_weights
    from transformers import AutoTokenizer

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a dashclip model directory (no config.json)")
    saved = read_json(config_file)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{config_file}: not a dashclip model (format {saved.get('format')!r})")
    for name in ("model.safetensors", "tokenizer"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name}: missing from the model directory")
    _quiet_transformers()
    cfg = ModelConfig.from_dict(saved["config"])
    model = create_model(cfg, pretrained=False, tokenizer=AutoTokenizer.from_pretrained(str(path / "tokenizer")))
    if saved.get("has_query_encoder"):
        model.add_query_encoder()
    if saved.get("photo_encoder"):
        model.add_photo_encoder(**saved["photo_encoder"])
    missing, unexpected = load_weights(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / 'model.safetensors'}: weights do not fit the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if (path / SPELLER_FILE).exists():
        model.query_speller = QuerySpeller.load(path / SPELLER_FILE, known=tokenizer_words(model.tokenizer))
    model.eval()
    return model.to(device) if device is not None else model
