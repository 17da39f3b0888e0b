"""ITC and ITM loss math on small cases computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from dashclip.losses import (contrastive_logits, itc_loss, itm_loss, negative_weights,
                             sample_hard_negatives, same_id_mask)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_itc_two_pairs_by_hand():
    # image 0 = e1, image 1 = e2; text 0 = e1, text 1 = (e1+e2)/sqrt2; temperature 1 (logit_scale 0).
    img = unit([1.0, 0.0], [0.0, 1.0])
    txt = unit([1.0, 0.0], [1.0, 1.0])
    ids = torch.tensor([10, 11])
    loss, logits = itc_loss(img, txt, ids, torch.tensor(0.0))
    c = 1 / math.sqrt(2)
    # logits[i, j] = cos(img i, txt j) = [[1, c], [0, c]]
    assert torch.allclose(logits, torch.tensor([[1.0, c], [0.0, c]]), atol=1e-6)
    i2t = (-math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))) / 2
    t2i = (-math.log(math.e / (math.e + 1)) - math.log(math.exp(c) / (math.exp(c) + math.exp(c)))) / 2
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)


def test_itc_temperature_scales_logits_and_gets_gradient():
    img, txt = unit([1.0, 0.0], [0.0, 1.0]), unit([1.0, 0.0], [0.0, 1.0])
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    loss, logits = itc_loss(img, txt, torch.tensor([1, 2]), scale)
    assert torch.allclose(logits, torch.tensor([[10.0, 0.0], [0.0, 10.0]]), atol=1e-5)
    expected = -math.log(math.exp(10) / (math.exp(10) + 1))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert scale.grad is not None and scale.grad.item() < 0  # sharper is better for aligned pairs
    # The temperature is clamped at 1/100 like CLIP.
    _, logits = itc_loss(img, txt, torch.tensor([1, 2]), torch.tensor(10.0))
    assert logits.max().item() == pytest.approx(100.0, rel=1e-5)


def test_same_id_pairs_are_not_negatives():
    # Pairs 0 and 1 are two photos of product 7 with the same text; pair 2 is product 9.
    img = unit([1.0, 0.0], [0.8, 0.6], [0.0, 1.0])
    txt = unit([1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    ids = torch.tensor([7, 7, 9])
    mask = same_id_mask(ids)
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    loss, logits = itc_loss(img, txt, ids, torch.tensor(0.0))
    assert math.isinf(logits[0, 1].item()) and math.isinf(logits[1, 0].item())
    # By hand: image->text rows, then text->image rows (logits transposed), cos values:
    # img0: [1, x, 0] ; img1: [.8, x, .6] ; img2: [0, 0, 1]   (x = masked)
    def ce(row, target):
        row = [v for v in row if v is not None]
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))
    i2t = [ce([1, None, 0], 0), ce([None, .8, .6], 0), ce([0, 0, 1], 2)]
    # text j vs image i: column j of logits
    t2i = [ce([1, None, 0], 0), ce([None, .8, 0], 0), ce([0, .6, 1], 2)]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Without the mask, the duplicate pair would be pushed apart and the loss would be higher.
    unmasked = contrastive_logits(img, txt, torch.tensor([0, 1, 2]), torch.tensor(0.0))
    target = torch.arange(3)
    plain = (F.cross_entropy(unmasked, target) + F.cross_entropy(unmasked.t(), target)) / 2
    assert plain.item() > loss.item()


def test_negative_weights_exclude_self_and_same_id():
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0],
                           [1.0, 5.0, 2.0, 0.0],
                           [0.0, 0.0, 5.0, 3.0],
                           [1.0, 1.0, 1.0, 5.0]])
    ids = torch.tensor([1, 1, 2, 3])
    w = negative_weights(logits, ids)
    # row 0: allowed columns 2 and 3 (col 1 shares id 1) -> softmax([2, 0])
    e = math.exp(2) / (math.exp(2) + 1)
    assert w[0].tolist() == pytest.approx([0, 0, e, 1 - e], abs=1e-6)
    assert w[1].tolist() == pytest.approx([0, 0, e, 1 - e], abs=1e-6)
    # row 2: allowed 0, 1, 3 -> softmax([0, 0, 3])
    z = 2 + math.exp(3)
    assert w[2].tolist() == pytest.approx([1 / z, 1 / z, 0, math.exp(3) / z], abs=1e-6)
    assert w[3].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0], abs=1e-6)


def test_hard_negative_sampling_follows_softmax_and_skips_rows_without_negatives():
    logits = torch.tensor([[0.0, 2.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0],
                           [1.0, 1.0, 0.0, 1.0],
                           [0.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([1, 2, 3, 2])   # rows 1 and 3 share id 2
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4)
    for _ in range(3000):
        rows, cols = sample_hard_negatives(logits, ids, gen)
        assert rows.tolist() == [0, 1, 2, 3]
        counts[rows, cols] += 1
    assert counts.diagonal().sum() == 0
    assert counts[1, 3] == 0 and counts[3, 1] == 0           # same id never drawn
    freq0 = counts[0] / counts[0].sum()                       # softmax([2, 0, 0]) over cols 1, 2, 3
    z = math.exp(2) + 2
    assert freq0[1].item() == pytest.approx(math.exp(2) / z, abs=0.03)
    assert freq0[2].item() == pytest.approx(1 / z, abs=0.03)
    # A batch where every other row is the same product has no negative: the row is skipped.
    rows, cols = sample_hard_negatives(torch.zeros(3, 3), torch.tensor([5, 5, 6]), gen)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [2, 2, cols[2].item()]
    assert cols[2].item() in (0, 1)
    rows, _ = sample_hard_negatives(torch.zeros(2, 2), torch.tensor([5, 5]), gen)
    assert rows.tolist() == []


class FakeFusion(torch.nn.Module):
    """fuse = masked mean of tokens + mean of patches; itm head = linear on that."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 2)

    def fuse(self, tokens, mask, patches):
        m = mask.unsqueeze(-1).float()
        return (tokens * m).sum(1) / m.sum(1) + patches.mean(1)

    def itm_logits(self, fused):
        return self.head(fused)


def test_itm_loss_builds_positives_and_hard_negatives():
    torch.manual_seed(0)
    model = FakeFusion()
    tokens = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    patches = torch.randn(3, 5, 2)
    ids = torch.tensor([1, 2, 3])
    # Very peaked similarities: image i's hardest negative text is (i+1) % 3, text j's is (j+2) % 3.
    logits = torch.full((3, 3), -50.0)
    for i in range(3):
        logits[i, i] = 50.0
        logits[i, (i + 1) % 3] = 20.0
    loss, stats = itm_loss(model, tokens, mask, patches, logits, ids, torch.Generator().manual_seed(1))
    neg_text = [1, 2, 0]     # for image i
    neg_image = [2, 0, 1]    # for text j: column j of logits peaks at row (j - 1) % 3
    t = torch.cat([tokens, tokens[neg_text], tokens])
    mk = torch.cat([mask, mask[neg_text], mask])
    p = torch.cat([patches, patches, patches[neg_image]])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0])
    expected = F.cross_entropy(model.itm_logits(model.fuse(t, mk, p)), labels)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert 0.0 <= stats["itm_acc"] <= 1.0
    loss.backward()
    assert model.head.weight.grad is not None
