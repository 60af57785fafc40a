"""APR models: forward shapes, scene selection, hypernetwork layers, MC dropout, short training runs."""
import math

import pytest
import torch
import torch.nn.functional as F

from transpose.geometry import quat_angle_deg_torch
from transpose.losses import FixedWeightPoseLoss, LearnedWeightPoseLoss, apr_loss, apr_pose_errors
from transpose.models.backbones import EfficientNet
from transpose.models.hyperpose import HyperPose, HyperRegressor, MSHyperPose, batched_linear
from transpose.models.mstransformer import MSTransformer
from transpose.models.posenet import PoseNet, average_quaternions, mc_dropout_predict

TINY_EFFNET = dict(width_mult=0.25, depth_mult=0.34)
TINY_MST = dict(hidden_dim=32, nheads=4, dim_feedforward=64, num_t_encoder_layers=1, num_t_decoder_layers=1,
                num_rot_encoder_layers=1, num_rot_decoder_layers=1, head_hidden_dim=64, backbone_kwargs=TINY_EFFNET)


def _check_pose_output(out, batch=2):
    assert out["position"].shape == (batch, 3) and out["quaternion"].shape == (batch, 4)
    assert torch.isfinite(out["position"]).all() and torch.isfinite(out["quaternion"]).all()


def test_posenet_forward_shapes_and_aux_heads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    net = PoseNet("googlenet").eval()
    with torch.no_grad():
        out = net(x)
    _check_pose_output(out)
    assert "aux" not in out
    assert net.head.fc.out_features == 2048
    # train mode adds the two aux pose heads (small images keep this fast: the aux heads pool to 4x4)
    net.train()
    out = net(torch.randn(2, 3, 64, 64))
    _check_pose_output(out)
    assert len(out["aux"]) == 2
    for head in out["aux"]:
        _check_pose_output(head)
    # the aux losses reach the aux heads (weights 0.3, 0.3, 1.0)
    total, parts = apr_loss(out, torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2),
                            FixedWeightPoseLoss(beta=100.0))
    total.backward()
    assert set(parts) == {"pose", "aux1", "aux2", "total"}
    assert net.aux_heads[0].fc_position.weight.grad.abs().sum() > 0
    assert net.backbone.aux2.fc1.weight.grad.abs().sum() > 0
    assert not any(k.endswith("fc2.weight") for k in net.state_dict())  # ImageNet classifiers removed
    res = PoseNet("resnet34").eval()
    with torch.no_grad():
        _check_pose_output(res(x))
    with pytest.raises(ValueError, match="backbone must be 'googlenet' or 'resnet34'"):
        PoseNet("vgg16")


def test_mstransformer_shapes_and_scene_selection():
    torch.manual_seed(0)
    num_scenes = 3
    net = MSTransformer(num_scenes, hidden_dim=64, nheads=8, dim_feedforward=64, num_t_encoder_layers=1,
                        num_t_decoder_layers=1, num_rot_encoder_layers=1, num_rot_decoder_layers=1).eval()
    assert net.transformer_t.encoder_layers[0].self_attn.num_heads == 8  # what was asked, not a silent default
    assert net.input_proj_t.in_channels == 112 and net.input_proj_rot.in_channels == 40
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = net(x)
        forced = net(x[:, :, :96, :96], scene=torch.tensor([2, 0]))
    _check_pose_output(out)
    assert out["scene_log_probs"].shape == (2, num_scenes)
    assert torch.allclose(out["scene_log_probs"].exp().sum(1), torch.ones(2), atol=1e-5)
    assert torch.equal(out["scene"], out["scene_log_probs"].argmax(1))
    assert forced["scene"].tolist() == [2, 0]
    # per-scene heads: each sample goes through the head of its selected scene
    for i, s in enumerate(forced["scene"].tolist()):
        with torch.no_grad():
            expect_t = net.regressor_head_t[s](forced["desc_t"][i:i + 1])
            expect_q = net.regressor_head_rot[s](forced["desc_rot"][i:i + 1])
        assert torch.allclose(forced["position"][i], expect_t[0], atol=1e-6)
        assert torch.allclose(forced["quaternion"][i], expect_q[0], atol=1e-6)
    # the selection changes which query's output reaches the heads, not the scene classifier
    with torch.no_grad():
        free = net(x[:, :, :96, :96])
    assert torch.allclose(free["scene_log_probs"], forced["scene_log_probs"])
    for i in range(2):
        same = bool(free["scene"][i] == forced["scene"][i])
        assert torch.allclose(free["desc_t"][i], forced["desc_t"][i]) == same
    with pytest.raises(ValueError, match=r"scene ids must be \(B,\) in \[0, 3\)"):
        net(x[:, :, :64, :64], scene=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="not divisible by nheads"):
        MSTransformer(2, hidden_dim=30, nheads=4, backbone_kwargs=TINY_EFFNET)
    shared = MSTransformer(4, shared_heads=True, **TINY_MST)
    assert len(shared.regressor_head_t) == 1
    _check_pose_output(shared(torch.randn(2, 3, 64, 64), scene=torch.tensor([1, 3])))


def test_hyperpose_layers_and_shapes():
    torch.manual_seed(0)
    x = torch.randn(3, 5)
    wb = torch.randn(3, 6, 2)
    expected = torch.stack([F.linear(x[i], wb[i, :5].T, wb[i, 5]) for i in range(3)])
    assert torch.allclose(batched_linear(x, wb), expected, atol=1e-6)
    with pytest.raises(ValueError, match="batched_linear"):
        batched_linear(x, wb[:, :5])
    reg = HyperRegressor([5, 4, 2])
    w1, w2 = torch.randn(3, 6 * 4), torch.randn(3, 5 * 2)
    hidden = F.silu(batched_linear(x, w1.view(3, 6, 4)))
    assert torch.allclose(reg(x, [w1, w2]), batched_linear(hidden, w2.view(3, 5, 2)), atol=1e-6)

    # authors' sizes: 256 / 512 hypernetworks on EfficientNet-B0. Train mode (batch statistics) without
    # dropout or stochastic depth: deterministic, and the features of a fresh network do not vanish
    # the way they do through BatchNorm's initial running statistics in eval mode
    net = HyperPose(dropout=0.0, backbone_kwargs={"stochastic_depth_prob": 0.0}).train()
    assert net.hypernet_t_fc_h2.out_features == 3 * 257 and net.hypernet_rot_fc_h2.out_features == 4 * 513
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = net(img)
        g = net.backbone.extract_endpoints(img, ["pooled"])["pooled"]
        static = net.fc2(F.relu(net.fc1(g)))
        # the hypernetwork part: a linear map whose weights differ per image
        w_t = net.hypernet_t_fc_h2(F.silu(net.hyper_in_t_fc_2(net.hyper_in_t_proj(g)))).view(2, 257, 3)
        hyper_t = batched_linear(net.hyper_in_t(g), w_t)
    _check_pose_output(out)
    assert (w_t[0] - w_t[1]).abs().max() > 1e-2 * w_t.abs().max()
    assert hyper_t.abs().max() > 1e-3
    assert torch.allclose(out["position"] - static, hyper_t, atol=1e-4 * (1 + hyper_t.abs().max().item()))

    ms = MSHyperPose(3, hyper_dim_t=16, hyper_dim_rot=32, **TINY_MST).eval()
    with torch.no_grad():
        out = ms(torch.randn(2, 3, 224, 224))
    _check_pose_output(out)
    assert out["scene_log_probs"].shape == (2, 3) and len(ms.regressor_head_t) == 1
    assert ms.hyper_t.regressor.dims == [32, 16, 8, 3] and ms.hyper_rot.regressor.dims == [32, 32, 32, 4]


def _random_quaternions(n, generator):
    return F.normalize(torch.randn(n, 4, generator=generator, dtype=torch.float64), dim=1)


def test_average_quaternions():
    gen = torch.Generator().manual_seed(0)
    q = _random_quaternions(5, gen)
    # identical samples with arbitrary signs average to that rotation (w >= 0)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)[:, None, None]
    same = q[None].expand(5, 5, 4).transpose(0, 1) * signs.transpose(0, 1)  # (5 sets, 5 samples, 4)
    mean = average_quaternions(same)
    canonical = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(mean, canonical, atol=1e-9)
    # +/- 30 deg about z around a base rotation average to the base rotation; the naive mean of
    # sign-flipped copies would not even be a rotation
    half = math.radians(30) / 2
    qa = torch.tensor([math.cos(half), 0, 0, math.sin(half)], dtype=torch.float64)
    qb = torch.tensor([math.cos(half), 0, 0, -math.sin(half)], dtype=torch.float64)
    mean = average_quaternions(torch.stack([qa, -qb])[None])[0]
    assert torch.allclose(mean, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), atol=1e-9)
    # weights pull the mean toward the heavier sample
    mean_w = average_quaternions(torch.stack([qa, qb])[None], torch.tensor([[3.0, 1.0]], dtype=torch.float64))[0]
    assert 0 < quat_angle_deg_torch(mean_w, qa).item() < 15.0
    with pytest.raises(ValueError, match="expected"):
        average_quaternions(torch.ones(3))


def test_mc_dropout_variance_and_state():
    torch.manual_seed(0)
    net = PoseNet("resnet34", backbone_width=8, hidden_dim=64).eval()
    x = torch.randn(2, 3, 64, 64)
    res = mc_dropout_predict(net, x, num_samples=12)
    assert res["position_samples"].shape == (12, 2, 3) and res["quaternion_samples"].shape == (12, 2, 4)
    assert (res["position_var"] > 0).all() and (res["rotation_var_deg2"] > 0).all()
    assert torch.allclose(res["position"], res["position_samples"].mean(0))
    assert torch.allclose(res["quaternion"].norm(dim=1), torch.ones(2), atol=1e-5) and (res["quaternion"][:, 0] >= 0).all()
    assert torch.allclose(res["position_std"] ** 2, res["position_var"].sum(1), rtol=1e-5)
    assert not net.training and not net.head.dropout.training  # state restored
    # without dropout every sample is the same: zero variance, mean = the deterministic output
    net0 = PoseNet("resnet34", backbone_width=8, hidden_dim=64, dropout=0.0).eval()
    res0 = mc_dropout_predict(net0, x, num_samples=3)
    with torch.no_grad():
        det = net0(x)
    assert torch.allclose(res0["position_var"], torch.zeros(2, 3), atol=1e-10)
    assert torch.allclose(res0["position"], det["position"], atol=1e-6)
    assert quat_angle_deg_torch(res0["quaternion"], det["quaternion"]).max() < 1e-2


# ------------------------------------------------------------------ tiny synthetic regression problem

def _synthetic(n, size, generator):
    """Images whose channel means encode the position and whose horizontal ramp encodes a yaw angle."""
    position = torch.rand(n, 3, generator=generator) * 2 - 1
    yaw = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(60)
    q = torch.stack([torch.cos(yaw / 2), torch.zeros(n), torch.zeros(n), torch.sin(yaw / 2)], 1)
    ramp = torch.linspace(-1, 1, size).view(1, 1, 1, size)
    img = position.view(n, 3, 1, 1) + (yaw / math.radians(60)).view(n, 1, 1, 1) * ramp
    img = img + 0.2 * torch.randn(n, 3, size, size, generator=generator)
    return img, position, q


def _fit(net, steps, lr=3e-3, size=32, n=16, scene_ids=None):
    """Full-batch Adam on n synthetic images; mean (position m, rotation deg) errors before and after.

    Errors are measured in train mode (BatchNorm on batch statistics; the models are built without
    dropout) because a few dozen steps leave BatchNorm's running statistics far from converged."""
    gen = torch.Generator().manual_seed(0)
    images, position, quaternion = _synthetic(n, size, gen)
    criterion = LearnedWeightPoseLoss(s_x=0.0, s_q=-1.0)
    params = [p for p in net.parameters() if p.requires_grad] + list(criterion.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    kwargs = {} if scene_ids is None else {"scene": scene_ids}
    net.train()
    errors = []
    for step in range(steps + 1):
        out = net(images, **kwargs)
        pos_err, rot_err = apr_pose_errors(out["position"].detach(), out["quaternion"].detach(), position, quaternion)
        errors.append((pos_err.mean().item(), rot_err.mean().item()))
        if step == steps:
            break
        loss, _ = apr_loss(out, position, quaternion, criterion, gt_scene=scene_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return errors[0], errors[-1]


def test_posenet_training_lowers_error():
    torch.manual_seed(0)
    net = PoseNet("resnet34", backbone_width=8, hidden_dim=128, dropout=0.0)
    (pos0, rot0), (pos1, rot1) = _fit(net, steps=20)
    assert pos1 < 0.3 * pos0, (pos0, pos1)  # measured: 0.98 m -> 0.12 m
    assert rot1 < 0.3 * rot0, (rot0, rot1)  # measured: 41 deg -> 2 deg


def _frozen_tiny_effnet():
    """A tiny EfficientNet whose weights stay fixed (its BatchNorm still follows the batches in
    train mode). Depthwise-convolution backward passes are slow on CPU; gradients through the
    backbone are checked separately in test_backbone_receives_gradients."""
    backbone = EfficientNet(**TINY_EFFNET, stochastic_depth_prob=0.0)
    backbone.requires_grad_(False)
    return backbone


def test_mstransformer_and_hyperpose_training_lower_error():
    torch.manual_seed(0)
    net = MSTransformer(2, **{**TINY_MST, "backbone_kwargs": None, "dropout": 0.0}, backbone=_frozen_tiny_effnet())
    # half the samples belong to each scene: both queries and both per-scene heads are trained
    (pos0, rot0), (pos1, rot1) = _fit(net, steps=20, scene_ids=torch.arange(16) % 2)
    assert pos1 < 0.3 * pos0, (pos0, pos1)  # measured: 1.7 m -> 0.10 m
    assert rot1 < 0.3 * rot0, (rot0, rot1)  # measured: 153 deg -> 6 deg
    torch.manual_seed(0)
    hyper = HyperPose(hyper_dim_t=16, hyper_dim_rot=16, latent_dim=64, dropout=0.0, backbone=_frozen_tiny_effnet())
    (pos0, rot0), (pos1, rot1) = _fit(hyper, steps=20)
    assert pos1 < 0.3 * pos0, (pos0, pos1)  # measured: 8.1 m -> 0.41 m
    assert rot1 < 0.3 * rot0, (rot0, rot1)  # measured: 128 deg -> 3 deg


def test_backbone_receives_gradients():
    torch.manual_seed(0)
    for net in (MSTransformer(2, **TINY_MST), MSHyperPose(2, hyper_dim_t=8, hyper_dim_rot=8, **TINY_MST)):
        out = net(torch.randn(2, 3, 32, 32), scene=torch.tensor([0, 1]))
        loss, _ = apr_loss(out, torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), LearnedWeightPoseLoss(),
                           gt_scene=torch.tensor([0, 1]))
        loss.backward()
        assert net.backbone.features[0][0].weight.grad.abs().sum() > 0
        assert net.query_embed_t.weight.grad.abs().sum() > 0 and net.scene_embed.weight.grad.abs().sum() > 0


def test_shipped_configs_and_factory():
    from transpose.losses import build_pose_criterion
    from transpose.models.apr import build_apr_model, load_apr_config

    seven = load_apr_config("7Scenes", "ms-transformer")
    cambridge = load_apr_config("CambridgeLandmarks", "ms-transformer")
    assert seven["num_scenes"] == 7 and cambridge["num_scenes"] == 4
    assert (seven["num_rot_encoder_layers"], cambridge["num_rot_encoder_layers"]) == (4, 6)
    assert (cambridge["s_x"], cambridge["s_q"], cambridge["equalize_scenes"]) == (-3.0, -6.5, True)
    assert seven["reduction"] == ["reduction_4", "reduction_3"] and seven["nheads"] == 4
    net = build_apr_model(seven)
    assert isinstance(net, MSTransformer) and net.num_scenes == 7
    assert len(net.transformer_t.encoder_layers) == 6 and len(net.transformer_rot.decoder_layers) == 4
    assert net.transformer_rot.decoder_layers[0].multihead_attn.num_heads == 4 and net.hidden_dim == 256
    loss = build_pose_criterion(cambridge)
    assert isinstance(loss, LearnedWeightPoseLoss) and loss.s_q.item() == -6.5
    hyper_cfg = {**load_apr_config("CambridgeLandmarks", "hyperpose"), "backbone_kwargs": TINY_EFFNET}
    hyper = build_apr_model(hyper_cfg)
    assert isinstance(hyper, HyperPose) and hyper.hypernet_rot_fc_h2.out_features == 4 * 513
    ms_hyper = build_apr_model({**load_apr_config("7Scenes", "ms-hyperpose"), "hidden_dim": 32, "hyper_dim_t": 8,
                                "hyper_dim_rot": 8, "backbone_kwargs": TINY_EFFNET})
    assert isinstance(ms_hyper, MSHyperPose) and ms_hyper.num_scenes == 7
    posenet = build_apr_model({**load_apr_config("7Scenes", "posenet"), "backbone": "resnet34", "backbone_width": 8})
    assert isinstance(posenet, PoseNet) and posenet.head.fc.out_features == 2048
    with pytest.raises(ValueError, match="has no section 'atloc'"):
        load_apr_config("7Scenes", "atloc")
    with pytest.raises(ValueError, match="neither a file nor one of"):
        load_apr_config("Aachen", "posenet")
    with pytest.raises(ValueError, match="'model' must be one of"):
        build_apr_model({"model": "vit"})
