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
