"""The QCC loss on small cases computed by hand."""
import math

import pytest
import torch

from dashclip.losses.qcc import QCCLoss, qcc_loss, qcc_targets


def unit(angles_deg):
    """2-d unit vectors at the given angles: cosine with [1, 0] is cos(angle)."""
    a = torch.tensor([math.radians(x) for x in angles_deg])
    return torch.stack([a.cos(), a.sin()], dim=1)


def nll(pos, negs):
    """-log(e^pos / (e^pos + sum e^neg)), computed in plain Python."""
    return -math.log(math.exp(pos) / (math.exp(pos) + sum(math.exp(n) for n in negs)))


def cos(deg):
    return math.cos(math.radians(deg))


def test_targets_from_grades():
    g = torch.tensor([[2, 1, 0, -1, -2]])
    w, neg = qcc_targets(g, grade1_weight=0.0)
    assert w.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    # grade 1 with weight 0 is masked (not a negative); -2 (ignore) is neither
    assert neg.tolist() == [[False, False, True, True, False]]
    w, neg = qcc_targets(g, grade1_weight=0.5)
    assert w.tolist() == [[1.0, 0.5, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        qcc_targets(g, grade1_weight=-1)


def test_positives_never_compete_with_each_other():
    p = unit([0])
    q = unit([10, 50, 30])           # q0, q1 relevant, q2 graded 0
    grades = torch.tensor([[2, 2, 0]])
    loss = QCCLoss(temperature=1.0)(p, q, grades)
    expected = (nll(cos(10), [cos(30)]) + nll(cos(50), [cos(30)])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_false_negative_masking_across_products():
    # q0 was sampled for product 0 and q1 for product 1, but q0 is also relevant to product 1:
    # for product 1 it must be a positive, never a negative.
    p = unit([0, 90])
    q = unit([20, 80, 60])
    grades = torch.tensor([[2, -1, -1],
                           [2, 2, 0]])
    loss = QCCLoss(temperature=0.5)(p, q, grades)
    s = lambda pa, qa: math.cos(math.radians(pa - qa)) / 0.5  # noqa: E731
    l_p0 = nll(s(0, 20), [s(0, 80), s(0, 60)])
    l_p1 = [nll(s(90, 20), [s(90, 60)]), nll(s(90, 80), [s(90, 60)])]
    assert loss.item() == pytest.approx((l_p0 + sum(l_p1)) / 3, rel=1e-5)
    # Without the mask, q0 would push product 1 away from q0: a different (unmasked) loss.
    unmasked = QCCLoss(temperature=0.5)(p, q, torch.tensor([[2, -1, -1], [-1, 2, 0]]))
    assert unmasked.item() == pytest.approx((l_p0 + nll(s(90, 80), [s(90, 20), s(90, 60)])) / 2, rel=1e-5)
    assert unmasked.item() != pytest.approx(loss.item(), rel=1e-3)


def test_grade1_weight_masks_or_weights():
    p = unit([0])
    q = unit([10, 40, 70])           # grades 2, 1, 0
    grades = torch.tensor([[2, 1, 0]])
    masked = QCCLoss(temperature=1.0, grade1_weight=0.0)(p, q, grades)
    assert masked.item() == pytest.approx(nll(cos(10), [cos(70)]), rel=1e-5)
    # Moving the grade-1 query changes nothing while it is masked out.
    moved = QCCLoss(temperature=1.0, grade1_weight=0.0)(p, unit([10, -5, 70]), grades)
    assert moved.item() == pytest.approx(masked.item(), rel=1e-6)
    weighted = QCCLoss(temperature=1.0, grade1_weight=0.5)(p, q, grades)
    expected = (nll(cos(10), [cos(70)]) + 0.5 * nll(cos(40), [cos(70)])) / 1.5
    assert weighted.item() == pytest.approx(expected, rel=1e-5)


def test_symmetric_adds_query_anchored_side():
    p = unit([0, 90])
    q = unit([30, 60])
    grades = torch.tensor([[2, 0], [-1, 2]])
    c = lambda a, b: math.cos(math.radians(a - b))  # noqa: E731
    product_side = (nll(c(0, 30), [c(0, 60)]) + nll(c(90, 60), [c(90, 30)])) / 2
    query_side = (nll(c(0, 30), [c(90, 30)]) + nll(c(90, 60), [c(0, 60)])) / 2
    loss = QCCLoss(temperature=1.0, variant="symmetric")(p, q, grades)
    assert loss.item() == pytest.approx((product_side + query_side) / 2, rel=1e-5)


def test_graded_soft_target():
    p = unit([0])
    q = unit([10, 40, 70])           # grades 2, 1, 0; graded variant weighs grade 1 by 1/3
    loss = QCCLoss(temperature=1.0, variant="graded")(p, q, torch.tensor([[2, 1, 0]]))
    z = sum(math.exp(cos(a)) for a in (10, 40, 70))
    logp = [cos(a) - math.log(z) for a in (10, 40)]
    expected = -(0.75 * logp[0] + 0.25 * logp[1])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_no_positive_or_no_negative():
    p, q = unit([0]), unit([10, 20])
    assert qcc_loss(p, q, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)).item() == 0.0
    # A positive with no negative at all gives zero loss (nothing to push away from).
    assert QCCLoss()(p, q, torch.tensor([[2, 2]])).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        qcc_loss(p, q, torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        QCCLoss(variant="nope")


def test_learnable_temperature_gets_a_gradient():
    loss_fn = QCCLoss(temperature=0.1, learnable_temperature=True)
    assert loss_fn.temperature.item() == pytest.approx(0.1, rel=1e-5)
    q = unit([10, 80]).requires_grad_(True)
    loss = loss_fn(unit([0]), q, torch.tensor([[2, 0]]))
    loss.backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad.item() != 0
    assert q.grad is not None
    fixed = QCCLoss(temperature=0.1)
    assert not any(p.requires_grad for p in fixed.parameters())
