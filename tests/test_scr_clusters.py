"""The cluster-classification coordinate head: k-means, loss, network, and that training learns."""
import math

import numpy as np
import torch

from transpose import cli
from transpose.losses import cluster_loss, kmeans
from transpose.models.scr import SCRNet
from transpose.train.logger import read_csv_log


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    pts = torch.cat([c + 0.1 * torch.randn(200, 3, generator=g) for c in true])
    found = kmeans(pts, 3, seed=1)
    d = torch.cdist(true, found)
    assert d.min(dim=1).values.max() < 0.05


def test_cluster_loss_matches_hand_computation():
    centers = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([0.9, 0.0, 0.0]).view(1, 3, 1, 1)      # nearest centre: 1
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # p(1) = 3/4
    offsets = torch.tensor([0.0, 0.1, 0.0]).view(1, 3, 1, 1)      # centre 1 + offset = (1, 0.1, 0)
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    loss, stats = cluster_loss(logits, offsets, centers, target, mask)
    expected = -math.log(0.75) + math.hypot(0.1, 0.1)
    assert abs(loss.item() - expected) < 1e-6 and stats["accuracy"].item() == 1.0


def test_network_decodes_center_plus_offset():
    net = SCRNet(width=0.25, num_clusters=8)
    net.cluster_centers.copy_(torch.arange(24, dtype=torch.float32).view(8, 3))
    coords, _ = net(torch.randn(1, 1, 32, 32))
    logits, offsets = net.cluster_outputs()
    expected = net.cluster_centers[logits.argmax(1)].permute(0, 3, 1, 2) + offsets
    assert torch.equal(coords, expected)
    clone = SCRNet.from_options(net.options())
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone.cluster_centers, net.cluster_centers)


def test_training_with_clusters_learns(tmp_path):
    from transpose.data.synthetic import render_scene

    render_scene(tmp_path / "s", "indoor", frames=8, width=160, height=120, seed=0, progress=False)
    net = tmp_path / "c.net"
    assert cli._run("train_init", [str(tmp_path / "s"), str(net), "--section", "train_sim", "--clusters", "64",
                                   "--iterations", "300", "--width", "0.5", "--no_augment", "--learningrate", "2e-3",
                                   "--seed", "0"]) == 0
    err = np.asarray(read_csv_log(tmp_path / "c_log" / "log.csv")["coord_error"])
    assert err[-3:].mean() < 0.5 * err[:3].mean()

    # --init fine-tunes that network: its width, head, centres and weights, whatever the flags say
    from transpose.train.scr import load_network

    before, _ = load_network(net)
    tuned = tmp_path / "t.net"
    assert cli._run("train_init", [str(tmp_path / "s"), str(tuned), "--section", "train_sim", "--init", str(net),
                                   "--width", "1.0", "--clusters", "8", "--iterations", "20", "--no_augment",
                                   "--learningrate", "1e-5", "--seed", "0"]) == 0
    err_tuned = np.asarray(read_csv_log(tmp_path / "t_log" / "log.csv")["coord_error"])
    assert err_tuned.mean() < 0.5 * err[:3].mean()  # starts where the first run ended, not from scratch
    after, options = load_network(tuned)
    assert options["width"] == 0.5 and options["num_clusters"] == 64
    assert torch.equal(after.cluster_centers, before.cluster_centers)
    assert cli._run("train_init", [str(tmp_path / "s"), str(tmp_path / "x.net"), "--init",
                                   str(tmp_path / "missing.net")]) == 2


def test_cluster_confidence_matches_hand_computation():
    from transpose.models.scr import cluster_confidence

    p = torch.tensor([0.7, 0.1, 0.1, 0.1])
    conf = cluster_confidence(p.log().view(1, 4, 1, 1))
    assert abs(conf[0, 0, 0, 0].item() - math.log(0.3)) < 1e-6
    assert abs(conf[0, 1, 0, 0].item() - float(-(p * p.log()).sum())) < 1e-6
    # near-certain cells keep their resolution: 1 - p_max = 3e-12 is not rounded to 0
    certain = torch.tensor([0.0, -30.0, -30.0, -30.0]).view(1, 4, 1, 1)
    assert abs(cluster_confidence(certain)[0, 0, 0, 0].item() - (math.log(3.0) - 30.0)) < 1e-4


def test_sigma_confidence_starts_at_the_head_and_old_checkpoints_load():
    torch.manual_seed(0)
    net = SCRNet(width=0.25, num_clusters=8, uncertainty=True)
    assert net.sigma_confidence is not None and net.options()["sigma_confidence"] is True
    # an older checkpoint (no sigma_confidence in its options or weights) loads as before
    old_options = {k: v for k, v in net.options().items() if k != "sigma_confidence"}
    old = SCRNet.from_options(old_options)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("sigma_confidence.")}
    old.load_state_dict(state)
    assert old.sigma_confidence is None
    image = torch.randn(1, 1, 32, 32)
    _, sigma_new = net(image)
    _, sigma_old = old(image)
    assert torch.allclose(sigma_new, sigma_old)  # zero start: the head's sigma alone
    with torch.no_grad():
        net.sigma_confidence.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    _, sigma = net(image)
    expected = torch.exp((sigma_old.log() + _last_confidence(net)[:, :1]).clamp(-6.0, 3.0))
    assert torch.allclose(sigma, expected, rtol=1e-5)
    try:
        SCRNet(width=0.25, num_clusters=0, uncertainty=True, sigma_confidence=True)
    except ValueError as exc:
        assert "sigma_confidence" in str(exc)
    else:
        raise AssertionError("sigma_confidence without clusters must raise")


def test_init_from_an_older_cluster_network_adds_the_confidence_term_at_zero(tmp_path):
    from transpose.train.checkpoint import save_checkpoint
    from transpose.train.scr import KIND, InitConfig, build_network

    torch.manual_seed(0)
    old = SCRNet(width=0.25, num_clusters=8, uncertainty=True, sigma_confidence=False)
    options = {k: v for k, v in old.options().items() if k != "sigma_confidence"}  # as saved before the term
    save_checkpoint(tmp_path / "old.net", kind=KIND, model=old, options=options, iteration=100)
    net = build_network(InitConfig(scene="unused", out=str(tmp_path / "new.net"), init=str(tmp_path / "old.net")), [])
    assert net.sigma_confidence is not None and net.options()["sigma_confidence"] is True
    assert not net.sigma_confidence.weight.detach().any()
    image = torch.randn(1, 1, 32, 32)
    old.eval(), net.eval()
    for a, b in zip(old(image), net(image)):
        assert torch.equal(a, b)  # the same network until training moves the term
    assert not net.add_sigma_confidence()  # once only
    assert not SCRNet(width=0.25, num_clusters=8, uncertainty=False).add_sigma_confidence()


def _last_confidence(net):
    from transpose.models.scr import cluster_confidence

    return cluster_confidence(net.cluster_outputs()[0])


def test_parameter_groups_speed_up_only_the_sigma_head():
    from transpose.train.scr import SIGMA_LR_FACTOR, parameter_groups

    net = SCRNet(width=0.25, num_clusters=8, uncertainty=True)
    groups = parameter_groups(net, 1e-3)
    sigma_ids = {id(p) for m in (net.sigma_head, net.sigma_confidence) for p in m.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 1e-3 * SIGMA_LR_FACTOR]
    assert {id(p) for p in groups[1]["params"]} == sigma_ids
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    assert len(parameter_groups(SCRNet(width=0.25), 1e-3)) == 1


def test_weighting_uses_inverse_variance(monkeypatch):
    from transpose import evaluate, ransac

    seen = {}
    monkeypatch.setattr(ransac, "estimate_pose", lambda coords, K, stride, weights=None, **kw: seen.update(w=weights))
    sigma = np.array([[0.5, 2.0]])
    evaluate.solve_frame(np.zeros((3, 1, 2)), np.eye(3), sigma, evaluate.RansacOptions(uncertainty="weight"))
    assert np.allclose(seen["w"], [[4.0, 0.25]])


def test_uncertain_cluster_network_is_weighted_by_default(tmp_path):
    import json

    from transpose.data.synthetic import render_scene
    from transpose.train.scr import load_network

    render_scene(tmp_path / "s", "indoor", frames=6, width=96, height=64, seed=0, progress=False)
    net = tmp_path / "u.net"
    assert cli._run("train_init", [str(tmp_path / "s"), str(net), "--section", "train_sim", "--clusters", "32",
                                   "--uncertainty", "--iterations", "60", "--width", "0.25", "--no_augment",
                                   "--seed", "0"]) == 0
    trained, options = load_network(net)
    assert options["sigma_confidence"] and trained.sigma_confidence.weight.abs().max() > 1e-3  # the NLL reached it
    assert cli._run("test", [str(tmp_path / "s"), str(net), "--section", "train_sim", "--out", str(tmp_path / "r")]) == 0
    settings = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert settings["ransac"]["uncertainty"] == "weight"
