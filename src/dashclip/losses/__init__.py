"""Training losses. ITC and ITM (Stage 1, BLIP-style), QCC (Stage 2), and the L2-SP penalty and similarity
distillation that keep Stage 2 near where it started.
Gathering across DDP ranks lives in `gather.py` and nowhere else."""
from .distill import SimilarityDistillation
from .gather import all_gather_no_grad, all_gather_with_grad, rank, world_size
from .itc import contrastive_logits, itc_loss, same_id_mask
from .itm import itm_loss, negative_weights, sample_hard_negatives
from .l2sp import L2SP
from .qcc import QCCLoss, qcc_loss, qcc_targets

__all__ = ["all_gather_with_grad", "all_gather_no_grad", "rank", "world_size", "itc_loss",
           "contrastive_logits", "same_id_mask", "itm_loss", "negative_weights", "sample_hard_negatives",
           "QCCLoss", "qcc_loss", "qcc_targets", "L2SP", "SimilarityDistillation"]
