"""dashclip: multimodal e-commerce search after DoorDash's DashCLIP (arXiv 2504.07110).

Product images, product titles and shopper queries become vectors in one space:
  data/      catalog import and validation (the canonical catalog every stage reads)
  models/    towers, the product encoder, the query encoder, save/load (`dashclip.load`)
  losses/    ITC, ITM and QCC (distributed gathering in one place)
  training/  one training loop (checkpoints, resume, AMP, DDP) used by Stage 1 and Stage 2
  labeling/  relevance labels at scale: query pool, candidates, labelers, grading
  index/     vector indexes (FAISS, Milvus)
  serving/   search, HTTP service and web page
  evaluation/ metrics, evaluators and reports
"""
__version__ = "0.1.0"


def load(path, device=None):
    """Load a saved dashclip model directory (config JSON + safetensors + tokenizer)."""
    from .models.factory import load as _load

    return _load(path, device=device)


def create_model(config="default", pretrained=True, **overrides):
    """A new model from a config name (`default`, `tiny`, `blip`, `clip`, ...) or JSON file."""
    from .models.factory import create_model as _create

    return _create(config, pretrained=pretrained, **overrides)


__all__ = ["load", "create_model", "__version__"]
