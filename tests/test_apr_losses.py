"""APR losses against hand computations on small tensors."""
import math

import pytest
import torch

from transpose.losses import (FixedWeightPoseLoss, LearnedWeightPoseLoss, apr_loss, apr_pose_errors,
                                  apr_pose_matrix, build_pose_criterion, orientation_loss, position_loss,
                                  scene_nll_loss)

# two samples; distances worked out by hand below
PRED_X = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
GT_X = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])  # |dx| = 3 and 5 -> mean 4 (L1 norms: 5, 7 -> 6)
PRED_Q = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])  # normalized: (1,0,0,0), (0,0,0,1)
GT_Q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)]])
# |q - g|: 0 and sqrt((0.7071)^2 + (1 - 0.7071)^2) = sqrt(2 - sqrt(2)) = 0.765367 -> mean 0.382683
LQ = math.sqrt(2 - math.sqrt(2)) / 2


def test_position_and_orientation_losses():
    assert position_loss(PRED_X, GT_X).item() == pytest.approx(4.0)
    assert position_loss(PRED_X, GT_X, norm=1).item() == pytest.approx(6.0)
    assert orientation_loss(PRED_Q, GT_Q).item() == pytest.approx(LQ, abs=1e-6)
    # q and -q: the plain distance is 2, the sign-invariant one 0
    q = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert orientation_loss(-q, q).item() == pytest.approx(2.0)
    assert orientation_loss(-q, q, sign_invariant=True).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match=r"position_loss: expected .*\(B, 3\)"):
        position_loss(PRED_X[:, :2], GT_X[:, :2])


def test_fixed_and_learned_weights():
    fixed = FixedWeightPoseLoss(beta=10.0)
    assert fixed(PRED_X, PRED_Q, GT_X, GT_Q).item() == pytest.approx(4.0 + 10.0 * LQ, rel=1e-6)
    learned = LearnedWeightPoseLoss()  # s_x = 0, s_q = -3
    expected = 4.0 * math.exp(0.0) + 0.0 + LQ * math.exp(3.0) - 3.0
    loss = learned(PRED_X, PRED_Q, GT_X, GT_Q)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # dL/ds_x = -exp(-s_x) L_x + 1, dL/ds_q = -exp(-s_q) L_q + 1
    assert learned.s_x.grad.item() == pytest.approx(-4.0 + 1.0, rel=1e-6)
    assert learned.s_q.grad.item() == pytest.approx(-LQ * math.exp(3.0) + 1.0, rel=1e-5)
    cfg = build_pose_criterion({"learnable": True, "s_x": -3.0, "s_q": -6.5})
    assert isinstance(cfg, LearnedWeightPoseLoss) and cfg.s_q.item() == -6.5 and cfg.s_q.requires_grad
    frozen = build_pose_criterion({"learnable": False, "s_x": 0.0, "s_q": -3.0})
    assert not frozen.s_x.requires_grad
    assert frozen(PRED_X, PRED_Q, GT_X, GT_Q).item() == pytest.approx(expected, rel=1e-6)
    assert isinstance(build_pose_criterion({"learnable": False, "beta": 250}), FixedWeightPoseLoss)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        FixedWeightPoseLoss(beta=-1)


def test_scene_nll_and_combined_loss():
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    gt = torch.tensor([1, 2])
    nll = (math.log(4.0) - math.log(0.8)) / 2
    assert scene_nll_loss(log_probs, gt).item() == pytest.approx(nll, rel=1e-6)
    fixed = FixedWeightPoseLoss(beta=10.0)
    main = 4.0 + 10.0 * LQ
    out = {"position": PRED_X, "quaternion": PRED_Q, "scene_log_probs": log_probs}
    total, parts = apr_loss(out, GT_X, GT_Q, fixed, gt_scene=gt)
    assert total.item() == pytest.approx(main + nll, rel=1e-6)
    assert parts["pose"] == pytest.approx(main, rel=1e-6) and parts["scene"] == pytest.approx(nll, rel=1e-6)
    # GoogLeNet aux heads: 0.3 L(aux1) + 0.3 L(aux2) + 1.0 L(main); aux1 exact, aux2 off by 1 m in x
    aux1 = {"position": GT_X, "quaternion": GT_Q}
    aux2 = {"position": GT_X + torch.tensor([1.0, 0.0, 0.0]), "quaternion": GT_Q}
    total, parts = apr_loss({"position": PRED_X, "quaternion": PRED_Q, "aux": [aux1, aux2]}, GT_X, GT_Q, fixed)
    assert parts["aux1"] == pytest.approx(0.0, abs=1e-6) and parts["aux2"] == pytest.approx(1.0, rel=1e-6)
    assert total.item() == pytest.approx(0.3 * 0.0 + 0.3 * 1.0 + 1.0 * main, rel=1e-6)
    with pytest.raises(ValueError, match="2 aux heads need 3 aux_weights"):
        apr_loss({"position": PRED_X, "quaternion": PRED_Q, "aux": [aux1, aux2]}, GT_X, GT_Q, fixed, aux_weights=(1.0,))


def test_pose_errors_and_matrix():
    pos_err, rot_err = apr_pose_errors(PRED_X, PRED_Q, GT_X, GT_Q)
    assert torch.allclose(pos_err, torch.tensor([3.0, 5.0]))
    # second sample: identity-to-90-deg-about-z target vs 180-deg about z prediction -> 90 deg apart
    assert torch.allclose(rot_err, torch.tensor([0.0, 90.0]), atol=1e-3)
    T = apr_pose_matrix(GT_X, GT_Q)
    assert T.shape == (2, 4, 4)
    assert torch.allclose(T[1, :3, :3], torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6)
    assert torch.allclose(T[:, :3, 3], GT_X) and torch.equal(T[:, 3], torch.tensor([[0.0, 0, 0, 1]] * 2))
