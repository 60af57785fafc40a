"""SupCon and the Laplace NLL against hand computations."""
import math

import pytest
import torch

from transpose.losses import cell_contrastive_loss, laplace_nll, supcon_loss


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


def test_ignore_mask_leaves_pairs_out_of_positives_and_denominator():
    z = torch.tensor(Z, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 2] = True  # anchor 0 neither counts 2 as a positive nor sees it in its denominator
    got = supcon_loss(z, labels, temperature=0.2, ignore_mask=ignore)
    dot = lambda i, j: sum(Z[i][k] * Z[j][k] for k in range(3)) / 0.2  # noqa: E731
    row0 = -(dot(0, 1) - math.log(math.exp(dot(0, 1)) + math.exp(dot(0, 3))))
    rest = _hand_row(1, [0, 2], [0, 2, 3], dot) + _hand_row(2, [0, 1], [0, 1, 3], dot)
    assert got.item() == pytest.approx((row0 + rest) / 3, rel=1e-10)
    with pytest.raises(ValueError, match="ignore_mask"):
        supcon_loss(z, labels, ignore_mask=torch.zeros(3, 3, dtype=torch.bool))


def _hand_row(i, positives, others, dot):
    denom = math.log(sum(math.exp(dot(i, a)) for a in others))
    return -sum(dot(i, p) - denom for p in positives) / len(positives)


def _cells(values):
    """(B, D or 3, h=1, w) from a nested list [frame][cell] of vectors."""
    return torch.tensor(values, dtype=torch.float64).permute(0, 2, 1)[:, :, None, :]


def test_cell_contrastive_loss_matches_hand_computation():
    # two frames of three cells (cell k of frame b is index 3 b + k). Cells 0 and 2 of frame 0 are
    # 1 cm apart, but pairs inside a frame never count; each is ~2 cm from cell 0 of frame 1
    # (positives at radius 5 cm) and ~7 cm from cell 2 of frame 1 (between 5 and 10 cm: left out
    # of both positives and denominator); everything else is far apart (negatives).
    points = _cells([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.01, 0.0]],
                     [[0.02, 0.0, 0.0], [3.0, 0.0, 0.0], [0.07, 0.0, 0.0]]])
    emb = [[unit([1.0, 0.1, 0.0]), unit([0.0, 1.0, 0.2]), unit([0.3, 0.3, 1.0])],
           [unit([0.9, 0.2, 0.1]), unit([-1.0, 0.2, 0.0]), unit([0.1, 1.0, 0.0])]]
    valid = torch.ones(2, 1, 3, dtype=torch.bool)
    got = cell_contrastive_loss(_cells(emb), points, valid, radius=0.05, negative_radius=0.1, temperature=0.5)
    flat = emb[0] + emb[1]
    dot = lambda i, j: sum(flat[i][k] * flat[j][k] for k in range(3)) / 0.5  # noqa: E731
    rows = [_hand_row(0, [3], [3, 4], dot), _hand_row(2, [3], [3, 4], dot), _hand_row(3, [0, 2], [0, 1, 2], dot)]
    assert got.item() == pytest.approx(sum(rows) / 3, rel=1e-10)
    # an invalid cell takes no part: dropping cell 0 of frame 1 leaves no positive pair at all
    valid[1, 0, 0] = False
    zero = cell_contrastive_loss(_cells(emb).requires_grad_(), points, valid, radius=0.05)
    assert zero.item() == 0.0 and zero.requires_grad


def test_cell_contrastive_loss_subsamples_and_rejects_bad_input():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(3, 8, 4, 5), dim=1)
    points = torch.rand(3, 3, 4, 5)
    valid = torch.ones(3, 4, 5, dtype=torch.bool)
    full = cell_contrastive_loss(emb, points, valid, radius=0.3)
    g = torch.Generator().manual_seed(1)
    sub = cell_contrastive_loss(emb, points, valid, radius=0.3, max_cells=20, generator=g)
    assert torch.isfinite(full) and torch.isfinite(sub) and full.item() != sub.item()
    with pytest.raises(ValueError, match="radius"):
        cell_contrastive_loss(emb, points, valid, radius=0.0)
    with pytest.raises(ValueError, match="negative_radius"):
        cell_contrastive_loss(emb, points, valid, radius=0.3, negative_radius=0.1)
    with pytest.raises(ValueError, match="cell for cell"):
        cell_contrastive_loss(emb, points[:, :, :3], valid, radius=0.3)


def test_cell_contrastive_loss_cross_domain_only():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(3, 4, 2, 3, dtype=torch.float64), dim=1)
    points = torch.rand(3, 3, 2, 3, dtype=torch.float64)
    points[2] = points[0] + 0.01  # frame 2 sees what frame 0 sees
    valid = torch.ones(3, 2, 3, dtype=torch.bool)
    plain = cell_contrastive_loss(emb, points, valid, radius=0.05)
    # every frame its own domain: every cross-frame pair is a cross-domain pair, nothing changes
    assert cell_contrastive_loss(emb, points, valid, radius=0.05, domains=torch.tensor([0, 1, 2])).item() == \
        pytest.approx(plain.item(), rel=1e-12)
    # frames 0 and 2 in one domain: their close pairs are left out and no positive remains (frame 1
    # sees other points), unless another frame's cells happen to be close
    far = points.clone()
    far[1] += 10.0
    assert cell_contrastive_loss(emb, far, valid, radius=0.05).item() > 0
    assert cell_contrastive_loss(emb, far, valid, radius=0.05, domains=torch.tensor([0, 1, 0])).item() == 0.0
    with pytest.raises(ValueError, match="domains"):
        cell_contrastive_loss(emb, points, valid, radius=0.05, domains=torch.tensor([0, 1]))
