"""BLIP and CLIP from Hugging Face, mapped onto the roles of the product encoder.

    role                 BLIP (BlipForImageTextRetrieval)            CLIP (CLIPModel)
    image tower          vision_model: all tokens / CLS              vision_model: all tokens / pooler (CLS)
    text tower           text_encoder (no image): CLS                text_model: pooler (EOS token)
    fusion               text_encoder with cross-attention to the    new FusionEncoder layers (random init):
                         image tokens (BLIP's ITM mode): CLS          CLIP has no cross-attention
    image / text proj    vision_proj / text_proj                     visual_projection / text_projection
    ITM head             itm_head                                    new
    temperature          0.07                                        logit_scale

For BLIP the "tokens" a text tower hands to the fusion are the text embeddings (word + position),
because BLIP's image-grounded encoder is the whole text encoder run again with cross-attention.
`build_*` take a loaded HF model; `load_hf` gets one from a hub id or a local dir (users), or, with a
stored `hf_config`, builds it with random weights to receive a saved state dict (no download).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .towers import FusionEncoder, pool_tokens


def load_hf(kind: str, hf_id: str | None, hf_config: dict | None, pretrained: bool):
    """(hf model, hf config dict). pretrained: from_pretrained(hf_id); else from the stored config."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, CLIPConfig, CLIPModel

    cls, cfg_cls = (BlipForImageTextRetrieval, BlipConfig) if kind == "blip" else (CLIPModel, CLIPConfig)
    if pretrained or hf_config is None:
        if not hf_id:
            raise ValueError(f"a {kind} model config needs hf_id: a hub id (e.g. Salesforce/blip-itm-base-coco) "
                             "or a local directory")
        model = cls.from_pretrained(hf_id)
        if not pretrained:          # same architecture, fresh weights
            model = cls(model.config)
    else:
        model = cls(cfg_cls.from_dict(hf_config))
    return model, model.config.to_dict()


class BlipImageTower(nn.Module):
    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.width = vision_model.config.hidden_size

    def forward(self, pixels):
        tokens = self.vision_model(pixel_values=pixels).last_hidden_state
        return tokens, tokens[:, 0]


class BlipTextTower(nn.Module):
    """Unimodal BLIP text encoder. Returns (text embeddings for the fusion, CLS of the text-only run)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder
        self.width = text_encoder.config.hidden_size

    def forward(self, input_ids, attention_mask):
        embeds = self.text_encoder.embeddings(input_ids=input_ids)
        out = self.text_encoder(encoder_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return embeds, out[:, 0]


class BlipFusion(nn.Module):
    """BLIP's image-grounded text encoder: the text encoder in cross-attention mode. It shares its
    weights with the text tower, as in BLIP, so it holds no parameters of its own."""

    def __init__(self, text_tower: BlipTextTower):
        super().__init__()
        self._tower = [text_tower]          # a list, so the shared encoder is not registered twice

    def forward(self, embeds, attention_mask, patches):
        enc = self._tower[0].text_encoder
        image_mask = torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device)
        out = enc(encoder_embeds=embeds, attention_mask=attention_mask, encoder_hidden_states=patches,
                  encoder_attention_mask=image_mask).last_hidden_state
        return out[:, 0]


class ClipImageTower(nn.Module):
    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.width = vision_model.config.hidden_size

    def forward(self, pixels):
        out = self.vision_model(pixel_values=pixels)
        return out.last_hidden_state, out.pooler_output


class ClipTextTower(nn.Module):
    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model
        self.width = text_model.config.hidden_size

    def forward(self, input_ids, attention_mask):
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def blip_parts(hf) -> dict:
    text = BlipTextTower(hf.text_encoder)
    return {"image_tower": BlipImageTower(hf.vision_model), "text_tower": text, "fusion": BlipFusion(text),
            "image_proj": hf.vision_proj, "text_proj": hf.text_proj, "itm_head": hf.itm_head,
            "embed_dim": hf.config.image_text_hidden_size, "logit_scale": None}


def clip_parts(hf, fusion_layers: int, pooling: str) -> dict:
    t = hf.config.text_config
    return {"image_tower": ClipImageTower(hf.vision_model), "text_tower": ClipTextTower(hf.text_model),
            "fusion": FusionEncoder(t.hidden_size, t.num_attention_heads, t.intermediate_size,
                                    hf.config.vision_config.hidden_size, fusion_layers, pooling),
            "image_proj": hf.visual_projection, "text_proj": hf.text_projection,
            "itm_head": nn.Linear(t.hidden_size, 2), "embed_dim": hf.config.projection_dim,
            "logit_scale": hf.logit_scale.detach().clone()}


__all__ = ["load_hf", "blip_parts", "clip_parts", "pool_tokens"]
