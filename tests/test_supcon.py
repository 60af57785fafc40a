"""SupCon and the Laplace NLL against hand computations."""
import math

import pytest
import torch

from transpose.losses import laplace_nll, supcon_loss


def hand_supcon(z, labels, t):
    """SupCon L_out with explicit loops (Khosla et al. 2020, eq. 2)."""
    n = len(z)
    total, anchors = 0.0, 0
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(sum(z[i][k] * z[a][k] for k in range(len(z[i]))) / t) for a in range(n) if a != i)
        s = 0.0
        for p in pos:
            num = math.exp(sum(z[i][k] * z[p][k] for k in range(len(z[i]))) / t)
            s += math.log(num / denom)
        total += -s / len(pos)
        anchors += 1
    return total / anchors


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


Z = [unit([1.0, 0.2, 0.0]), unit([0.9, 0.1, 0.3]), unit([-0.2, 1.0, 0.1]), unit([0.1, -0.5, 1.0])]


@pytest.mark.parametrize("labels,t", [([0, 0, 1, 1], 0.07), ([0, 0, 0, 1], 0.5), ([3, 1, 3, 1], 1.0)])
def test_supcon_matches_hand_computation(labels, t):
    z = torch.tensor(Z, dtype=torch.float64)
    got = supcon_loss(z, torch.tensor(labels), temperature=t)
    assert got.item() == pytest.approx(hand_supcon(Z, labels, t), rel=1e-10)


def test_supcon_hand_number_for_two_pairs():
    # two orthogonal pairs of identical embeddings at t = 1: every anchor has one positive (dot 1)
    # and two negatives (dot 0): L = -log(e / (e + 2))
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    got = supcon_loss(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert got.item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-12)


def test_supcon_mask_form_equals_label_form_and_skips_anchors_without_positives():
    z = torch.tensor(Z, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2])  # samples 2 and 3 have no positive: only anchors 0 and 1 count
    mask = labels[:, None] == labels[None, :]
    a = supcon_loss(z, labels, temperature=0.1)
    b = supcon_loss(z, positive_mask=mask, temperature=0.1)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert a.item() == pytest.approx(hand_supcon(Z, [0, 0, 1, 2], 0.1), rel=1e-10)
    # an asymmetric mask: only anchor 0 has a positive (1); anchor 1's row is empty
    only0 = torch.zeros(4, 4, dtype=torch.bool)
    only0[0, 1] = True
    c = supcon_loss(z, positive_mask=only0, temperature=0.1)
    logits = [sum(Z[0][k] * Z[a][k] for k in range(3)) / 0.1 for a in (1, 2, 3)]
    assert c.item() == pytest.approx(-(logits[0] - math.log(sum(math.exp(x) for x in logits))), rel=1e-10)


def test_supcon_gradient_matches_finite_differences_and_no_positive_is_zero():
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    supcon_loss(z, labels, temperature=0.2).backward()
    eps = 1e-6
    for i, k in [(0, 0), (1, 2), (3, 1)]:
        zp = torch.tensor(Z, dtype=torch.float64)
        zm = zp.clone()
        zp[i, k] += eps
        zm[i, k] -= eps
        fd = (supcon_loss(zp, labels, temperature=0.2) - supcon_loss(zm, labels, temperature=0.2)) / (2 * eps)
        assert z.grad[i, k].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)
    zero = supcon_loss(z, torch.tensor([0, 1, 2, 3]))
    assert zero.item() == 0.0 and zero.requires_grad


def test_supcon_rejects_bad_input():
    z = torch.tensor(Z)
    with pytest.raises(ValueError, match="exactly one"):
        supcon_loss(z)
    with pytest.raises(ValueError, match="labels must have 4"):
        supcon_loss(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(z, torch.tensor([0, 0, 1, 1]), temperature=0.0)


def test_laplace_nll_hand_value():
    err = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
    b = torch.tensor([[[0.5, 2.0], [1.0, 1.0]]])
    mask = torch.tensor([[[True, True], [False, True]]])
    expected = ((1.0 + math.log(0.5)) + (0.5 + math.log(2.0)) + 0.0) / 3
    assert laplace_nll(err, b, mask).item() == pytest.approx(expected, rel=1e-6)
